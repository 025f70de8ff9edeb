"""The proxy's pooled upstream client, chosen by measurement (``bench/upstream_clients.py``).

:class:`gateway.proxy.ProxyApp` talks to an :class:`Upstream`: ``send(method, target,
headers, body)`` → :class:`UpstreamResponse`. Failures are raised as httpx exceptions
(``httpx.ConnectError``, ``httpx.TimeoutException``, other ``httpx.TransportError``), so
the proxy has one set to classify whatever client is behind the seam.

* :class:`Http1Upstream` — production: a keep-alive pool of HTTP/1.1 connections on
  asyncio protocols with the httptools (llhttp) parser uvicorn already uses.
* :class:`HttpxUpstream` — any ``httpx.AsyncBaseTransport``: ``httpx.MockTransport`` or a
  respx router in unit tests, httpx's pool or ``httpx_aiohttp`` in the benchmark.

Why our own client (``docs/proxy.md`` has the table): the whole proxy process spends
~200 µs of CPU per request with it, against ~260 µs for a bare aiohttp proxy without any
header policy, ~370 µs for ProxyApp over aiohttp and 440-2,500 µs through httpx, whose
own pool also collapses under concurrency (encode/httpx#3215). A proxy needs only the
small part of HTTP/1.1 below, and llhttp does the parsing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from patgate.middleware.errors import ConfigError

from .http1 import Http1Upstream
from .settings import Settings
from .upstream_types import Body, RawHeaders, Upstream, UpstreamResponse

__all__ = [
    "Body",
    "Http1Upstream",
    "HttpxUpstream",
    "Upstream",
    "UpstreamResponse",
    "create_upstream",
]


def create_upstream(settings: Settings) -> Upstream:
    if not settings.upstream_url:
        raise ConfigError("PATGATE_UPSTREAM_URL: the gateway needs an upstream URL")
    return Http1Upstream(
        settings.upstream_url,
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        pool_size=settings.upstream_pool_size,
    )


class _HttpxResponse:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: RawHeaders = response.headers.raw

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        # The stream itself, not Response.aiter_raw(): a response built with content=...
        # (MockTransport) is already "consumed", and its ByteStream can be iterated again.
        stream = self._response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        async for chunk in stream:
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """An :class:`Upstream` over an httpx transport, called directly (no ``AsyncClient``:
    a proxy wants none of its cookies, auth, redirects or default headers)."""

    def __init__(
        self,
        base_url: str,
        transport: httpx.AsyncBaseTransport,
        *,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self._base = str(httpx.URL(base_url).copy_with(query=None, fragment=None)).rstrip("/")
        self._transport = transport
        self._extensions = {"timeout": (timeout or httpx.Timeout(30.0, connect=5.0)).as_dict()}

    async def send(
        self, method: str, target: bytes, headers: RawHeaders, body: Body
    ) -> _HttpxResponse:
        request = httpx.Request(
            method,
            httpx.URL(self._base + target.decode("ascii")),
            headers=list(headers),
            content=body,
            extensions=self._extensions,
        )
        return _HttpxResponse(await self._transport.handle_async_request(request))

    async def aclose(self) -> None:
        await self._transport.aclose()
