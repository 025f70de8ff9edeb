"""Flow control both ways, once per client, on raw loopback sockets: reading from the
upstream pauses while the consumer does not read (memory stays bounded, the upstream is
held back by TCP), and a streamed upload waits on a full socket (drain) instead of
buffering the body, giving up with ``UpstreamTimeout`` after ``timeout``."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from patgate.gateway.upstream import UpstreamTimeout
from patgate.gateway.upstream.http1 import _HIGH_WATER

from ._loopback import make, read_request, serving

pytestmark = pytest.mark.anyio

_CHUNK = bytes(range(256)) * 256  # 64 KiB
_TOTAL = 48 * 1024 * 1024  # more than every buffer between the two ends (tcp_rmem max 32 MiB)
_ONE_READ = 256 * 1024  # the most one asyncio transport read takes (selector max_size)


#: what each client may hold: http1 pauses above _HIGH_WATER (one transport read may land
#: on top); aiohttp pauses its StreamReader at 2 x read_bufsize (64 KiB), but reads
#: already parsed into the payload queue come on top (about 580 KiB seen here).
_BOUND = {"http1": _HIGH_WATER + _ONE_READ, "aiohttp": 1024 * 1024}


def _buffered(response: Any) -> int:
    """Response bytes the client holds in memory, read but not yet consumed."""
    if hasattr(response, "_conn"):  # Http1Upstream: its parser's chunk queue
        return int(response._conn._buffered)
    return int(response._response.content._size)  # aiohttp: its StreamReader's buffer


async def _until_still(read: Any, *, quiet: float = 0.15, limit: float = 2.0) -> None:
    """Until ``read()`` has not changed for ``quiet`` seconds (or ``limit`` passed)."""
    started, last = time.monotonic(), read()
    while time.monotonic() - started < limit:
        await asyncio.sleep(quiet)
        if (now := read()) == last:
            return
        last = now


async def test_reading_pauses_for_a_consumer_that_does_not_read(kind: str) -> None:
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % _TOTAL)
        while sent < _TOTAL:  # as fast as the client lets us
            writer.write(_CHUNK)
            await writer.drain()
            sent += len(_CHUNK)

    async with serving(handler) as server:
        upstream = make(kind, f"http://127.0.0.1:{server.port}", timeout=2)
        try:
            response = await upstream.send("GET", b"/big", [], None)
            await _until_still(lambda: sent)  # the upstream is blocked by TCP, not done
            held = _buffered(response)
            assert sent < _TOTAL
            assert sent > 2 * _HIGH_WATER  # it did send; the pause, not silence, stopped it
            assert held <= _BOUND[kind]
            # Consuming resumes reading: the whole body arrives, intact.
            digest, size = hashlib.sha256(), 0
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
                assert _buffered(response) <= _BOUND[kind]
            await response.aclose()
        finally:
            await upstream.aclose()
    expected = hashlib.sha256(_CHUNK * (_TOTAL // len(_CHUNK))).hexdigest()
    assert (size, digest.hexdigest()) == (_TOTAL, expected)


async def test_an_upload_the_upstream_does_not_read_waits_then_times_out(kind: str) -> None:
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await finished.wait()  # never reads the body, never answers

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # inherited
    listener.bind(("127.0.0.1", 0))
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(2048):  # 128 MiB if nothing held it back
            produced += len(_CHUNK)
            yield _CHUNK

    async with serving(handler, sock=listener) as server:
        upstream = make(kind, f"http://127.0.0.1:{server.port}", timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="write"):
                await upstream.send("PUT", b"/upload", [], endless())
            elapsed = time.monotonic() - started
        finally:
            finished.set()
            await upstream.aclose()
    assert 0.45 <= elapsed < 2.5
    # Held back by the socket buffers (a few MiB at most), not the body's 128 MiB.
    assert produced < 16 * 1024 * 1024
