"""The proxy's upstream transport, chosen by measurement (``bench/upstream_clients.py``).

:class:`gateway.proxy.ProxyApp` talks to an :class:`Upstream` (:mod:`.base`):
``send(method, target, headers, body)`` → :class:`UpstreamResponse`. Failures are the
project's own family, whatever client is behind the interface::

    UpstreamError (502 bad_gateway)
    ├── UpstreamConnectError   502: refused, unreachable, DNS, TLS
    ├── UpstreamTimeout        504 gateway_timeout: connect, pool slot, read, write
    └── UpstreamProtocolError  502: invalid or cut-short response, unframeable request

==========  =================================================================
module      client
==========  =================================================================
base        the interface (``Upstream``, ``UpstreamResponse``, ``Body``)
http1       :class:`Http1Upstream` — production: a keep-alive pool of HTTP/1.1
            connections on asyncio protocols with the httptools (llhttp) parser
            uvicorn already uses
fallback    :class:`HttpxUpstream` — any ``httpx.AsyncBaseTransport`` (unit tests'
            ``httpx.MockTransport``/respx, the benchmark's httpx pools)
==========  =================================================================

Why our own client (``docs/proxy.md`` has the table): the whole proxy process spends
~200 µs of CPU per request with it, against ~260 µs for a bare aiohttp proxy without any
header policy, ~370 µs for ProxyApp over aiohttp and 440-2,500 µs through httpx, whose
own pool also collapses under concurrency (encode/httpx#3215). A proxy needs only the
small part of HTTP/1.1 in :mod:`.http1`, and llhttp does the parsing.
"""

from __future__ import annotations

from patgate.gateway.settings import Settings
from patgate.middleware.errors import ConfigError

from .base import (
    Body,
    RawHeaders,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from .fallback import HttpxUpstream
from .http1 import Http1Upstream

__all__ = [
    "Body",
    "Http1Upstream",
    "HttpxUpstream",
    "RawHeaders",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "create_upstream",
]


def create_upstream(settings: Settings) -> Upstream:
    """The production client for ``settings.upstream_url`` and its timeouts and pool."""
    if not settings.upstream_url:
        raise ConfigError("PATGATE_UPSTREAM_URL: the gateway needs an upstream URL")
    return Http1Upstream(
        settings.upstream_url,
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        pool_size=settings.upstream_pool_size,
    )
