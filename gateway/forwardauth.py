"""The forward-auth decision endpoint for nginx, Traefik and Envoy.

The proxy in front asks "may this request through?" and copies the identity headers of a
200 answer to the upstream request. Where the original request is described:

=================================  ============================================
caller                             original method / URI
=================================  ============================================
nginx ``auth_request``             ``X-Original-Method`` / ``X-Original-URI``
Traefik ``ForwardAuth``            ``X-Forwarded-Method`` / ``X-Forwarded-Uri``
Envoy ``ext_authz`` (HTTP service) the request's own method, path = the path
                                   after the prefix (``path_prefix: /authz``)
=================================  ============================================

The headers are looked for in that order. ``<prefix>`` itself without either header pair
is refused with 400, so a proxy configuration that forgets ``X-Original-URI`` fails
closed instead of authorizing every request as ``/``.

Trust: the endpoint answers only peers in ``settings.trusted_proxies`` — anyone else gets
403 ``untrusted_proxy`` — because the request description (and ``X-Forwarded-For``, used
for last-used) comes from headers only the proxy may set.

Answers: 200 with ``X-Patgate-*`` identity headers (none on a public route), or the same
RFC 6750 401/400/403/503 responses as the middleware. nginx passes 401 (with its
``WWW-Authenticate``) and 403 to the client and turns any other status into 500.
"""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send

from middleware.auth import Authenticator
from middleware.errors import AuthError, InvalidRequest, StoreUnavailable
from middleware.responses import Prepared

from .headers import TrustedProxies, identity_headers

__all__ = ["ForwardAuthApp"]

_ORIGINAL = (
    (b"x-original-method", b"x-original-uri"),  # nginx auth_request
    (b"x-forwarded-method", b"x-forwarded-uri"),  # Traefik ForwardAuth
)
_EMPTY_OK = [(b"content-length", b"0")]


def _json(status: int, code: str, detail: str) -> Prepared:
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return Prepared(status, headers, body)


class ForwardAuthApp:
    """ASGI app answering forward-auth subrequests under ``prefix``."""

    def __init__(
        self, authenticator: Authenticator, trusted: TrustedProxies, *, prefix: str = "/authz"
    ) -> None:
        self._auth = authenticator
        self._responses = authenticator.responses
        self._trusted = trusted
        self._prefix = prefix.rstrip("/")
        self._prefix_bytes = self._prefix.encode("latin-1")
        self._untrusted = _json(
            403, "untrusted_proxy", "forward-auth answers only configured trusted proxies"
        )
        self._not_found = _json(404, "not_found", "no such endpoint")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        prefix = self._prefix
        if not (path == prefix or path.startswith(prefix + "/")):
            await self._not_found.send(send)
            return
        client = scope.get("client")
        if not client or client[0] not in self._trusted:
            await self._untrusted.send(send)
            return
        headers = scope["headers"]
        try:
            method, target = self._original(scope, headers)
            resolved = await self._auth.authenticate(method, target, headers, scope)
        except (AuthError, StoreUnavailable) as exc:
            await self._responses.for_error(exc).send(send)
            return
        out = _EMPTY_OK if resolved is None else [*_EMPTY_OK, *identity_headers(resolved.identity)]
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": b""})

    def _original(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
        """The described request's method and path (query dropped), per the table above."""
        found: dict[bytes, bytes] = {}
        for name, value in headers:
            if name in _WANTED:
                if name in found:
                    raise InvalidRequest("repeated forward-auth header")
                found[name] = value
        for method_header, uri_header in _ORIGINAL:
            uri = found.get(uri_header)
            if uri is not None:
                method = found.get(method_header)
                if not method:
                    raise InvalidRequest("forward-auth request without the original method")
                return method.decode("latin-1"), _path_of(uri.decode("latin-1"))
        raw: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
        root = scope.get("root_path", "").encode("latin-1")
        if root and raw.startswith(root):
            raw = raw[len(root) :]
        rest = raw[len(self._prefix_bytes) :] if raw.startswith(self._prefix_bytes) else b""
        if not rest.startswith(b"/"):
            raise InvalidRequest("forward-auth request does not describe the original request")
        return scope["method"], rest.decode("latin-1")


_WANTED: frozenset[bytes] = frozenset(name for pair in _ORIGINAL for name in pair)


def _path_of(uri: str) -> str:
    """``/a/b?x=1`` → ``/a/b``; an absolute URI's path; never the query (SPEC: last-used
    stores no query, and the policy matches paths only)."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        after = path.split("://", 1)[1]
        slash = after.find("/")
        path = after[slash:] if slash != -1 else "/"
    return path
