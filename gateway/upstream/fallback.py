"""An :class:`~.base.Upstream` over any ``httpx.AsyncBaseTransport``: ``httpx.MockTransport``
or a respx router in unit tests, httpx's pool or ``httpx_aiohttp`` in the benchmark.

httpx's exceptions stay inside this module: ``send`` and ``aiter_raw`` wrap them into the
:class:`~patgate.middleware.errors.UpstreamError` family (timeouts → ``UpstreamTimeout``,
connect errors → ``UpstreamConnectError``, any other transport error →
``UpstreamProtocolError``), so this client and :class:`~.http1.Http1Upstream` are
interchangeable behind the proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from .base import (
    Body,
    RawHeaders,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = ["HttpxUpstream"]


def _wrapped(exc: httpx.TransportError) -> UpstreamError:
    # Fixed messages: httpx's own can hold the upstream's address.
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"upstream timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError("upstream connect failed")
    return UpstreamProtocolError(f"upstream exchange failed ({type(exc).__name__})")


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
        try:
            async for chunk in stream:
                yield chunk
        except httpx.TransportError as exc:
            raise _wrapped(exc) from exc

    def ready_body(self) -> bytes | None:
        return None  # httpx streams: the body is read through aiter_raw

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
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.TransportError as exc:
            raise _wrapped(exc) from exc
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self._transport.aclose()
