"""Scripted loopback servers for the upstream clients' tests, and a factory for either
client (``kind``: the ``PATGATE_UPSTREAM_CLIENT`` values). Everything binds 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from patgate.gateway.upstream import Http1Upstream, Upstream
from patgate.gateway.upstream.aiohttp_client import AiohttpUpstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
KINDS = ("http1", "aiohttp")


class Server:
    """A loopback TCP server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                await self.handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.tasks.discard(task)
            self.writers.discard(writer)

    async def stop(self) -> None:
        """Abort open connections so every handler ends on its own (reads fail)."""
        for writer in list(self.writers):
            writer.transport.abort()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, **options: Any
) -> AsyncIterator[Server]:
    state = Server(handler)
    where: dict[str, Any] = {} if "sock" in options else {"host": "127.0.0.1", "port": 0}
    server = await asyncio.start_server(state.serve, ssl=ssl_context, **where, **options)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await state.stop()
        await server.wait_closed()


def make(kind: str, url: str, **options: Any) -> Upstream:
    client = Http1Upstream if kind == "http1" else AiohttpUpstream
    return client(url, **options)


@contextlib.asynccontextmanager
async def upstream_for(
    kind: str, handler: Handler, *, read_timeout: float = 2, pool_size: int = 8
) -> AsyncIterator[tuple[Server, Upstream]]:
    """A scripted server and a ``kind`` client for ``http://127.0.0.1:<port>/api``."""
    async with serving(handler) as state:
        upstream = make(
            kind,
            f"http://127.0.0.1:{state.port}/api",
            timeout=read_timeout,
            connect_timeout=1,
            pool_size=pool_size,
        )
        try:
            yield state, upstream
        finally:
            await upstream.aclose()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request with a Content-Length (or no) body, as raw bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


async def body(response: object) -> bytes:
    return b"".join([chunk async for chunk in response.aiter_raw()])  # type: ignore[attr-defined]


def keepalive_server(responses: list[bytes], seen: list[bytes]) -> Handler:
    """Answers requests on one connection with ``responses`` in turn, recording them."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            seen.append(await read_request(reader))
            writer.write(responses.pop(0))
            await writer.drain()

    return handler


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """A raw request head's header lines as (lower-case name, value)."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (ln.partition(b":") for ln in lines)]
