"""The upstream transport's interface: what :class:`~patgate.gateway.proxy.ProxyApp` sends
and gets back, apart from any client (so the clients and the proxy import these, not
each other).

Every implementation raises only the :class:`~patgate.middleware.errors.UpstreamError`
family — from ``send``, from ``aiter_raw`` and from nothing else — wrapping its own
library's exceptions at the boundary (``raise ... from exc``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from patgate.middleware.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = [
    "Body",
    "RawHeaders",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

Body = bytes | AsyncIterator[bytes] | None
RawHeaders = Sequence[tuple[bytes, bytes]]


class UpstreamResponse(Protocol):
    status: int
    headers: RawHeaders

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as received (no decompression), in chunks as they arrive."""

    async def aclose(self) -> None:
        """Release the connection (closed, not pooled, when the body was not read)."""


class Upstream(Protocol):
    async def send(
        self, method: str, target: bytes, headers: RawHeaders, body: Body
    ) -> UpstreamResponse:
        """Send ``method target`` (raw path + query, appended to the upstream's base URL)."""

    async def aclose(self) -> None: ...
