"""The upstream seam's types: what :class:`~patgate.gateway.proxy.ProxyApp` sends and gets
back, apart from any client (so the clients and the proxy import these, not each other).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

__all__ = ["Body", "RawHeaders", "Upstream", "UpstreamResponse"]

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
