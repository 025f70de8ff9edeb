"""Serve an app exactly as ``patgate`` does (``gateway.server._config``: the limited
httptools protocol) on a loopback port, and talk raw HTTP/1.1 to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from starlette.types import ASGIApp

from patgate.gateway.server import _bind, _config
from patgate.gateway.settings import Settings
from tests.middleware._servers import running


@contextlib.asynccontextmanager
async def listen(
    app: ASGIApp, settings: Settings, *, lifespan: Literal["on", "off"] = "on"
) -> AsyncIterator[int]:
    """Serve ``app`` with patgate's uvicorn configuration; yields the port."""
    sock = _bind("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    config = _config(app, settings.evolve(log_level="critical"), lifespan=lifespan)
    async with running(config, sock):
        yield port


async def exchange(port: int, request: bytes, *, wait: float = 10.0) -> bytes:
    """Send ``request`` (while reading) and return everything the server sent until it
    closed the connection. Write errors are ignored: a server may refuse mid-request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response."""
    line = response.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), response[:200]
    return int(line.split()[1])


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]
