"""``Http1Upstream`` only, against scripted loopback servers: its exact request head, the
resend of an idempotent request on a stale keep-alive connection, its pool queue. The
contract both clients keep is ``test_contract.py``."""

from __future__ import annotations

import asyncio

import pytest

from patgate.gateway.upstream import Http1Upstream, UpstreamProtocolError, UpstreamTimeout

from ._loopback import body, keepalive_server, read_request, serving


@pytest.mark.anyio
async def test_request_head_is_exact_and_connection_is_reused() -> None:
    seen: list[bytes] = []
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nhi"
    async with serving(keepalive_server([ok, ok], seen)) as server:
        upstream = Http1Upstream(f"http://127.0.0.1:{server.port}/api")
        try:
            headers = [(b"accept", b"*/*"), (b"content-length", b"999"), (b"host", b"client")]
            first = await upstream.send("POST", b"/x?q=%20", headers, b"body")
            assert (first.status, await body(first)) == (200, b"hi")
            await first.aclose()
            second = await upstream.send("GET", b"/y", [], None)
            assert await body(second) == b"hi"
            await second.aclose()
        finally:
            await upstream.aclose()
    assert seen[0] == (
        b"POST /api/x?q=%20 HTTP/1.1\r\nhost: 127.0.0.1:"
        + str(server.port).encode()
        + b"\r\naccept: */*\r\ncontent-length: 4\r\n\r\nbody"
    )
    assert seen[1] == b"GET /api/y HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n\r\n" % server.port
    assert server.connections == 1


@pytest.mark.anyio
async def test_stale_keepalive_connection_is_retried_for_idempotent_requests() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Then close the idle connection the way a keep-alive timeout does, but only once
        # the client has sent its next request (the race RFC 9112 §9.3.1 describes).
        await reader.read(1)

    async with serving(handler) as server:
        upstream = Http1Upstream(f"http://127.0.0.1:{server.port}", timeout=2)
        try:
            for _ in range(3):
                response = await upstream.send("GET", b"/", [], None)
                assert await body(response) == b"ok"
                await response.aclose()
            # Each reuse met a closing connection and was resent once on a new one.
            assert server.connections == 3
            # A POST is not resent: the upstream may have acted on it.
            with pytest.raises(UpstreamProtocolError, match="without a response"):
                await upstream.send("POST", b"/", [], b"x")
            assert server.connections == 3
        finally:
            await upstream.aclose()


@pytest.mark.anyio
async def test_pool_limit_queues_then_times_out() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with serving(handler) as server:
        upstream = Http1Upstream(f"http://127.0.0.1:{server.port}", timeout=2, pool_size=2)
        try:
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
                await body(response)
                await response.aclose()  # a response holds its pool slot until closed
                return response.status

            assert await asyncio.gather(*(fetch() for _ in range(6))) == [200] * 6
        finally:
            await upstream.aclose()
    assert server.connections == 2
