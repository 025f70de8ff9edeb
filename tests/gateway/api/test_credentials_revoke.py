"""``POST /v1/credentials/revoke`` (issue 12): leaked secrets reported without
authentication, against the session's real Valkey.

The answer is one and the same — 202 ``{"status": "accepted"}``, ``no-store`` — whatever
the secrets are; each token whose current secret is listed is revoked (a previous secret
in its grace period only has the grace ended), with an audit event naming the reporter's
address and user agent; reports are rate limited per client address, counted in the
store so every process shares the count. No secret is ever stored.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor, EventQuery, Owner, query_events
from patgate.middleware.records import Token
from patgate.middleware.runtime import redis_client as make_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.middleware.trust import TrustedProxies
from tests._topologies import ALL_BACKENDS
from tests.gateway.api._world import OWN, Api, snapshot

pytestmark = pytest.mark.anyio
#: the store tests run on standalone, Sentinel and Cluster (tests/conftest.py).
BACKENDS = ALL_BACKENDS

_PATH = "/v1/credentials/revoke"
_ACCEPTED = {"status": "accepted"}
_REPORTER = "203.0.113.77"
_NAMES = itertools.count()


@contextlib.asynccontextmanager
async def _reporter(
    api: Api,
    *,
    peer: str = _REPORTER,
    trusted: Sequence[str] = (),
    limit: int = 1000,
    window: float = 60.0,
    store: TokenStore | None = None,
    fmt: TokenFormat | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """A management API app of its own over the world's store (or ``store``), its peer
    address ``peer``, trusting ``trusted`` proxies as ``patgate serve`` does."""
    trust = TrustedProxies(trusted)
    app = create_api_app(
        store or api.store,
        fmt or api.fmt,
        clock=api.clock,
        client_ip=lambda request: trust.client_ip(request.scope),
        credential_report_limit=limit,
        credential_report_window=window,
    )
    transport = httpx.ASGITransport(app=app, client=(peer, 40_001))
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as client:
        yield client


async def _report(client: httpx.AsyncClient, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        _PATH, content=content, headers={"content-type": "application/json", **headers}
    )


def _shape(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """The whole response: status, body bytes and every header, in order."""
    return response.status_code, response.content, response.headers.multi_items()


async def _token(api: Api, user: str = "alice", **kw: Any) -> tuple[Token, str]:
    return await api.tokens.create(
        Actor.system(),
        name=f"leaky-{user}-{next(_NAMES)}",
        owner=Owner("user", user, "acme"),
        scopes=OWN,
        **kw,
    )


async def _events(api: Api, kind: str, token_id: str | None = None) -> list[dict[str, Any]]:
    items, _ = await query_events(
        api.store, EventQuery(org_id="acme", type=kind, token_id=token_id, limit=200)
    )
    return items


async def _me(api: Api, secret: str) -> httpx.Response:
    return await api.client.get("/v1/me", headers={"authorization": "Bearer " + secret})


def _unchanged(dump: dict[bytes, Any]) -> dict[bytes, Any]:
    """A snapshot without the reports' rate-limit counters (each request counts)."""
    return {k: v for k, v in dump.items() if b":report:" not in k}


# -- revocation --------------------------------------------------------------------------


async def test_reported_secrets_are_revoked(api: Api) -> None:
    one = await api.add_caller("leaky-one", "alice", OWN)
    two = await api.add_caller("leaky-two", "bob", OWN)
    kept = await api.add_caller("kept", "alice", OWN)
    assert (await _me(api, one)).status_code == 200
    async with _reporter(api) as reporter:
        response = await _report(reporter, {"credentials": [one, api.fmt.generate(), two]})
    assert response.status_code == 202
    assert response.json() == _ACCEPTED
    assert response.headers["cache-control"] == "no-store"
    for secret in (one, two):
        refused = await _me(api, secret)
        assert refused.status_code == 401
        assert refused.json() == {"error": "invalid_token", "detail": "token revoked"}
        token = await api.resolves(secret)
        assert token is not None
        assert token.revoked_at == api.clock.now
    # a token nobody reported is untouched
    assert (await _me(api, kept)).status_code == 200
    assert (await api.resolves(kept)).revoked_at is None  # type: ignore[union-attr]


async def test_one_answer_whatever_the_secrets_are(api: Api) -> None:
    live = await api.add_caller("live", "alice", OWN)
    revoked = await api.add_caller("revoked", "bob", OWN)
    await api.tokens.revoke(Actor.system(), api.ids["revoked"])
    expired_token, expired = await _token(api, expires_at=api.clock.now + 3600)
    api.clock.now += 7200
    bodies: list[list[str]] = [
        [live],  # an existing active token
        [api.fmt.generate()],  # well formed, unknown
        [api.fmt.generate(api.store.keys_for("acme").partition)],  # unknown, acme's partition
        ["pat_nope", "", "ghp_" + "a" * 36, live[:-1] + ("A" if live[-1] != "A" else "B")],
        [revoked],  # already revoked
        [expired],  # already expired
        [live, live, revoked],  # duplicates, mixed
    ]
    async with _reporter(api) as reporter:
        shapes = [_shape(await _report(reporter, {"credentials": b})) for b in bodies]
    assert shapes[0][0] == 202
    assert json.loads(shapes[0][1]) == _ACCEPTED
    assert dict(shapes[0][2])["cache-control"] == "no-store"
    assert "www-authenticate" not in dict(shapes[0][2])
    assert all(shape == shapes[0] for shape in shapes), shapes
    assert (await _me(api, live)).status_code == 401
    # the expired token stays as it was: not revoked
    stored = await api.store.get_token(expired_token.id)
    assert stored is not None
    assert stored.revoked_at is None


async def test_duplicates_revoke_once(api: Api) -> None:
    secret = await api.add_caller("dup", "alice", OWN)
    async with _reporter(api) as reporter:
        response = await _report(reporter, {"credentials": [secret] * 5})
        assert response.status_code == 202
        again = await _report(reporter, {"credentials": [secret, secret]})
        assert _shape(again) == _shape(response)
    events = await _events(api, "token.revoked", api.ids["dup"])
    assert len(events) == 1
    assert events[0]["data"] == {"reason": "reported_leaked"}


async def test_a_previous_secret_in_grace_only_ends_the_grace(api: Api) -> None:
    token, old = await _token(api)
    _, new = await api.tokens.regenerate(Actor.system(), token.id, grace_period=3600)
    assert (await _me(api, old)).status_code == 200  # both work during the grace period
    assert (await _me(api, new)).status_code == 200
    async with _reporter(api) as reporter:
        assert (await _report(reporter, {"credentials": [old]})).status_code == 202
    refused = await _me(api, old)
    assert refused.status_code == 401
    assert refused.json() == {"error": "invalid_token", "detail": "token rotated"}
    assert (await _me(api, new)).status_code == 200  # the new secret still works
    stored = await api.store.get_token(token.id)
    assert stored is not None
    assert (stored.revoked_at, stored.previous) == (None, None)
    [ended] = await _events(api, "token.grace_ended", token.id)
    assert ended["data"]["reason"] == "reported_leaked"
    assert ended["actor"] == {"type": "system", "id": "credential-report", "token_id": None}
    assert await _events(api, "token.revoked", token.id) == []


async def test_a_previous_secret_past_its_grace_is_skipped(api: Api) -> None:
    """A previous secret whose grace period is over is dead already: nothing to end, so
    nothing changes and no event is written (the record keeps it, to answer "rotated")."""
    token, old = await _token(api)
    _, new = await api.tokens.regenerate(Actor.system(), token.id, grace_period=60)
    api.clock.now += 61
    assert (await _me(api, old)).json()["detail"] == "token rotated"
    before = await api.store.get_token(token.id)
    async with _reporter(api) as reporter:
        assert (await _report(reporter, {"credentials": [old]})).status_code == 202
    assert await api.store.get_token(token.id) == before
    assert await _events(api, "token.grace_ended", token.id) == []
    assert (await _me(api, new)).status_code == 200

    # A revoked token's previous secret, its grace still running, is just as dead.
    other, other_old = await _token(api)
    await api.tokens.regenerate(Actor.system(), other.id, grace_period=3600)
    await api.tokens.revoke(Actor.system(), other.id)
    assert (await _me(api, other_old)).json()["detail"] == "token revoked"
    before = await api.store.get_token(other.id)
    async with _reporter(api) as reporter:
        assert (await _report(reporter, {"credentials": [other_old]})).status_code == 202
    assert await api.store.get_token(other.id) == before
    assert await _events(api, "token.grace_ended", other.id) == []


async def test_the_owner_sees_who_reported_it(api: Api) -> None:
    token, secret = await _token(api, user="admin")
    ua = "secret-scanner/3.4 (+https://scanner.example)"
    # Through a trusted proxy: the client is X-Forwarded-For's first untrusted hop.
    async with _reporter(api, peer="10.0.0.5", trusted=["10.0.0.0/8"]) as reporter:
        response = await _report(
            reporter,
            {"credentials": [secret]},
            **{"user-agent": ua, "x-forwarded-for": "192.0.2.1, 198.51.100.23, 10.0.0.9"},
        )
        assert response.status_code == 202
    listed = await api.call(
        "GET", "/v1/events", params={"type": "token.revoked", "token_id": token.id}
    )
    assert listed.status_code == 200, listed.text
    [event] = listed.json()["items"]
    assert event == {
        "id": event["id"],
        "type": "token.revoked",
        "at": api.clock.now,
        "org_id": "acme",
        "actor": {"type": "system", "id": "credential-report", "token_id": None},
        "ip": "198.51.100.23",
        "user_agent": ua,
        "token_id": token.id,
        "user_id": "admin",
        "data": {"reason": "reported_leaked"},
    }

    # From an untrusted peer, X-Forwarded-For is the client's own claim: ignored.
    other, other_secret = await _token(api, user="admin")
    async with _reporter(api, peer="192.0.2.50", trusted=["10.0.0.0/8"]) as reporter:
        await _report(
            reporter,
            {"credentials": [other_secret]},
            **{"user-agent": "curl/8", "x-forwarded-for": "198.51.100.23"},
        )
    [event] = await _events(api, "token.revoked", other.id)
    assert (event["ip"], event["user_agent"]) == ("192.0.2.50", "curl/8")


# -- validation --------------------------------------------------------------------------


async def test_up_to_a_thousand_secrets(api: Api) -> None:
    secret = await api.add_caller("last", "alice", OWN)
    many = [api.fmt.generate() for _ in range(999)] + [secret]
    async with _reporter(api) as reporter:
        response = await _report(reporter, {"credentials": many})
    assert response.status_code == 202
    assert response.json() == _ACCEPTED
    assert (await _me(api, secret)).status_code == 401  # the thousandth was read too


async def test_a_thousand_of_the_longest_secrets_fit_the_body_limit(api: Api) -> None:
    fmt = TokenFormat("abcdefghijklmnop")  # the longest prefix a format allows
    many = [fmt.generate() for _ in range(1000)]
    async with _reporter(api, fmt=fmt) as reporter:
        response = await _report(reporter, {"credentials": many})
    assert (response.status_code, response.json()) == (202, _ACCEPTED)


@pytest.mark.parametrize(
    "body",
    [
        {"credentials": []},
        {"credentials": "SECRET"},
        {"credentials": {"token": "SECRET"}},
        {"credentials": None},
        {"credentials": ["SECRET", 7]},
        {"credentials": ["SECRET", None]},
        {"credentials": [["SECRET"]]},
        {"credentials": ["SECRET"], "reason": "leaked"},
        {"tokens": ["SECRET"]},
        {},
        ["SECRET"],
        "SECRET",
        b"",
        b"{not json",
        "1001",
    ],
    ids=lambda b: repr(b)[:40],
)
async def test_invalid_bodies_are_400_and_change_nothing(
    api: Api, redis_client: aioredis.Redis, namespace: str, body: Any
) -> None:
    secret = await api.add_caller("victim", "alice", OWN)

    def fill(value: Any) -> Any:
        if value == "1001":
            return {"credentials": [secret] + [api.fmt.generate() for _ in range(1000)]}
        if isinstance(value, str):
            return value.replace("SECRET", secret)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    before = _unchanged(await snapshot(redis_client, namespace))
    async with _reporter(api) as reporter:
        response = await _report(reporter, fill(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "validation"
    assert secret not in response.text
    assert _unchanged(await snapshot(redis_client, namespace)) == before
    assert (await _me(api, secret)).status_code == 200


async def test_over_a_thousand_is_named_in_the_error(api: Api) -> None:
    async with _reporter(api) as reporter:
        response = await _report(reporter, {"credentials": [api.fmt.generate()] * 1001})
    assert response.status_code == 400
    assert "1000" in response.json()["detail"]


# -- no authentication -------------------------------------------------------------------


async def test_no_authentication_needed_and_authorization_is_irrelevant(api: Api) -> None:
    reported = [await api.add_caller(f"r{i}", "alice", OWN) for i in range(4)]
    revoked = await api.add_caller("dead", "bob", OWN)
    await api.tokens.revoke(Actor.system(), api.ids["dead"])
    authorizations = [
        None,
        "Bearer " + api.fmt.generate(),  # unknown
        "Bearer " + revoked,  # revoked
        "Basic dXNlcjpwYXNz",
    ]
    shapes = []
    async with _reporter(api) as reporter:
        for secret, authorization in zip(reported, authorizations, strict=True):
            headers = {} if authorization is None else {"authorization": authorization}
            response = await _report(reporter, {"credentials": [secret]}, **headers)
            shapes.append(_shape(response))
            assert (await _me(api, secret)).status_code == 401
    assert shapes[0][0] == 202
    assert all(shape == shapes[0] for shape in shapes)
    # a valid caller's token gains nothing either: same answer, and it is not revoked
    async with _reporter(api) as reporter:
        admin = "Bearer " + api.secrets["admin"]
        response = await _report(
            reporter, {"credentials": [api.fmt.generate()]}, authorization=admin
        )
    assert _shape(response) == shapes[0]
    assert (await api.call("GET", "/v1/me")).status_code == 200


# -- the rate limit ----------------------------------------------------------------------


async def test_rate_limited_per_client_address(api: Api) -> None:
    async with (
        _reporter(api, limit=3) as first,
        _reporter(api, peer="198.51.100.200", limit=3) as second,
    ):
        for _ in range(3):
            assert (await _report(first, {"credentials": [api.fmt.generate()]})).status_code == 202
        late = await api.add_caller("late", "alice", OWN)
        refused = await _report(first, {"credentials": [late]})
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert late not in refused.text
        # refused before it is read: the reported token still works
        assert (await _me(api, late)).status_code == 200
        # even an invalid body is refused the same way (counted before parsing)
        assert (await _report(first, b"{bad")).status_code == 429
        # another address has its own budget
        answer = await _report(second, {"credentials": [late]})
        assert (answer.status_code, answer.json()) == (202, _ACCEPTED)
        assert (await _me(api, late)).status_code == 401


async def test_the_window_ends(api: Api) -> None:
    # 1.5 s: long enough for a loaded machine to send the second report inside it.
    async with _reporter(api, limit=1, window=1.5) as reporter:
        assert (await _report(reporter, {"credentials": ["x"]})).status_code == 202
        refused = await _report(reporter, {"credentials": ["x"]})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] in ("1", "2")  # rounded up to whole seconds
        await anyio.sleep(1.6)
        assert (await _report(reporter, {"credentials": ["x"]})).status_code == 202


async def test_the_count_is_shared_by_two_app_instances(api: Api, store_url: str) -> None:
    """Two processes: two apps, each with its own connection to the same store."""
    other_client = make_client(store_url)
    other_store = TokenStore(other_client, api.store.keyspace)
    try:
        async with (
            _reporter(api, limit=4) as one,
            _reporter(api, limit=4, store=other_store) as two,
        ):
            for client in (one, two, one, two):
                response = await _report(client, {"credentials": [api.fmt.generate()]})
                assert response.status_code == 202
            for client in (one, two):
                assert (await _report(client, {"credentials": ["x"]})).status_code == 429
    finally:
        await other_client.aclose()


async def test_the_default_limit_is_ten_a_minute(api: Api) -> None:
    transport = httpx.ASGITransport(
        app=create_api_app(api.store, api.fmt, clock=api.clock), client=("192.0.2.99", 1)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as client:
        statuses = [
            (await _report(client, {"credentials": [api.fmt.generate()]})).status_code
            for _ in range(11)
        ]
        assert statuses == [202] * 10 + [429]
        retry = int((await _report(client, {"credentials": ["x"]})).headers["retry-after"])
        assert 1 <= retry <= 60


# -- nothing stored ----------------------------------------------------------------------


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    body = secret.split("_", 1)[1].encode()
    return [raw, body, raw.hex().encode(), body.hex().encode(), base64.b64encode(raw)]


def _leaks(blob: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if any(form in blob for form in _forms(s))]


async def test_reported_secrets_are_stored_nowhere(
    api: Api, redis_client: aioredis.Redis, namespace: str
) -> None:
    live = await api.add_caller("stored-live", "alice", OWN)
    token, old = await _token(api)
    _, new = await api.tokens.regenerate(Actor.system(), token.id, grace_period=3600)
    unknown = [api.fmt.generate(api.store.keys_for("acme").partition) for _ in range(5)]
    reported = [live, old, *unknown, "pat_" + "Z" * 36]
    async with _reporter(api, limit=3) as reporter:
        responses = [await _report(reporter, {"credentials": reported}) for _ in range(4)]
    assert [r.status_code for r in responses] == [202, 202, 202, 429]
    for response in responses:
        assert _leaks(response.content + str(response.headers).encode(), reported) == []
    dump = await snapshot(redis_client, namespace)
    assert any(b":report:" in k for k in dump)  # the counter is there, under the address
    flat = repr(dump).encode()
    assert _leaks(flat, [*reported, new]) == []
    listed = await api.call("GET", "/v1/events", params={"limit": 200})
    assert listed.status_code == 200
    assert _leaks(listed.content, reported) == []
    types = [e["type"] for e in listed.json()["items"]]
    assert "token.revoked" in types
    assert "token.grace_ended" in types
