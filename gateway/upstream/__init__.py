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
aiohttp_    :class:`~.aiohttp_client.AiohttpUpstream` — the fallback,
client      ``PATGATE_UPSTREAM_CLIENT=aiohttp``: an ``aiohttp.ClientSession`` (the
            ``aiohttp`` extra; imported only when chosen, so not re-exported here)
fallback    :class:`HttpxUpstream` — any ``httpx.AsyncBaseTransport`` (unit tests'
            ``httpx.MockTransport``/respx, the benchmark's httpx pools)
tls         :func:`upstream_ssl_context` — ``https`` upstreams, ``PATGATE_UPSTREAM_CA_FILE``
==========  =================================================================

:func:`create_upstream` builds the one ``PATGATE_UPSTREAM_CLIENT`` names.

Why our own client (``docs/proxy.md`` has the table): the whole proxy process spends
~200 µs of CPU per request with it, against ~260 µs for a bare aiohttp proxy without any
header policy, ~370 µs for ProxyApp over aiohttp and 440-2,500 µs through httpx, whose
own pool also collapses under concurrency (encode/httpx#3215). A proxy needs only the
small part of HTTP/1.1 in :mod:`.http1`, and llhttp does the parsing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from patgate.gateway.settings import UPSTREAM_CLIENTS, Settings
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
from .tls import upstream_ssl_context

if TYPE_CHECKING:  # aiohttp is an optional extra: imported for real only when chosen
    from .aiohttp_client import AiohttpUpstream

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
    "upstream_ssl_context",
]

_NEEDS_AIOHTTP = "PATGATE_UPSTREAM_CLIENT=aiohttp needs aiohttp: pip install 'patgate[aiohttp]'"


def create_upstream(settings: Settings) -> Upstream:
    """The client ``settings.upstream_client`` names, for ``settings.upstream_url`` with
    its timeouts, pool size and (``https``) ``settings.upstream_ca_file``."""
    url = settings.upstream_url
    if not url:
        raise ConfigError("PATGATE_UPSTREAM_URL: the gateway needs an upstream URL")
    ssl_context = None
    if urlsplit(url).scheme == "https":
        ssl_context = upstream_ssl_context(settings.upstream_ca_file)
    elif settings.upstream_ca_file is not None:
        # A CA for a plain-http upstream is a mistake that would leave the hop in clear.
        raise ConfigError("PATGATE_UPSTREAM_CA_FILE: set, but PATGATE_UPSTREAM_URL is not https")
    kind = settings.upstream_client
    client: type[Http1Upstream] | type[AiohttpUpstream]
    if kind == "http1":
        client = Http1Upstream
    elif kind == "aiohttp":
        try:
            from .aiohttp_client import AiohttpUpstream  # the optional extra, only if chosen
        except ImportError as exc:
            if exc.name not in ("aiohttp", "multidict", "yarl"):
                raise
            raise ConfigError(_NEEDS_AIOHTTP) from exc
        client = AiohttpUpstream
    else:
        choices = ", ".join(UPSTREAM_CLIENTS)
        raise ConfigError(f"PATGATE_UPSTREAM_CLIENT: expected one of {choices}, got {kind!r}")
    return client(
        url,
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        pool_size=settings.upstream_pool_size,
        ssl_context=ssl_context,
    )
