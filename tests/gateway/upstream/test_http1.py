"""``Http1Upstream`` against scripted loopback servers: the HTTP/1.1 corners a proxy's
client must get right (framing, interim responses, keep-alive, pool limits, early answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from patgate.gateway.upstream import (
    Http1Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from patgate.middleware.errors import ConfigError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Server:
    """A loopback TCP server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
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
async def _server(
    handler: Handler, *, read_timeout: float = 2, pool_size: int = 8
) -> AsyncIterator[tuple[_Server, Http1Upstream]]:
    state = _Server(handler)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Http1Upstream(
        f"http://127.0.0.1:{port}/api",
        timeout=read_timeout,
        connect_timeout=1,
        pool_size=pool_size,
    )
    try:
        yield state, upstream
    finally:
        await upstream.aclose()
        server.close()
        await state.stop()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


async def _body(response: object) -> bytes:
    return b"".join([chunk async for chunk in response.aiter_raw()])  # type: ignore[attr-defined]


def _keepalive_server(responses: list[bytes], state: list[bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            state.append(await _read_request(reader))
            writer.write(responses.pop(0))
            await writer.drain()

    return handler


@pytest.mark.anyio
async def test_request_head_is_exact_and_connection_is_reused() -> None:
    seen: list[bytes] = []
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nhi"
    async with _server(_keepalive_server([ok, ok], seen)) as (server, upstream):
        headers = [(b"accept", b"*/*"), (b"content-length", b"999"), (b"host", b"client")]
        first = await upstream.send("POST", b"/x?q=%20", headers, b"body")
        assert (first.status, await _body(first)) == (200, b"hi")
        assert list(first.headers) == [(b"Content-Length", b"2"), (b"X-Up", b"1")]
        await first.aclose()
        second = await upstream.send("GET", b"/y", [], None)
        assert await _body(second) == b"hi"
        await second.aclose()
    assert seen[0] == (
        b"POST /api/x?q=%20 HTTP/1.1\r\nhost: 127.0.0.1:"
        + seen[0].split(b"host: 127.0.0.1:")[1].split(b"\r\n")[0]
        + b"\r\naccept: */*\r\ncontent-length: 4\r\n\r\nbody"
    )
    assert seen[1].startswith(b"GET /api/y HTTP/1.1\r\n")
    assert b"content-length" not in seen[1]
    assert server.connections == 1


@pytest.mark.anyio
async def test_head_and_204_have_no_body_and_keep_the_connection() -> None:
    seen: list[bytes] = []
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
    ]
    async with _server(_keepalive_server(responses, seen)) as (server, upstream):
        head = await upstream.send("HEAD", b"/", [], None)
        assert (head.status, await _body(head)) == (200, b"")
        assert (b"Content-Length", b"1000") in head.headers
        await head.aclose()
        empty = await upstream.send("DELETE", b"/", [], None)
        assert (empty.status, await _body(empty)) == (204, b"")
        await empty.aclose()
        last = await upstream.send("GET", b"/", [], None)
        assert await _body(last) == b"yes"
        await last.aclose()
    assert server.connections == 1


@pytest.mark.anyio
async def test_interim_responses_are_skipped() -> None:
    seen: list[bytes] = []
    response = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with _server(_keepalive_server([response], seen)) as (_, upstream):
        got = await upstream.send("GET", b"/", [], None)
        assert got.status == 200
        assert list(got.headers) == [(b"Content-Length", b"2")]
        assert await _body(got) == b"ok"
        await got.aclose()


@pytest.mark.anyio
async def test_body_delimited_by_close_and_chunked_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if b"/close" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-")
            await writer.drain()
            writer.write(b"the-end")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        await writer.drain()

    async with _server(handler) as (server, upstream):
        closed = await upstream.send("GET", b"/close", [], None)
        assert await _body(closed) == b"until-the-end"
        await closed.aclose()
        chunked = await upstream.send("GET", b"/chunked", [], None)
        assert await _body(chunked) == b"abcdefg"
        await chunked.aclose()
    assert server.connections == 2  # the close-delimited one could not be reused


@pytest.mark.anyio
async def test_streamed_body_is_chunked_or_length_framed() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            if b"transfer-encoding: chunked" in head:
                body = await reader.readuntil(b"0\r\n\r\n")
            else:
                body = await reader.readexactly(6)
            seen.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"def"):
            yield part

    async with _server(handler) as (_, upstream):
        chunked = await upstream.send("PUT", b"/c", [(b"transfer-encoding", b"x")], parts())
        await chunked.aclose()
        sized = await upstream.send("PUT", b"/s", [(b"content-length", b"6")], parts())
        await sized.aclose()
    assert seen[0].endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert seen[1].endswith(b"content-length: 6\r\n\r\nabcdef")


@pytest.mark.anyio
async def test_streamed_body_must_match_its_content_length() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)

    async def parts() -> AsyncIterator[bytes]:
        yield b"toolong"

    async with _server(handler) as (_, upstream):
        with pytest.raises(UpstreamProtocolError, match="longer"):
            await upstream.send("PUT", b"/", [(b"content-length", b"3")], parts())


@pytest.mark.anyio
async def test_early_answer_stops_the_upload() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
        await writer.drain()

    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(10_000):
            produced += 1
            yield b"x" * 65536
            await asyncio.sleep(0.001)

    async with _server(handler) as (_, upstream):
        response = await upstream.send("POST", b"/", [], endless())
        assert (response.status, await _body(response)) == (413, b"big")
        await response.aclose()
    assert produced < 10_000


@pytest.mark.anyio
async def test_stale_keepalive_connection_is_retried_for_idempotent_requests() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Then close the idle connection the way a keep-alive timeout does, but only once
        # the client has sent its next request (the race RFC 9112 §9.3.1 describes).
        await reader.read(1)

    async with _server(handler) as (server, upstream):
        for _ in range(3):
            response = await upstream.send("GET", b"/", [], None)
            assert await _body(response) == b"ok"
            await response.aclose()
        # Each reuse met a closing connection and was resent once on a new one.
        assert server.connections == 3
        # A POST is not resent: the upstream may have acted on it.
        with pytest.raises(UpstreamProtocolError, match="without a response"):
            await upstream.send("POST", b"/", [], b"x")
        assert server.connections == 3


@pytest.mark.anyio
async def test_pool_limit_queues_then_times_out() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with _server(handler, pool_size=2) as (server, upstream):
        first = [asyncio.create_task(upstream.send("GET", b"/", [], None)) for _ in range(2)]
        await asyncio.sleep(0.05)
        upstream.timeout = 0.2  # the waits already started keep their 2 s
        with pytest.raises(UpstreamTimeout):
            await upstream.send("GET", b"/", [], None)
        release.set()
        upstream.timeout = 2
        for task in first:
            await (await task).aclose()

        async def fetch() -> int:
            response = await upstream.send("GET", b"/", [], None)
            await _body(response)
            await response.aclose()  # a response holds its pool slot until closed
            return response.status

        assert await asyncio.gather(*(fetch() for _ in range(6))) == [200] * 6
    assert server.connections == 2


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"garbage\r\n\r\n", UpstreamProtocolError),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", UpstreamProtocolError),
        (b"", UpstreamProtocolError),
    ],
)
@pytest.mark.anyio
async def test_bad_responses_are_protocol_errors(
    response: bytes, error: type[UpstreamError]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(response)
        await writer.drain()

    async with _server(handler) as (_, upstream):
        with pytest.raises(error):
            await upstream.send("GET", b"/", [], None)


@pytest.mark.anyio
async def test_truncated_body_raises_mid_stream() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async with _server(handler) as (_, upstream):
        response = await upstream.send("GET", b"/", [], None)
        with pytest.raises(UpstreamProtocolError, match="mid-response"):
            await _body(response)
        await response.aclose()


@pytest.mark.anyio
async def test_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read(1)  # never answers; returns when the client gives up

    async with _server(handler) as (_, upstream):
        upstream.timeout = 0.1
        with pytest.raises(UpstreamTimeout):
            await upstream.send("GET", b"/", [], None)


@pytest.mark.anyio
async def test_header_injection_is_refused() -> None:
    async with _server(_keepalive_server([], [])) as (_, upstream):
        with pytest.raises(UpstreamProtocolError):
            await upstream.send("GET", b"/", [(b"x-a", b"1\r\nx-b: 2")], None)


@pytest.mark.parametrize("url", ["ftp://h/", "http://", "http://user:pw@host/", "https:///nohost"])
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="PATGATE_UPSTREAM_URL"):
        Http1Upstream(url)


@pytest.mark.parametrize(
    ("method", "first"),
    [
        (
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n",
        ),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbody!"),
    ],
)
@pytest.mark.anyio
async def test_bytes_beyond_the_response_retire_the_connection(method: str, first: bytes) -> None:
    seen: list[bytes] = []
    fine = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
    async with _server(_keepalive_server([first, fine], seen)) as (server, upstream):
        response = await upstream.send(method, b"/", [], None)
        assert response.status == 200
        assert [n for n, _ in response.headers] == [b"Content-Length"]
        await _body(response)
        await response.aclose()
        second = await upstream.send("GET", b"/", [], None)
        assert await _body(second) == b"fine"
        await second.aclose()
    assert server.connections == 2


@pytest.mark.anyio
async def test_a_refused_connect_is_the_projects_own_error() -> None:
    """``OSError`` is wrapped at the socket (``raise ... from exc``), never leaked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    upstream = Http1Upstream(f"http://127.0.0.1:{port}", connect_timeout=2.0)
    try:
        with pytest.raises(UpstreamConnectError) as info:
            await upstream.send("GET", b"/", [], None)
        assert isinstance(info.value.__cause__, OSError)
    finally:
        await upstream.aclose()
