"""Header rules at the gateway's trust boundary: what goes upstream, what comes back.

Pure functions over ASGI header lists (``list[tuple[bytes, bytes]]``, lower-case names):

* hop-by-hop headers never cross the proxy (RFC 9110 §7.6.1), nor does any header the
  ``Connection`` header names;
* the client's ``Authorization`` is never forwarded: the upstream trusts the identity
  headers, not the secret (Kong key-auth ``hide_credentials``);
* every client-sent ``X-Patgate-*`` header and look-alike is dropped on every route, then
  patgate sets its own from the validated identity (Kong ``set_consumer``);
* ``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP`` are honoured only when the direct peer
  is a configured trusted proxy (uvicorn ``_TrustedHosts``); otherwise they are replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from patgate.middleware.auth import Resolved
from patgate.middleware.errors import UpstreamProtocolError
from patgate.middleware.records import Identity

__all__ = [
    "HOP_BY_HOP",
    "IDENTITY_HEADERS",
    "identity_headers",
    "is_forwarding_header",
    "is_identity_lookalike",
    "resolved_identity_headers",
    "response_headers",
    "upstream_request_headers",
]

Headers = list[tuple[bytes, bytes]]

#: RFC 9110 §7.6.1 connection-specific fields (plus the non-standard ``keep-alive`` and
#: ``proxy-connection`` it names as common). A proxy must not forward them.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: dropped from requests only. ``host``: the upstream gets its own host (as nginx
#: ``proxy_pass`` and Kong ``preserve_host=false`` do); the client's goes in
#: ``X-Forwarded-Host``. ``expect``: uvicorn already answered ``100-continue`` on the
#: client hop when the body was first read, so repeating it upstream only adds a round trip.
_REQUEST_ONLY_DROP: frozenset[bytes] = frozenset({b"authorization", b"host", b"expect"})
_DROP_REQUEST = HOP_BY_HOP | _REQUEST_ONLY_DROP

#: ``X-Patgate-*`` names patgate sets from the validated identity, in this order.
IDENTITY_HEADERS: tuple[bytes, ...] = (
    b"x-patgate-token-id",
    b"x-patgate-token-type",
    b"x-patgate-owner-type",
    b"x-patgate-owner-id",
    b"x-patgate-org-id",
    b"x-patgate-scopes",
)

# Canonical form for look-alike checks: lower case, and every byte that is not a letter or a
# digit becomes "-". Why: nginx (``underscores_in_headers on``), WSGI/CGI servers and many
# frameworks map header names to ``HTTP_X_PATGATE_USER`` style keys, turning "_" (Apache:
# any non-alphanumeric) into the same key as "-". So ``X_Patgate_User`` or ``X.Patgate.User``
# sent by a client can reach an upstream as ``X-Patgate-User`` unless dropped here too.
_CANON = bytes(
    c if (0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A) else 0x2D for c in bytes(range(256)).lower()
)
_PATGATE_PREFIX = b"x-patgate-"
# The bare name too (issue 9): an upstream reading ``X-Patgate`` must never see a
# client's value. ``X-Patgateway`` is another name, not a look-alike.
_PATGATE_BARE = b"x-patgate"
_FORWARDED_PREFIX = b"x-forwarded-"
_FORWARDING_EXACT: frozenset[bytes] = frozenset({b"forwarded", b"x-real-ip"})
_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_GUARDED_FIRST = (b"x", b"f")


def _canonical(name: bytes) -> bytes:
    return name.translate(_CANON)


def is_identity_lookalike(name: bytes, *, trusted_peer: bool = False) -> bool:
    """True for a header name a client must never get to the upstream.

    ``X-Patgate*`` in any case or spelling (``x_patgate_owner_id``, the bare ``X-Patgate``,
    ``X.Patgate``) always; forwarding
    headers (:func:`is_forwarding_header`) unless they come from a trusted proxy, and their
    non-canonical spellings (``X_Forwarded_For``) always — no proxy sends those.
    """
    canon = _canonical(name)
    if canon.startswith(_PATGATE_PREFIX) or canon == _PATGATE_BARE:
        return True
    if not (canon.startswith(_FORWARDED_PREFIX) or canon in _FORWARDING_EXACT):
        return False
    return not trusted_peer or canon != name.lower()


def is_forwarding_header(name: bytes) -> bool:
    """``X-Forwarded-*``, ``Forwarded`` (RFC 7239) or ``X-Real-IP``, in any spelling."""
    canon = _canonical(name)
    return canon.startswith(_FORWARDED_PREFIX) or canon in _FORWARDING_EXACT


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (RFC 9110 §7.6.1: also hop-by-hop)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


def identity_headers(identity: Identity | None) -> Headers:
    """The ``X-Patgate-*`` headers for ``identity`` (none on public routes)."""
    if identity is None:
        return []
    values = (
        identity.token_id,
        identity.token_type,
        identity.owner_kind,
        identity.owner_id,
        identity.org_id,
        " ".join(sorted(identity.scopes)),
    )
    return [(name, value.encode()) for name, value in zip(IDENTITY_HEADERS, values, strict=True)]


_DERIVED_KEY = "gateway.identity_headers"


def resolved_identity_headers(resolved: Resolved | None) -> Headers:
    """:func:`identity_headers` of a resolved token, built once per cache fill (kept in
    ``resolved.derived``, issue 16) — the same list every time: callers copy, never
    change it."""
    if resolved is None:
        return []
    derived = resolved.derived
    headers = derived.get(_DERIVED_KEY)
    if headers is None:
        headers = derived[_DERIVED_KEY] = identity_headers(resolved.identity)
    return cast(Headers, headers)


def upstream_request_headers(
    scope_headers: Iterable[tuple[bytes, bytes]],
    *,
    identity: Identity | None,
    peer: str | None,
    trusted: bool,
    scheme: str,
    identity_fields: Headers | None = None,
) -> Headers:
    """The headers to send upstream for a request with ``scope_headers``.

    ``peer`` is the direct peer's address and ``trusted`` whether it is a trusted proxy
    (:meth:`patgate.middleware.trust.TrustedProxies.__contains__`). The client's ``Host`` becomes
    ``X-Forwarded-Host``; the client library sets the upstream's own ``Host``.
    ``identity_fields``: ``identity``'s headers already built
    (:func:`resolved_identity_headers`).
    """
    headers = scope_headers if isinstance(scope_headers, list) else list(scope_headers)
    conn = _connection_tokens(headers)
    out: Headers = []
    host: bytes | None = None
    chain: list[bytes] = []
    proto: bytes | None = None
    fwd_host: bytes | None = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in _DROP_REQUEST or name in conn:
            if name == b"host":
                host = value
            continue
        # Only names starting with "x" or "f" can canonicalize to a guarded prefix.
        if name[:1] in _GUARDED_FIRST:
            if is_identity_lookalike(name, trusted_peer=trusted):
                continue
            # Past the check, a forwarding header came from a trusted proxy.
            if name == _XFF:
                chain.append(value.strip())
                continue
            if name == _XFP:
                proto = proto or value
                continue
            if name == _XFH:
                fwd_host = fwd_host or value
                continue
        out.append((name, value))
    if peer:
        chain.append(peer.encode())
        out.append((_XFF, b", ".join(v for v in chain if v)))
    # A trusted proxy in front may have terminated TLS or rewritten the host: keep its view.
    out.append((_XFP, proto if proto is not None else scheme.encode()))
    if fwd_host is None:
        fwd_host = host
    if fwd_host is not None:
        out.append((_XFH, fwd_host))
    out.extend(identity_headers(identity) if identity_fields is None else identity_fields)
    return out


def response_headers(
    upstream_headers: Iterable[tuple[bytes, bytes]], *, body: bool = True
) -> Headers:
    """Upstream response headers, names lower-cased (ASGI), minus hop-by-hop and
    ``Connection``-named ones.

    :class:`UpstreamProtocolError` (502) for a ``Transfer-Encoding`` other than
    ``chunked``: the client's body arrives with the chunked coding removed but any other
    coding (``gzip``, ``gzip, chunked``) still applied, and that field is hop-by-hop, so
    relaying the bytes would hand the client coded content it cannot know is coded. We
    decode no transfer codings; nginx refuses the same responses ("upstream sent unknown
    Transfer-Encoding"). ``body``: whether the response has one (not for HEAD, 204,
    304), since only a body can arrive coded."""
    out: Headers = []
    named: list[bytes] | None = None  # the values of Connection fields, if any
    for name, value in upstream_headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                named = [value] if named is None else [*named, value]
            elif body and lname == b"transfer-encoding" and value.strip().lower() != b"chunked":
                raise UpstreamProtocolError("upstream sent a transfer coding other than chunked")
            continue
        out.append((lname, value))
    if named is None:  # the common case: one pass
        return out
    conn = _connection_tokens((b"connection", v) for v in named)
    return [(name, value) for name, value in out if name not in conn]
