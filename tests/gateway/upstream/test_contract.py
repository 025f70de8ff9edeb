"""The ``Upstream`` contract, once per client (``kind``: ``http1``, ``aiohttp``) against
scripted loopback servers: the HTTP/1.1 corners a proxy's client must get right (framing,
interim responses, keep-alive, early answers) and the error family it raises."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from patgate.gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from patgate.middleware.errors import ConfigError

from ._loopback import body, keepalive_server, make, read_request, upstream_for

pytestmark = pytest.mark.anyio


async def test_connection_is_reused_and_headers_come_back_raw(kind: str) -> None:
    seen: list[bytes] = []
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nhi"
    async with upstream_for(kind, keepalive_server([ok, ok], seen)) as (server, upstream):
        first = await upstream.send("POST", b"/x?q=%20&a=%7E", [(b"accept", b"*/*")], b"body")
        assert (first.status, await body(first)) == (200, b"hi")
        assert list(first.headers) == [(b"Content-Length", b"2"), (b"X-Up", b"1")]
        await first.aclose()
        second = await upstream.send("GET", b"/y", [], None)
        assert await body(second) == b"hi"
        await second.aclose()
    # The target exactly as given (no re-quoting of %7E), after the base URL's path.
    assert seen[0].startswith(b"POST /api/x?q=%20&a=%7E HTTP/1.1\r\n")
    assert seen[0].endswith(b"\r\n\r\nbody")
    assert seen[1].startswith(b"GET /api/y HTTP/1.1\r\n")
    assert b"content-length" not in seen[1].lower()
    assert server.connections == 1


async def test_head_and_204_have_no_body_and_keep_the_connection(kind: str) -> None:
    seen: list[bytes] = []
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
    ]
    async with upstream_for(kind, keepalive_server(responses, seen)) as (server, upstream):
        head = await upstream.send("HEAD", b"/", [], None)
        assert (head.status, await body(head)) == (200, b"")
        assert (b"Content-Length", b"1000") in head.headers
        await head.aclose()
        empty = await upstream.send("DELETE", b"/", [], None)
        assert (empty.status, await body(empty)) == (204, b"")
        await empty.aclose()
        last = await upstream.send("GET", b"/", [], None)
        assert await body(last) == b"yes"
        await last.aclose()
    assert server.connections == 1


async def test_interim_responses_are_skipped(kind: str) -> None:
    seen: list[bytes] = []
    response = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with upstream_for(kind, keepalive_server([response], seen)) as (_, upstream):
        got = await upstream.send("GET", b"/", [], None)
        assert got.status == 200
        assert list(got.headers) == [(b"Content-Length", b"2")]
        assert await body(got) == b"ok"
        await got.aclose()


async def test_body_delimited_by_close_and_chunked_body(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b"/close" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-")
            await writer.drain()
            writer.write(b"the-end")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        await writer.drain()

    async with upstream_for(kind, handler) as (server, upstream):
        closed = await upstream.send("GET", b"/close", [], None)
        assert await body(closed) == b"until-the-end"
        await closed.aclose()
        chunked = await upstream.send("GET", b"/chunked", [], None)
        assert await body(chunked) == b"abcdefg"
        await chunked.aclose()
    assert server.connections == 2  # the close-delimited one could not be reused


async def test_a_transfer_coding_other_than_chunked_last_runs_until_the_close(kind: str) -> None:
    """RFC 9112 §6.3 item 4: a response whose Transfer-Encoding does not end in chunked
    is delimited by the server's close; its coded bytes are relayed as they are (a proxy
    does not decode), and the connection is never reused."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\ncoded-")
        await writer.drain()
        writer.write(b"bytes")
        await writer.drain()
        writer.close()

    async with upstream_for(kind, handler) as (server, upstream):
        for _ in range(2):
            response = await upstream.send("GET", b"/coded", [], None)
            assert response.status == 200
            assert await body(response) == b"coded-bytes"
            await response.aclose()
    assert server.connections == 2


async def test_streamed_body_is_chunked_or_length_framed(kind: str) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            if b"transfer-encoding: chunked" in head.lower():
                payload = await reader.readuntil(b"0\r\n\r\n")
            else:
                payload = await reader.readexactly(6)
            seen.append(head.lower() + payload)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"def"):
            yield part

    async with upstream_for(kind, handler) as (_, upstream):
        chunked = await upstream.send("PUT", b"/c", [(b"transfer-encoding", b"x")], parts())
        await body(chunked)
        await chunked.aclose()
        sized = await upstream.send("PUT", b"/s", [(b"content-length", b"6")], parts())
        await body(sized)
        await sized.aclose()
    assert seen[0].endswith(b"\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in seen[0]
    assert b"content-length" not in seen[0]
    assert seen[1].endswith(b"\r\n\r\nabcdef")
    assert b"content-length: 6\r\n" in seen[1]
    assert b"transfer-encoding" not in seen[1]


@pytest.mark.parametrize(("declared", "match"), [(b"3", "longer"), (b"30", "shorter")])
async def test_streamed_body_must_match_its_content_length(
    kind: str, declared: bytes, match: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await reader.read(1024)  # returns once the client gives up

    async def parts() -> AsyncIterator[bytes]:
        yield b"toolong"

    async with upstream_for(kind, handler) as (_, upstream):
        with pytest.raises(UpstreamProtocolError, match=match):
            await upstream.send("PUT", b"/", [(b"content-length", declared)], parts())


async def test_early_answer_stops_the_upload(kind: str) -> None:
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

    async with upstream_for(kind, handler) as (_, upstream):
        response = await upstream.send("POST", b"/", [], endless())
        assert (response.status, await body(response)) == (413, b"big")
        await response.aclose()
    assert produced < 10_000


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"",
    ],
    ids=["garbage", "switch", "silence"],
)
async def test_bad_responses_are_protocol_errors(kind: str, response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()

    async with upstream_for(kind, handler) as (_, upstream):
        with pytest.raises(UpstreamProtocolError):
            await upstream.send("GET", b"/", [], None)


async def test_truncated_body_raises_mid_stream(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async with upstream_for(kind, handler) as (_, upstream):
        response = await upstream.send("GET", b"/", [], None)
        with pytest.raises(UpstreamProtocolError):
            await body(response)
        await response.aclose()


async def test_read_timeout(kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read(1)  # never answers; returns when the client gives up

    async with upstream_for(kind, handler, read_timeout=0.1) as (_, upstream):
        with pytest.raises(UpstreamTimeout):
            await upstream.send("GET", b"/", [], None)


async def test_header_injection_is_refused(kind: str) -> None:
    async with upstream_for(kind, keepalive_server([], [])) as (_, upstream):
        with pytest.raises(UpstreamProtocolError):
            await upstream.send("GET", b"/", [(b"x-a", b"1\r\nx-b: 2")], None)


@pytest.mark.parametrize("url", ["ftp://h/", "http://", "http://user:pw@host/", "https:///nohost"])
def test_bad_base_urls(kind: str, url: str) -> None:
    with pytest.raises(ConfigError, match="PATGATE_UPSTREAM_URL"):
        make(kind, url)


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
async def test_bytes_beyond_the_response_retire_the_connection(
    kind: str, method: str, first: bytes
) -> None:
    seen: list[bytes] = []
    fine = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
    async with upstream_for(kind, keepalive_server([first, fine], seen)) as (server, upstream):
        try:
            response = await upstream.send(method, b"/", [], None)
        except UpstreamProtocolError:
            # aiohttp reads a body after a HEAD answer as the next response's head, which
            # is no HTTP: the whole answer is refused (502), a stricter outcome.
            assert (kind, method) == ("aiohttp", "HEAD")
        else:
            assert response.status == 200
            assert [n for n, _ in response.headers] == [b"Content-Length"]
            await body(response)
            await response.aclose()
        second = await upstream.send("GET", b"/", [], None)
        assert await body(second) == b"fine"
        await second.aclose()
    assert server.connections == 2


async def test_a_refused_connect_is_the_projects_own_error(kind: str) -> None:
    """The library's and the socket's errors are wrapped (``raise ... from exc``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    upstream = make(kind, f"http://127.0.0.1:{port}", connect_timeout=2.0)
    try:
        with pytest.raises(UpstreamConnectError) as info:
            await upstream.send("GET", b"/", [], None)
        assert isinstance(info.value.__cause__, OSError)
        assert str(port) not in str(info.value)
    finally:
        await upstream.aclose()


async def test_a_closed_client_refuses_to_send(kind: str) -> None:
    async with upstream_for(kind, keepalive_server([], [])) as (_, upstream):
        await upstream.aclose()
        with pytest.raises(UpstreamError):
            await upstream.send("GET", b"/", [], None)
