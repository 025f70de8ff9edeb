"""The data plane's error responses (RFC 6750 §3), built once and replayed.

Every refusal is JSON ``{"error": code, "detail": text}`` plus, for authentication
errors, a ``WWW-Authenticate: Bearer realm="…"`` challenge:

=====================  ======  ====================================================
reason                 status  challenge / body code
=====================  ======  ====================================================
missing_credentials    401     ``Bearer realm`` only (§3.1: no error code) / same
invalid_request        400     ``error="invalid_request"`` (two credentials, bad header)
bad_path               400     ``error="invalid_request"``; body ``bad_path``
invalid_token          401     ``error="invalid_token"`` — unknown *and* malformed
revoked/expired/…      401     ``error="invalid_token"`` with a specific description
insufficient_scope     403     ``error="insufficient_scope", scope="…"``
no_rule                403     ``error="insufficient_scope"``; body ``no_rule``
method_not_allowed     405     no challenge; ``Allow`` (TRACE/CONNECT no rule names)
store_unavailable      503     no challenge; ``Retry-After: 1``
=====================  ======  ====================================================

Responses are keyed by (reason, description, scope) — values from code and from the
policy, never from the request — so the memo stays small; it is cleared if it ever grows
past :data:`_MEMO_LIMIT` anyway.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

from .errors import AuthError, ConfigError, MethodNotAllowed, StoreUnavailable

__all__ = ["ErrorResponses", "Prepared"]

_MEMO_LIMIT = 512
#: reasons whose JSON body carries the RFC 6750 code rather than the finer reason.
_BODY_CODE = {
    "revoked": "invalid_token",
    "expired": "invalid_token",
    "disabled": "invalid_token",
    "no_permission": "invalid_token",
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


def _check_realm(realm: str) -> str:
    # The realm goes inside a quoted-string (RFC 9110 §5.6.4); refuse what would break it
    # rather than escaping, since it is operator configuration.
    if not realm or any(c in realm for c in '"\\') or not realm.isprintable():
        raise ConfigError(f"realm {realm!r} must be printable and contain no quote or backslash")
    return realm


class ErrorResponses:
    """Builds (once) and hands out the response for each refusal."""

    def __init__(self, realm: str = "patgate") -> None:
        self.realm = _check_realm(realm)
        self._memo: dict[tuple[str, str | None, str | None], Prepared] = {}
        self.unavailable = self._build_unavailable()

    def for_error(self, exc: AuthError | StoreUnavailable) -> Prepared:
        if isinstance(exc, StoreUnavailable):
            return self.unavailable
        key = (exc.reason, exc.description, exc.scope)
        prepared = self._memo.get(key)
        if prepared is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            prepared = self._memo[key] = self._build(exc)
        return prepared

    def _build(self, exc: AuthError) -> Prepared:
        code = _BODY_CODE.get(exc.reason, exc.reason)
        detail = exc.description or _DEFAULT_DETAIL.get(code, code.replace("_", " "))
        body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        if isinstance(exc, MethodNotAllowed):
            # RFC 9110 §15.5.6: a 405 lists the methods in Allow; it is no auth challenge.
            headers.append((b"allow", exc.allow.encode("latin-1")))
        else:
            headers.append(
                (b"www-authenticate", exc.www_authenticate(self.realm).encode("latin-1"))
            )
        return Prepared(exc.status_code, headers, body)

    def _build_unavailable(self) -> Prepared:
        body = json.dumps(
            {"error": "store_unavailable", "detail": "token store unavailable, retry later"},
            separators=(",", ":"),
        ).encode()
        headers = [
            _JSON,
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]
        return Prepared(StoreUnavailable.status_code, headers, body)


_DEFAULT_DETAIL = {
    "missing_credentials": "Bearer token required",
    "invalid_request": "malformed request",
    "invalid_token": "invalid token",
    "insufficient_scope": "the token lacks the scope this route requires",
}
