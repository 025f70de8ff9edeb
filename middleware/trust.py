"""Whom to believe about the client's address: the trusted proxies (issue 10: the data
plane's own concept, used by the middleware, forward-auth and the gateway alike).

``X-Forwarded-For`` is honoured only when the direct peer is a configured trusted proxy
(uvicorn ``_TrustedHosts``); the client IP is then the first untrusted hop read right to
left, because each proxy appends and everything left of an untrusted hop is
attacker-controlled.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["TrustedProxies"]

_XFF = b"x-forwarded-for"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose ``X-Forwarded-*`` headers patgate believes (uvicorn
    ``_TrustedHosts``): IP addresses, CIDR networks, or ``*`` for every peer.

    Addresses are compared as objects (``::1`` == ``0:0:0:0:0:0:0:1``); membership is
    memoized in a bounded LRU, so a stable set of peers costs one dict lookup.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        items = [e.strip() for e in entries if e.strip()]
        self.always: bool = "*" in items
        addresses: set[_Address] = set()
        networks: list[_Network] = []
        for item in items:
            if item == "*":
                continue
            try:
                if "/" in item:
                    networks.append(ipaddress.ip_network(item, strict=False))
                else:
                    addresses.add(ipaddress.ip_address(item))
            except ValueError:
                raise ConfigError(f"trusted proxy {item!r} is not an IP address or CIDR") from None
        self._addresses = frozenset(addresses)
        self._networks = tuple(networks)
        self._trusts = functools.lru_cache(maxsize=4096)(self._compute)

    def _compute(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        # "::ffff:10.0.0.1" is how a dual-stack listener reports an IPv4 peer.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip in self._addresses or any(ip in net for net in self._networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str) or not host:
            return False
        if self.always:
            return True
        # Longer than any address text: never trusted, and kept out of the cache.
        if len(host) > 64:
            return False
        return self._trusts(host)

    def client_ip(self, scope: Mapping[str, Any]) -> str | None:
        """The client's IP: the direct peer, or — only when that peer is trusted — the
        first untrusted hop of ``X-Forwarded-For`` read right to left (each proxy appends,
        so entries left of the first untrusted hop are attacker-controlled)."""
        client = scope.get("client")
        peer: str | None = client[0] if client else None
        if peer is None or peer not in self:
            return peer
        hops: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == _XFF:
                hops.extend(h.strip() for h in value.decode("latin-1").split(","))
        hops = [_strip_port(h) for h in hops if h.strip()]
        if not hops:
            return peer
        if self.always:
            return hops[0]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        # Every hop is a trusted proxy: the left-most one is the best we know.
        return hops[0]


def _strip_port(value: str) -> str:
    """``1.2.3.4:5678`` → ``1.2.3.4``; ``[::1]:80`` → ``::1``; bare IPv6 unchanged."""
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end != -1 else value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value
