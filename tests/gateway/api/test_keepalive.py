"""No input answers 500, and a refused request leaves its keep-alive connection usable.

Each bad input goes over one raw HTTP/1.1 connection to a real uvicorn server, followed
on the same connection by a good request: a handler that raised would have made uvicorn
answer a plain-text 500 and then drop the connection without ``Connection: close``
(issue 9, item 2).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor, Directory, TokenService, bootstrap
from patgate.gateway.settings import Settings
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests.gateway.api._world import snapshot
from tests.middleware._servers import serve

from ._live import LiveApi, RawConnection, live_api

HUGE = "1" + "0" * 400
_HUGE_SCORE_CURSOR = base64.urlsafe_b64encode(b"9" * 400 + b":tok_x").decode().rstrip("=")


def _body(**fields: str) -> bytes:
    """A JSON object whose values are raw JSON text (so 1e400 stays 1e400)."""
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}").encode()


# (case id, method, target, body); every one must answer 400 validation.
BAD: list[tuple[str, str, str, bytes]] = [
    ("create-expires-at-huge-int", "POST", "/v1/tokens", _body(name='"a"', expires_at=HUGE)),
    ("create-expires-at-huge-neg", "POST", "/v1/tokens", _body(name='"a"', expires_at="-" + HUGE)),
    ("create-expires-at-1e400", "POST", "/v1/tokens", _body(name='"a"', expires_at="1e400")),
    ("create-expires-at--1e400", "POST", "/v1/tokens", _body(name='"a"', expires_at="-1e400")),
    (
        "create-expires-at-past-9999",
        "POST",
        "/v1/tokens",
        _body(name='"a"', expires_at='"9999-12-31T23:59:59-23:59"'),
    ),
    (
        "create-expires-at-year-1",
        "POST",
        "/v1/tokens",
        _body(name='"a"', expires_at='"0001-01-01T00:00:00+23:59"'),
    ),
    ("create-expiration-huge", "POST", "/v1/tokens", _body(name='"a"', expiration=HUGE)),
    (
        "regenerate-expires-at-huge-int",
        "POST",
        "/v1/tokens/{admin}/regenerate",
        _body(expires_at=HUGE),
    ),
    (
        "regenerate-expires-at-1e400",
        "POST",
        "/v1/tokens/{admin}/regenerate",
        _body(expires_at="1e400"),
    ),
    ("org-max-lifetime-huge-int", "PUT", "/v1/orgs/acme", _body(max_lifetime=HUGE)),
    ("org-max-lifetime-huge-neg", "PUT", "/v1/orgs/acme", _body(max_lifetime="-" + HUGE)),
    ("org-max-lifetime-1e400", "PUT", "/v1/orgs/acme", _body(max_lifetime="1e400")),
    (
        "org-max-lifetime-over-100y",
        "PUT",
        "/v1/orgs/acme",
        _body(max_lifetime=str(101 * 365 * 86400)),
    ),
    ("org-token-limit-huge", "PUT", "/v1/orgs/acme", _body(token_limit=HUGE)),
    ("org-token-limit-1e400", "PUT", "/v1/orgs/acme", _body(token_limit="1e400")),
    ("events-cursor-0-0", "GET", "/v1/events?cursor=0-0", b""),
    ("events-cursor-past-u64", "GET", "/v1/events?cursor=18446744073709551616-0", b""),
    ("events-cursor-seq-past-u64", "GET", "/v1/events?cursor=1-18446744073709551616", b""),
    ("events-cursor-leading-zero", "GET", "/v1/events?cursor=01-0", b""),
    ("events-cursor-huge", "GET", "/v1/events?cursor=" + HUGE + "-1", b""),
    ("events-limit-huge", "GET", "/v1/events?limit=" + HUGE, b""),
    ("tokens-cursor-huge-score", "GET", "/v1/tokens?cursor=" + _HUGE_SCORE_CURSOR, b""),
    ("admin-cursor-huge-score", "GET", "/v1/admin/tokens?cursor=" + _HUGE_SCORE_CURSOR, b""),
    ("tokens-limit-fullwidth-digit", "GET", "/v1/tokens?limit=%EF%BC%95", b""),
    ("tokens-limit-underscore", "GET", "/v1/tokens?limit=1_0", b""),
    ("tokens-limit-huge", "GET", "/v1/tokens?limit=" + "9" * 5000, b""),
    ("tokens-q-too-long", "GET", "/v1/tokens?q=" + "x" * 201, b""),
    # Schemathesis: a falsy non-object "headers" passed as "no headers"
    (
        "verify-headers-false",
        "POST",
        "/v1/verify",
        _body(token='"pat_x"', method='"GET"', path='"/"', headers="false"),
    ),
    (
        "verify-headers-not-strings",
        "POST",
        "/v1/verify",
        _body(token='"pat_x"', method='"GET"', path='"/"', headers='{"a": 1}'),
    ),
    ("verify-token-number", "POST", "/v1/verify", _body(token="1", method='"GET"', path='"/"')),
    (
        "owner-extra-key",
        "POST",
        "/v1/tokens",
        _body(name='"a"', owner='{"type": "org", "colour": 1}'),
    ),
]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveApi]:
    async with live_api(settings.evolve(durable_writes=False)) as api:
        yield api


@pytest.mark.anyio
async def test_bad_inputs_answer_400_and_keep_the_connection(live: LiveApi) -> None:
    conn = await RawConnection.open(live.port)
    try:
        for case, method, target, body in BAD:
            url = target.format(**live.ids)
            r = await conn.request(method, url, secret=live.secrets["admin"], body=body)
            assert r.status == 400, (case, r.status, r.body[:300])
            assert r.headers["content-type"] == "application/json", case
            assert r.headers.get("connection") != "close", case
            payload = json.loads(r.body)
            assert set(payload) == {"error", "detail"}, case
            assert payload["error"] == "validation", (case, payload)
            # The same connection still works: framing was intact.
            ok = await conn.request("GET", "/v1/me", secret=live.secrets["admin"])
            assert ok.status == 200, (case, ok.body[:300])
    finally:
        await conn.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("case", "method", "target", "body"), BAD, ids=[c[0] for c in BAD])
async def test_bad_inputs_change_nothing(
    live: LiveApi,
    redis_client: aioredis.Redis,
    namespace: str,
    case: str,
    method: str,
    target: str,
    body: bytes,
) -> None:
    before = await snapshot(redis_client, namespace)
    assert before
    conn = await RawConnection.open(live.port)
    try:
        r = await conn.request(
            method, target.format(**live.ids), secret=live.secrets["admin"], body=body
        )
    finally:
        await conn.close()
    assert r.status == 400, r.body
    assert await snapshot(redis_client, namespace) == before


# -- the safety net -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unexpected_error_answers_json_500_and_keeps_the_connection(
    store: TokenStore, caplog: pytest.LogCaptureFixture
) -> None:
    """No input reaches the safety net (the tests above and the Schemathesis run check
    that); here a verifier that raises stands in for a bug."""
    marker = "do-not-log-me"

    async def broken_verifier(body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        raise RuntimeError(f"bug holding {body['token']}")

    fmt = TokenFormat()
    tokens, directory = TokenService(store, fmt), Directory(store)
    _, secret = await bootstrap(tokens, directory, org_id="acme")
    app = create_api_app(store, fmt, verifier=broken_verifier)
    body = json.dumps({"token": marker, "method": "GET", "path": "/x"}).encode()
    with caplog.at_level(logging.ERROR, logger="patgate.api"):
        async with serve(app, lifespan="off") as port:
            conn = await RawConnection.open(port)
            try:
                r = await conn.request("POST", "/v1/verify", secret=secret, body=body)
                assert r.status == 500
                assert r.headers["content-type"] == "application/json"
                assert r.headers.get("connection") != "close"
                assert json.loads(r.body) == {"error": "internal", "detail": "internal error"}
                ok = await conn.request("GET", "/v1/me", secret=secret)
                assert ok.status == 200
            finally:
                await conn.close()
    logged = [rec for rec in caplog.records if rec.name == "patgate.api"]
    assert logged, "the internal error is logged"
    text = "\n".join(rec.getMessage() for rec in logged)
    assert "RuntimeError" in text
    assert marker not in text
    assert secret not in text
