"""The one renderer of patgate's error responses (RFC 6750 §3), built once and replayed.

Every refusal anywhere — the middleware, forward-auth, the proxy, the listeners' 404s,
the protocol's 400/414/431, the management API — is JSON ``{"error": code, "detail":
text}`` (:func:`error_body`, :func:`json_error`) and, for authentication errors, a
``WWW-Authenticate: Bearer realm="…"`` challenge (:class:`ErrorResponses`):

=====================  ======  ====================================================
reason                 status  challenge / body code
=====================  ======  ====================================================
missing_credentials    401     ``Bearer realm`` only (§3.1: no error code) / same
invalid_request        400     ``error="invalid_request"`` (two credentials, bad header)
bad_path               400     ``error="invalid_request"``; body ``bad_path``
invalid_token          401     ``error="invalid_token"`` — unknown *and* malformed
revoked/expired/…      401     ``error="invalid_token"`` with a specific description
                               (rotated: "token rotated"; deleted: as unknown)
insufficient_scope     403     ``error="insufficient_scope", scope="…"``
ip_not_allowed         403     ``error="insufficient_scope"``; body ``ip_not_allowed``
rate_limited           429     no challenge; ``Retry-After: <s>`` (failed-auth limit)
no_rule                403     ``error="insufficient_scope"``; body ``no_rule``
method_not_allowed     405     no challenge; ``Allow`` (TRACE/CONNECT no rule names)
store_unavailable      503     no challenge; ``Retry-After: 1``
(UpstreamError)        502/504 no challenge; the class's fixed code and text
(ServiceError)         4xx     no challenge; the error's code and detail
=====================  ======  ====================================================

Responses are keyed by (reason, description, scope) — values from code and from the
policy, never from the request — so the memo stays small; it is cleared if it ever grows
past :data:`_MEMO_LIMIT` anyway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.responses import Response
from starlette.types import Send

from .errors import (
    AuthError,
    ConfigError,
    MethodNotAllowed,
    MissingCredentials,
    PatgateError,
    ServiceError,
    StoreUnavailable,
    TooManyFailures,
    UpstreamError,
)

__all__ = ["UNAVAILABLE_DETAIL", "ErrorResponses", "Prepared", "error_body", "json_error"]

#: the one text of every 503 for a store that cannot be reached.
UNAVAILABLE_DETAIL = "the token store is unavailable; retry later"

_MEMO_LIMIT = 512
#: reasons whose JSON body carries the RFC 6750 code rather than the finer reason.
_BODY_CODE = {
    "revoked": "invalid_token",
    "expired": "invalid_token",
    "disabled": "invalid_token",
    "no_permission": "invalid_token",
    "rotated": "invalid_token",
    "deleted": "invalid_token",
}
_JSON = (b"content-type", b"application/json")


class Prepared:
    """One ready-to-send response: the two ASGI messages, plus its parts."""

    __slots__ = ("body", "body_message", "headers", "start", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.start: dict[str, Any] = {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        }
        self.body_message: dict[str, Any] = {"type": "http.response.body", "body": body}

    async def send(self, send: Send) -> None:
        await send(self.start)
        await send(self.body_message)

    def as_response(self) -> Response:
        """A Starlette response replaying this one (its own copy of the headers)."""
        response = Response(self.body, status_code=self.status)
        response.raw_headers = list(self.headers)
        return response


def error_body(code: str, detail: str) -> bytes:
    """The JSON error body, ``{"error": code, "detail": text}``, compact."""
    return json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()


def json_error(
    status: int, code: str, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> Prepared:
    """A JSON error response with Content-Type and Content-Length, then ``headers``."""
    body = error_body(code, detail)
    return Prepared(status, [_JSON, (b"content-length", b"%d" % len(body)), *headers], body)


def _check_realm(realm: str) -> str:
    # The realm goes inside a quoted-string (RFC 9110 §5.6.4); refuse what would break it
    # rather than escaping, since it is operator configuration.
    if not realm or any(c in realm for c in '"\\') or not realm.isprintable():
        raise ConfigError(f"realm {realm!r} must be printable and contain no quote or backslash")
    return realm


class ErrorResponses:
    """Builds (once) and hands out the response for each error.

    ``missing_credentials`` is the ``(code, detail)`` body of a bare 401 (RFC 6750 §3.1):
    the management API names it ``unauthenticated``; the challenge is the same."""

    def __init__(
        self, realm: str = "patgate", *, missing_credentials: tuple[str, str] | None = None
    ) -> None:
        self.realm = _check_realm(realm)
        self._missing = missing_credentials
        self._memo: dict[tuple[str, str | None, str | None], Prepared] = {}
        self._upstream: dict[type[UpstreamError], Prepared] = {}
        self.unavailable = json_error(
            StoreUnavailable.status_code,
            "store_unavailable",
            UNAVAILABLE_DETAIL,
            [(b"retry-after", b"1")],
        )
        self.internal = json_error(500, "internal", "internal error")

    def for_error(self, exc: PatgateError) -> Prepared:
        """The response for ``exc``: auth errors and the fixed ones are memoized; a
        :class:`ServiceError` (its detail names the request's ids) is built each time;
        any other error is the generic 500."""
        if isinstance(exc, AuthError):
            key = (exc.reason, exc.description, exc.scope)
            prepared = self._memo.get(key)
            if prepared is None:
                if len(self._memo) >= _MEMO_LIMIT:
                    self._memo.clear()
                prepared = self._memo[key] = self._build(exc)
            return prepared
        if isinstance(exc, StoreUnavailable):
            return self.unavailable
        if isinstance(exc, ServiceError):
            return json_error(exc.status_code, exc.code, exc.detail, exc.headers)
        if isinstance(exc, UpstreamError):
            kind = type(exc)
            prepared = self._upstream.get(kind)
            if prepared is None:
                # The class's fixed text, never the message (it can hold addresses).
                prepared = self._upstream[kind] = json_error(exc.status_code, exc.code, exc.detail)
            return prepared
        return self.internal

    def _build(self, exc: AuthError) -> Prepared:
        code = _BODY_CODE.get(exc.reason, exc.reason)
        detail = exc.description or _DEFAULT_DETAIL.get(code, code.replace("_", " "))
        if self._missing is not None and isinstance(exc, MissingCredentials):
            code, detail = self._missing
        if isinstance(exc, MethodNotAllowed):
            # RFC 9110 §15.5.6: a 405 lists the methods in Allow; it is no auth challenge.
            extra = (b"allow", exc.allow.encode("latin-1"))
        elif isinstance(exc, TooManyFailures):
            # RFC 6585 §4: 429 may say when to retry; no challenge (credentials are not
            # the problem). The description names the same seconds, so memoizing by it
            # keeps one response per distinct wait.
            extra = (b"retry-after", b"%d" % exc.retry_after)
        else:
            extra = (b"www-authenticate", exc.www_authenticate(self.realm).encode("latin-1"))
        return json_error(exc.status_code, code, detail, [extra])


_DEFAULT_DETAIL = {
    "missing_credentials": "Bearer token required",
    "invalid_request": "malformed request",
    "invalid_token": "invalid token",
    "insufficient_scope": "the token lacks the scope this route requires",
}
