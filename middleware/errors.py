"""patgate's one error hierarchy.

::

    PatgateError
    ├── AuthError                      data plane; RFC 6750 §3 responses
    │   ├── MissingCredentials         401, no error code
    │   ├── InvalidRequest             400 invalid_request (e.g. two credentials)
    │   ├── InvalidToken               401 invalid_token
    │   ├── InsufficientScope          403 insufficient_scope, scope="..."
    │   ├── ClientNotAllowed           403 insufficient_scope: outside the token's IP allowlist
    │   ├── TooManyFailures            429 + Retry-After: too many failed authentications
    │   └── MethodNotAllowed           405 TRACE/CONNECT no rule names; Allow, no challenge
    ├── StoreUnavailable               503; Redis/Valkey could not be reached
    ├── UpstreamError                  the gateway's upstream failed; 502/504, fixed texts
    │   ├── UpstreamConnectError       502 bad_gateway: could not connect (refused, DNS, TLS)
    │   ├── UpstreamTimeout            504 gateway_timeout: connect, pool, read or write
    │   └── UpstreamProtocolError      502 bad_gateway: invalid, cut short or unframeable
    ├── ServiceError                   management API / CLI; JSON {"error", "detail"}
    │   ├── ValidationFailed           400 validation
    │   ├── Unauthenticated            401 unauthenticated
    │   ├── Forbidden                  403 forbidden
    │   ├── NotFound                   404 not_found
    │   ├── Conflict                   409 name_taken (or another conflict code)
    │   ├── PayloadTooLarge            413 too_large
    │   ├── Unprocessable              422 unprocessable
    │   ├── LimitReached               409 org_token_limit / owner_token_limit
    │   └── TooManyRequests            429 rate_limited, Retry-After (unauthenticated endpoints)
    ├── DeliveryFailed                 a notification's mail or webhook was not delivered
    └── ConfigError                    bad settings or policy file; the CLI exits 2

Redis and HTTP client exceptions are wrapped at the boundary with ``raise ... from exc``
so callers only ever catch these: the store wraps redis-py's, the upstream clients
(``gateway.upstream``) wrap ``OSError`` and httpx's. Every one is rendered by
:class:`patgate.middleware.responses.ErrorResponses` — one renderer for every JSON error
body and RFC 6750 challenge.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ClientNotAllowed",
    "ConfigError",
    "Conflict",
    "DeliveryFailed",
    "Forbidden",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "LimitReached",
    "MethodNotAllowed",
    "MissingCredentials",
    "NotFound",
    "PatgateError",
    "PayloadTooLarge",
    "ServiceError",
    "StoreUnavailable",
    "TooManyFailures",
    "TooManyRequests",
    "Unauthenticated",
    "Unprocessable",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "ValidationFailed",
]


class PatgateError(Exception):
    """Base of every error patgate raises on purpose."""


class AuthError(PatgateError):
    """A request failed authentication or authorization (RFC 6750 §3)."""

    status_code: int = 401
    error: str | None = None
    #: the ``reason`` label of ``patgate_decisions_total``; bounded set.
    reason: str = "invalid_token"

    def __init__(
        self, description: str | None = None, *, scope: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(description or self.error or "unauthorized")
        self.description = description
        self.scope = scope
        # The metric reason is part of the error from its construction (never mutated).
        if reason is not None:
            self.reason = reason

    def www_authenticate(self, realm: str) -> str:
        """The ``WWW-Authenticate`` challenge for this error (RFC 6750 §3)."""
        parts = [f'Bearer realm="{realm}"']
        if self.error is not None:
            parts.append(f'error="{self.error}"')
            if self.description:
                parts.append(f'error_description="{self.description}"')
            if self.scope:
                parts.append(f'scope="{self.scope}"')
        return ", ".join(parts)


class MissingCredentials(AuthError):
    """No Bearer credentials: RFC 6750 §3.1 says the challenge carries no error code."""

    status_code = 401
    error = None
    reason = "missing_credentials"


class InvalidRequest(AuthError):
    """Malformed request, e.g. credentials in more than one place (RFC 6750 §2, §3.1)."""

    status_code = 400
    error = "invalid_request"
    reason = "invalid_request"


class InvalidToken(AuthError):
    """Unknown, malformed, revoked, expired or disabled token (RFC 6750 §3.1)."""

    status_code = 401
    error = "invalid_token"

    def __init__(self, description: str | None = None, *, reason: str = "invalid_token") -> None:
        super().__init__(description, reason=reason)


class InsufficientScope(AuthError):
    """A valid token without the scope the route needs (RFC 6750 §3.1)."""

    status_code = 403
    error = "insufficient_scope"
    reason = "insufficient_scope"


class ClientNotAllowed(AuthError):
    """A valid token used from an address outside its IP allowlist (issue 12). RFC 6750's
    403 code: the token lacks the privilege of being used from here."""

    status_code = 403
    error = "insufficient_scope"
    reason = "ip_not_allowed"

    def __init__(self) -> None:
        super().__init__("the token may not be used from this address")


class TooManyFailures(AuthError):
    """Too many failed authentications from this client (issue 12): 429 with
    ``Retry-After``, whatever the request carries, until the client's window passes."""

    status_code = 429
    error = None
    reason = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed authentications from this address; retry in {retry_after} s"
        )
        self.retry_after = retry_after


class MethodNotAllowed(AuthError):
    """TRACE or CONNECT on a route whose rule does not name it (issue 9): refused before
    authentication. RFC 9110 §15.5.6: a 405 carries ``Allow``; it is no auth challenge."""

    status_code = 405
    error = None
    reason = "method_not_allowed"
    #: what the gateway forwards; the upstream may support fewer.
    allow = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class StoreUnavailable(PatgateError):
    """The Redis/Valkey store could not be reached; the data plane answers 503."""

    status_code = 503


class UpstreamError(PatgateError):
    """The proxied upstream failed. The message is for logs; the client gets the class's
    fixed ``detail`` (an exception's own text can hold upstream addresses or worse)."""

    status_code = 502
    code = "bad_gateway"
    detail = "the upstream failed"
    #: the ``kind`` label of ``patgate_upstream_errors_total``.
    kind = "protocol"


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream: refused, unreachable, DNS, TLS, or the pool closed."""

    detail = "could not connect to the upstream"
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, accept, or answer in time (or no pool slot freed)."""

    status_code = 504
    code = "gateway_timeout"
    detail = "the upstream did not answer in time"
    kind = "timeout"


class UpstreamProtocolError(UpstreamError):
    """The exchange broke HTTP/1.1: an invalid or cut-short response, or a request that
    cannot be framed (a header with a line break, a body not matching its length)."""

    detail = "the upstream sent an invalid response"
    kind = "protocol"


class ServiceError(PatgateError):
    """A management operation was refused; rendered as ``{"error": code, "detail": text}``."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra response headers (none but ``Retry-After`` on a 429)."""
        return []


class ValidationFailed(ServiceError):
    status_code = 400
    code = "validation"


class Unauthenticated(ServiceError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "name_taken"


class PayloadTooLarge(ServiceError):
    """A request body over the management API's limit, refused before it is read whole."""

    status_code = 413
    code = "too_large"


class Unprocessable(ServiceError):
    status_code = 422
    code = "unprocessable"


class LimitReached(ServiceError):
    """A token limit of the org is full: 409 with the code naming which limit, never 429,
    which clients read as "retry later" (issue 13). Freed by revoking or deleting a
    token, or by one expiring."""

    status_code = 409
    code = "org_token_limit"

    def __init__(self, detail: str, *, code: str = "org_token_limit", limit: int) -> None:
        super().__init__(detail, code=code)
        self.limit = limit


class TooManyRequests(ServiceError):
    """A client over an unauthenticated endpoint's rate limit (leaked-credential reports)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"%d" % self.retry_after)]


class DeliveryFailed(PatgateError):
    """A notification's mail or webhook did not get through (issue 14). ``retryable``:
    worth another attempt later (a connection refused, a timeout, a 5xx, a 4xx SMTP
    reply); otherwise it goes to the dead letters at once (a refused recipient, a
    malformed message). ``detail`` is one line, safe to store and show: never a secret."""

    def __init__(self, detail: str, *, retryable: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


class ConfigError(PatgateError):
    """Invalid settings or policy; raised at start-up, never on the hot path."""
