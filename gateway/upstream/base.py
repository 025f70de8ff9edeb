"""The upstream transport's interface: what :class:`~patgate.gateway.proxy.ProxyApp` sends
and gets back, apart from any client (so the clients and the proxy import these, not
each other).

Every implementation raises only the :class:`~patgate.middleware.errors.UpstreamError`
family — from ``send``, from ``aiter_raw`` and from nothing else — wrapping its own
library's exceptions at the boundary (``raise ... from exc``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple, Protocol
from urllib.parse import quote, urlsplit

from patgate.middleware.errors import (
    ConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = [
    "KEEPALIVE",
    "Body",
    "Origin",
    "RawHeaders",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "origin_of",
]

#: seconds an idle pooled upstream connection is kept, by every client: under common
#: upstream keep-alive timeouts (uvicorn and node 5 s), so we rarely pick a connection the
#: upstream is closing.
KEEPALIVE = 4.0

Body = bytes | AsyncIterator[bytes] | None
RawHeaders = Sequence[tuple[bytes, bytes]]


class UpstreamResponse(Protocol):
    status: int
    headers: RawHeaders

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as received (no decompression), in chunks as they arrive."""

    def ready_body(self) -> bytes | None:
        """The whole body if it has already arrived, consumed; else ``None`` (then read
        it with :meth:`aiter_raw`). A client that cannot tell always returns ``None``."""

    async def aclose(self) -> None:
        """Release the connection (closed, not pooled, when the body was not read)."""


class Upstream(Protocol):
    async def send(
        self, method: str, target: bytes, headers: RawHeaders, body: Body
    ) -> UpstreamResponse:
        """Send ``method target`` (raw path + query, appended to the upstream's base URL)."""

    async def aclose(self) -> None: ...


class Origin(NamedTuple):
    """An upstream base URL, checked: what every client connects to and prefixes."""

    scheme: str
    host: str
    port: int
    #: ``host[:port]`` as written (the ``Host`` header).
    netloc: str
    #: the URL's path without its final ``/``, percent-encoded where needed: put in front
    #: of every request target.
    prefix: str


def origin_of(base_url: str) -> Origin:
    """``PATGATE_UPSTREAM_URL`` checked (http or https, a host, no credentials)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"PATGATE_UPSTREAM_URL: not an http(s) URL: {base_url!r}")
    if parts.username or parts.password:
        raise ConfigError("PATGATE_UPSTREAM_URL: credentials in the URL are not supported")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=~")
    return Origin(parts.scheme, parts.hostname, port, parts.netloc, prefix)
