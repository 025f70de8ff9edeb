"""A real uvicorn server on 127.0.0.1 inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.config import LifespanType, WSProtocolType


def free_port() -> int:
    """A loopback TCP port nothing listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def ok_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """An upstream that answers every HTTP request 200 ``upstream`` (for ``serve``)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"upstream"})


@contextlib.asynccontextmanager
async def serve(
    app: Any,
    *,
    lifespan: LifespanType = "on",
    ws: WSProtocolType = "none",
    server_header: bool = True,
    date_header: bool = True,
    http: Any = "httptools",
) -> AsyncIterator[int]:
    """Serve ``app`` on a fresh loopback port (yielded) until the block ends; ``http``:
    uvicorn's protocol (a name or a class, e.g. the gateway's
    ``gateway.fastpath.gateway_protocol(...)``)."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says so; with proto=0 every response stalls ~40 ms
    # (Nagle + delayed ACK on loopback).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        http=http,
        ws=ws,
        lifespan=lifespan,
        log_level="critical",
        access_log=False,
        proxy_headers=False,
        server_header=server_header,
        date_header=date_header,
        timeout_graceful_shutdown=2,
    )
    async with running(config, sock):
        yield port


@contextlib.asynccontextmanager
async def running(config: uvicorn.Config, sock: socket.socket) -> AsyncIterator[None]:
    """Run a uvicorn server with ``config`` on the bound ``sock`` until the block ends
    (started before it begins; stopped, and the socket closed, after)."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "server did not start"
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()
