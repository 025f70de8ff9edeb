"""Per-token IP allowlists (issue 12): up to 32 IPv4/IPv6 addresses or CIDR networks.

A token that carries an allowlist is usable only from a client address inside it. The
address is the one :class:`~patgate.middleware.trust.TrustedProxies` resolves — the
direct peer, or ``X-Forwarded-For`` only when that peer is a trusted proxy — so a client
that is not behind a trusted proxy cannot claim another address.

Normalization, so one address has one spelling everywhere:

* an entry is an address (``203.0.113.7``, ``2001:db8::1``) or a network whose host bits
  are zero (``203.0.113.0/24``); ``203.0.113.7/24`` is refused, naming the network meant,
  because silently widening or narrowing what a security reviewer wrote is worse;
* an IPv4-mapped IPv6 entry (``::ffff:203.0.113.7``) is stored as its IPv4 form, and a
  v4-mapped client address (how a dual-stack listener reports an IPv4 peer) is matched
  as IPv4 — the same rule :class:`~patgate.middleware.trust.TrustedProxies` applies;
* a single address is stored without its ``/32`` or ``/128``; zone ids
  (``fe80::1%eth0``) are refused: they name an interface, not a client.

A client address that does not parse (a Unix-socket peer, none at all) is outside every
allowlist: deny when in doubt.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["MAX_ENTRIES", "IpAllowlist", "normalize_allowlist", "parse_address"]

#: the most entries one token's allowlist may hold.
MAX_ENTRIES = 32
#: client addresses remembered per allowlist (a token is used from few addresses).
_MEMO = 256

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> _Address | None:
    """A client address as the allowlist compares it (brackets dropped, v4-mapped as
    IPv4), or None when ``text`` is no IP address."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


def _entry(raw: str) -> str:
    text = raw.strip()
    if not text or "%" in text:
        raise ValueError(f"{raw!r} is not an IP address or CIDR network")
    if "/" not in text:
        ip = parse_address(text)
        if ip is None:
            raise ValueError(f"{raw!r} is not an IP address or CIDR network")
        return str(ip)
    address, _, length = text.partition("/")
    ip = parse_address(address)
    # ASCII digits only: str.isdigit() also takes "²" and "١٦", which int() reads or trips on.
    if ip is None or not (length.isascii() and length.isdigit()):
        raise ValueError(f"{raw!r} is not an IP address or CIDR network")
    bits = int(length)
    mapped = ":" in address and ip.version == 4
    if mapped:
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8: only a prefix covering the mapping counts.
        if bits < 96:
            raise ValueError(f"{raw!r} covers more than the IPv4-mapped range")
        bits -= 96
    if bits > ip.max_prefixlen:
        raise ValueError(f"{raw!r}: prefix length over /{ip.max_prefixlen}")
    try:
        network = ipaddress.ip_network(f"{ip}/{bits}", strict=True)
    except ValueError:
        wide = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
        raise ValueError(f"{raw!r} has host bits set; the network is {wide}") from None
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def normalize_allowlist(entries: Iterable[object]) -> tuple[str, ...]:
    """The entries in their stored spelling, first occurrence order, duplicates dropped;
    :class:`ValueError` naming the first bad entry (the API answers it as 400)."""
    out: dict[str, None] = {}
    for raw in entries:
        if not isinstance(raw, str):
            raise ValueError("entries must be strings")
        out[_entry(raw)] = None
    if not out:
        raise ValueError("an empty allowlist allows no address; use null for any address")
    if len(out) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    return tuple(out)


class IpAllowlist:
    """Matches client addresses against a token's (normalized) allowlist; built once per
    cache fill. Answers are memoized per client address text, bounded."""

    __slots__ = ("_addresses", "_memo", "_networks", "entries")

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        addresses: set[_Address] = set()
        networks: list[_Network] = []
        for entry in self.entries:
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry))
            else:
                ip = parse_address(entry)
                if ip is not None:
                    addresses.add(ip)
        self._addresses = frozenset(addresses)
        self._networks = tuple(networks)
        self._memo: dict[str, bool] = {}

    def permits(self, client: str | None) -> bool:
        if client is None:
            return False
        known = self._memo.get(client)
        if known is not None:
            return known
        ip = parse_address(client)
        ok = ip is not None and (
            ip in self._addresses
            or any(ip.version == net.version and ip in net for net in self._networks)
        )
        if len(self._memo) >= _MEMO:
            self._memo.clear()
        self._memo[client] = ok
        return ok
