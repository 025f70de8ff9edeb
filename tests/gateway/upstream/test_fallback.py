"""``HttpxUpstream``: httpx's exceptions stay behind the fence (issue 10, STYLE 14) —
``send`` and the body iterator raise only the ``UpstreamError`` family, chained to the
httpx error they wrap, and never repeat its text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from patgate.gateway.upstream import (
    HttpxUpstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

pytestmark = pytest.mark.anyio

_WRAPPED = [
    (httpx.ConnectError, UpstreamConnectError),
    (httpx.ConnectTimeout, UpstreamTimeout),
    (httpx.ReadTimeout, UpstreamTimeout),
    (httpx.WriteTimeout, UpstreamTimeout),
    (httpx.PoolTimeout, UpstreamTimeout),
    (httpx.RemoteProtocolError, UpstreamProtocolError),
    (httpx.ReadError, UpstreamProtocolError),
    (httpx.LocalProtocolError, UpstreamProtocolError),
]


@pytest.mark.parametrize(("raised", "expected"), _WRAPPED, ids=[r.__name__ for r, _ in _WRAPPED])
async def test_send_wraps_httpx_errors(
    raised: type[httpx.TransportError], expected: type[UpstreamError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised("upstream 10.1.2.3 said no", request=request)

    upstream = HttpxUpstream("http://up.test", httpx.MockTransport(handler))
    with pytest.raises(expected) as info:
        await upstream.send("GET", b"/x", [], None)
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, raised)
    assert "10.1.2.3" not in str(info.value)


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"part"
        raise httpx.ReadTimeout("stalled")


async def test_the_body_iterator_wraps_httpx_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_BrokenStream())

    upstream = HttpxUpstream("http://up.test", httpx.MockTransport(handler))
    response = await upstream.send("GET", b"/x", [], None)
    chunks: list[bytes] = []

    async def drain() -> None:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)

    with pytest.raises(UpstreamTimeout) as info:
        await drain()
    assert chunks == [b"part"]
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    await response.aclose()
