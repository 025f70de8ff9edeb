"""The one renderer (issue 10): every error family through ``ErrorResponses.for_error``,
and the body helpers the listeners and the protocol use."""

from __future__ import annotations

import json

import pytest

from patgate.middleware.errors import (
    ConfigError,
    Conflict,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MethodNotAllowed,
    MissingCredentials,
    NotFound,
    PatgateError,
    StoreUnavailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from patgate.middleware.responses import (
    UNAVAILABLE_DETAIL,
    ErrorResponses,
    error_body,
    json_error,
)

_R = 'Bearer realm="patgate"'

# error, status, body, the one extra header (after content-type and content-length)
_TABLE: list[tuple[PatgateError, int, dict[str, str], tuple[bytes, bytes] | None]] = [
    (
        MissingCredentials(),
        401,
        {"error": "missing_credentials", "detail": "Bearer token required"},
        (b"www-authenticate", _R.encode()),
    ),
    (
        InvalidRequest("more than one Authorization header"),
        400,
        {"error": "invalid_request", "detail": "more than one Authorization header"},
        (
            b"www-authenticate",
            (
                _R + ', error="invalid_request", '
                'error_description="more than one Authorization header"'
            ).encode(),
        ),
    ),
    (
        InvalidToken("token revoked", reason="revoked"),
        401,
        {"error": "invalid_token", "detail": "token revoked"},
        (
            b"www-authenticate",
            (_R + ', error="invalid_token", error_description="token revoked"').encode(),
        ),
    ),
    (
        InsufficientScope("needs more", scope="threads:write"),
        403,
        {"error": "insufficient_scope", "detail": "needs more"},
        (
            b"www-authenticate",
            (
                _R + ', error="insufficient_scope", error_description="needs more", '
                'scope="threads:write"'
            ).encode(),
        ),
    ),
    (
        MethodNotAllowed("TRACE is not allowed"),
        405,
        {"error": "method_not_allowed", "detail": "TRACE is not allowed"},
        (b"allow", MethodNotAllowed.allow.encode()),
    ),
    (
        StoreUnavailable("store unreachable: ConnectionError at 10.0.0.1"),
        503,
        {"error": "store_unavailable", "detail": UNAVAILABLE_DETAIL},
        (b"retry-after", b"1"),
    ),
    (
        UpstreamConnectError("connect to 10.1.2.3:8000 refused"),
        502,
        {"error": "bad_gateway", "detail": "could not connect to the upstream"},
        None,
    ),
    (
        UpstreamTimeout("read from 10.1.2.3 timed out"),
        504,
        {"error": "gateway_timeout", "detail": "the upstream did not answer in time"},
        None,
    ),
    (
        UpstreamProtocolError("garbage from 10.1.2.3"),
        502,
        {"error": "bad_gateway", "detail": "the upstream sent an invalid response"},
        None,
    ),
    (
        NotFound("token tok_1 not found"),
        404,
        {"error": "not_found", "detail": "token tok_1 not found"},
        None,
    ),
    (
        Conflict("changed concurrently", code="conflict"),
        409,
        {"error": "conflict", "detail": "changed concurrently"},
        None,
    ),
    (ConfigError("bad realm"), 500, {"error": "internal", "detail": "internal error"}, None),
]


@pytest.mark.parametrize(
    ("error", "status", "body", "extra"), _TABLE, ids=[type(e).__name__ for e, *_ in _TABLE]
)
def test_every_error_family_renders_through_one_renderer(
    error: PatgateError, status: int, body: dict[str, str], extra: tuple[bytes, bytes] | None
) -> None:
    prepared = ErrorResponses().for_error(error)
    assert prepared.status == status
    assert json.loads(prepared.body) == body
    assert prepared.body == error_body(body["error"], body["detail"])
    expected = [(b"content-type", b"application/json")]
    expected.append((b"content-length", str(len(prepared.body)).encode()))
    if extra is not None:
        expected.append(extra)
    assert prepared.headers == expected
    assert prepared.start["status"] == status
    assert prepared.body_message["body"] == prepared.body


def test_fixed_texts_never_carry_the_exception_message() -> None:
    """Upstream and store errors' messages can name addresses; the body never does."""
    responses = ErrorResponses()
    for error in (UpstreamTimeout("10.9.9.9"), StoreUnavailable("10.9.9.9")):
        assert b"10.9.9.9" not in responses.for_error(error).body


def test_fixed_responses_are_built_once() -> None:
    responses = ErrorResponses()
    assert responses.for_error(StoreUnavailable("a")) is responses.for_error(StoreUnavailable("b"))
    assert responses.for_error(UpstreamTimeout("a")) is responses.for_error(UpstreamTimeout("b"))
    assert responses.for_error(InvalidToken("x")) is responses.for_error(InvalidToken("x"))
    assert isinstance(UpstreamTimeout("a"), UpstreamError)


def test_a_bare_401_body_can_be_named_per_front_door() -> None:
    """The management API names the bare 401 ``unauthenticated``; the challenge is the
    data plane's, and every other error is unchanged."""
    api = ErrorResponses("acme", missing_credentials=("unauthenticated", "token required"))
    prepared = api.for_error(MissingCredentials())
    assert json.loads(prepared.body) == {"error": "unauthenticated", "detail": "token required"}
    assert (b"www-authenticate", b'Bearer realm="acme"') in prepared.headers
    plain = ErrorResponses("acme")
    assert api.for_error(InvalidToken("x")).body == plain.for_error(InvalidToken("x")).body


def test_json_error_appends_headers_and_replays_as_a_starlette_response() -> None:
    prepared = json_error(404, "not_found", "no such endpoint", [(b"x-a", b"1")])
    assert prepared.body == b'{"error":"not_found","detail":"no such endpoint"}'
    assert prepared.headers[-1] == (b"x-a", b"1")
    response = prepared.as_response()
    assert response.status_code == 404
    assert response.body == prepared.body
    assert response.raw_headers == prepared.headers
    assert response.raw_headers is not prepared.headers


@pytest.mark.parametrize("realm", ["", 'a"b', "a\\b", "a\nb"])
def test_a_realm_that_would_break_the_challenge_is_refused(realm: str) -> None:
    with pytest.raises(ConfigError):
        ErrorResponses(realm)
