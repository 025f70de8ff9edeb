"""The forward-auth decision endpoint for nginx, Traefik and Envoy.

The proxy in front asks "may this request through?" and copies the identity headers of a
200 answer to the upstream request. The original request is described by exactly one
*source*, chosen by ``settings.forward_auth_source`` (``PATGATE_FORWARD_AUTH_SOURCE``):

=========  =================================  ============================================
source     caller                             original method / URI
=========  =================================  ============================================
nginx      nginx ``auth_request``             ``X-Original-Method`` / ``X-Original-URI``
traefik    Traefik ``ForwardAuth``            ``X-Forwarded-Method`` / ``X-Forwarded-Uri``
envoy      Envoy ``ext_authz`` (HTTP service) the request's own method, path = the path
                                              after the prefix (``path_prefix: /authz``)
auto       (default) exactly one of the above must be present
=========  =================================  ============================================

Why one source (issue 9): a front proxy sets its own headers but passes the client's
others through — Traefik forwards a client-sent ``X-Original-URI`` unless
``authRequestHeaders`` filters it, nginx forwards a client-sent ``X-Forwarded-Uri``. If
one source silently won over another, a client could get a decision for ``/a/x`` while
``/admin/x`` is forwarded. With a fixed source the other sources' headers are ignored; in
``auto`` mode a request describing more than one is refused with 400 ``invalid_request``,
and so is a request describing none (a proxy configuration that forgets
``X-Original-URI`` fails closed instead of authorizing every request as ``/``).

Trust: the endpoint answers only peers in ``settings.trusted_proxies`` — anyone else gets
403 ``untrusted_proxy`` — because the request description (and ``X-Forwarded-For``, used
for last-used) comes from headers only the proxy may set.

Answers: 200 with ``X-Patgate-*`` identity headers (none on a public route), or the same
RFC 6750 401/400/403/503 responses as the middleware. nginx passes 401 (with its
``WWW-Authenticate``) and 403 to the client and turns any other status into 500.
"""

from __future__ import annotations

import re

from starlette.types import Receive, Scope, Send

from patgate.middleware.auth import Authenticator
from patgate.middleware.errors import AuthError, ConfigError, InvalidRequest, StoreUnavailable
from patgate.middleware.responses import json_error
from patgate.middleware.trust import TrustedProxies

from .headers import resolved_identity_headers

__all__ = ["SOURCES", "ForwardAuthApp"]

#: an original method: an RFC 9110 token, upper case as every registered method is.
_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}")
#: header-based sources: (method header, URI header).
_HEADER_SOURCES: dict[str, tuple[bytes, bytes]] = {
    "nginx": (b"x-original-method", b"x-original-uri"),  # nginx auth_request
    "traefik": (b"x-forwarded-method", b"x-forwarded-uri"),  # Traefik ForwardAuth
}
SOURCES = ("auto", "nginx", "traefik", "envoy")
_EMPTY_OK = [(b"content-length", b"0")]


class ForwardAuthApp:
    """ASGI app answering forward-auth subrequests under ``prefix``."""

    def __init__(
        self,
        authenticator: Authenticator,
        trusted: TrustedProxies,
        *,
        prefix: str = "/authz",
        source: str = "auto",
    ) -> None:
        if source not in SOURCES:
            raise ConfigError(f"forward-auth source: expected one of {', '.join(SOURCES)}")
        self._source = source
        # Only the configured source's headers are read (and checked for repeats).
        self._wanted = _WANTED if source == "auto" else frozenset(_HEADER_SOURCES.get(source, ()))
        self._auth = authenticator
        self._responses = authenticator.responses
        self._trusted = trusted
        self._prefix = prefix.rstrip("/")
        self._prefix_bytes = self._prefix.encode("latin-1")
        self._untrusted = json_error(
            403, "untrusted_proxy", "forward-auth answers only configured trusted proxies"
        )
        self._not_found = json_error(404, "not_found", "no such endpoint")

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
        out = _EMPTY_OK if resolved is None else [*_EMPTY_OK, *resolved_identity_headers(resolved)]
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": b""})

    def _original(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
        """The described request's method and path (query dropped), from the one source
        the module docstring describes."""
        found: dict[bytes, bytes] = {}
        wanted = self._wanted
        for name, value in headers:
            if name in wanted:
                if name in found:
                    raise InvalidRequest("repeated forward-auth header")
                found[name] = value
        source = self._source
        envoy_path = self._envoy_path(scope)
        if source == "auto":
            present = [s for s, pair in _HEADER_SOURCES.items() if any(h in found for h in pair)]
            if envoy_path is not None:
                present.append("envoy")
            if len(present) > 1:
                raise InvalidRequest(
                    f"conflicting forward-auth sources ({', '.join(present)}): configure "
                    "PATGATE_FORWARD_AUTH_SOURCE"
                )
            if not present:
                raise InvalidRequest("forward-auth request does not describe the original request")
            source = present[0]
        if source == "envoy":
            if envoy_path is None:
                raise InvalidRequest("forward-auth request has no path after the prefix")
            return scope["method"], envoy_path
        method_header, uri_header = _HEADER_SOURCES[source]
        uri = found.get(uri_header)
        if uri is None:
            raise InvalidRequest("forward-auth request without the original URI")
        method = found.get(method_header)
        if not method:
            raise InvalidRequest("forward-auth request without the original method")
        if not _METHOD.fullmatch(method):
            # RFC 9110 §9.1: a method is a case-sensitive token; "G@T", "GE T", "get" or
            # "TRACE " would be decided as some other request than the one forwarded.
            raise InvalidRequest("forward-auth: the original method is not an HTTP method")
        return method.decode("latin-1"), _path_of(uri.decode("latin-1"))

    def _envoy_path(self, scope: Scope) -> str | None:
        """The raw path after the prefix (Envoy's ``path_prefix``), or ``None``."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
        root = scope.get("root_path", "").encode("latin-1")
        if root and raw.startswith(root):
            raw = raw[len(root) :]
        rest = raw[len(self._prefix_bytes) :] if raw.startswith(self._prefix_bytes) else b""
        return rest.decode("latin-1") if rest.startswith(b"/") else None


_WANTED: frozenset[bytes] = frozenset(name for pair in _HEADER_SOURCES.values() for name in pair)


def _path_of(uri: str) -> str:
    """``/a/b?x=1`` → ``/a/b``; an absolute URI's path; never the query (SPEC: last-used
    stores no query, and the policy matches paths only)."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        after = path.split("://", 1)[1]
        slash = after.find("/")
        path = after[slash:] if slash != -1 else "/"
    return path
