"""The reuse tripwire (issue 12), against the session's real Valkey.

A dead secret — revoked, expired, rotated out (at once, or after its grace period) or of
a deleted token — presented again is refused as always, counted in
``patgate_token_reuse_total{kind}`` on every presentation, and reported to its owner as
one audit event per token and minute across every process (the ``REUSE`` script).

Each "process" here is a data plane of its own: a store connection, a cache kept
coherent by a running invalidation subscriber, a Tripwire and an Authenticator. Tokens
are made and changed through the real service layer (the management API's world,
``tests/gateway/api/_world.py``) on the controllable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor, EventQuery, Owner, TokenService, query_events
from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.auth import Authenticator, Resolved
from patgate.middleware.cache import TokenCache
from patgate.middleware.errors import AuthError
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.keys import Keyspace
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import Token, Tombstone
from patgate.middleware.runtime import Runtime
from patgate.middleware.runtime import redis_client as make_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tripwire import REUSE_EVENTS, Tripwire
from tests._topologies import ALL_BACKENDS
from tests.gateway.api._world import Api, make_api

from ._servers import serve
from ._tokens import POLICY_TOML, make_policy

pytestmark = pytest.mark.anyio
#: the store tests run on standalone, Sentinel and Cluster (tests/conftest.py).
BACKENDS = ALL_BACKENDS

_IP = "198.51.100.9"
_UA = "leaky-script/2.1"
_REUSE_TYPES = sorted(REUSE_EVENTS.values())
_UNKNOWN = {"error": "invalid_token", "error_description": "invalid or unknown token"}


class SpyTripwire(Tripwire):
    """The real Tripwire, remembering each call it gets (the happy path makes none)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def presented(self, kind: str, **kw: Any) -> None:
        self.calls.append((kind, kw))
        super().presented(kind, **kw)


class Plane:
    """One data-plane process over the shared store (its own connections)."""

    def __init__(self, store_url: str, keys: Keyspace, api: Api, *, every: float = 60.0) -> None:
        self.client = make_client(store_url)
        self.sub_client = make_client(store_url, retries=0)
        self.store = TokenStore(self.client, keys)
        self.metrics = Metrics()
        self.cache: TokenCache[Resolved] = TokenCache(100, 30.0, 2.0, self.metrics)
        self.subscriber = InvalidationSubscriber(
            self.sub_client, keys.channels, self.cache, self.metrics
        )
        self.tripwire = SpyTripwire(self.store, self.metrics, every=every, clock=api.clock)
        self.auth = Authenticator(
            self.store,
            self.cache,
            api.fmt,
            make_policy(),
            self.metrics,
            clock=api.clock,
            tripwire=self.tripwire,
        )

    async def start(self) -> None:
        await self.subscriber.start(wait=5.0)
        assert self.subscriber.connected

    async def aclose(self) -> None:
        await self.auth.aclose()
        await self.subscriber.aclose()
        await self.sub_client.aclose()
        await self.client.aclose()

    async def present(
        self, secret: str, *, path: str = "/threads/7?page=2", ip: str = _IP
    ) -> tuple[int, dict[str, Any]]:
        """Status and the challenge's parameters (or the token id on success)."""
        headers = [
            (b"authorization", b"Bearer " + secret.encode()),
            (b"user-agent", _UA.encode()),
        ]
        try:
            resolved = await self.auth.authenticate("GET", path, headers, {"client": (ip, 5555)})
        except AuthError as exc:
            prepared = self.auth.responses.for_error(exc)
            challenge = dict(prepared.headers)[b"www-authenticate"].decode()
            params = dict(
                part.strip().split("=", 1) for part in challenge.removeprefix("Bearer ").split(",")
            )
            body = json.loads(prepared.body)
            return prepared.status, {
                "error": params["error"].strip('"'),
                "error_description": params["error_description"].strip('"'),
                "body": body,
            }
        assert resolved is not None
        return 200, {"token_id": resolved.token.id}

    def reuse_count(self, kind: str) -> float:
        value = self.metrics.registry.get_sample_value("patgate_token_reuse_total", {"kind": kind})
        return value or 0.0

    def reuse_counts(self) -> dict[str, float]:
        return {kind: self.reuse_count(kind) for kind in REUSE_EVENTS}


@contextlib.asynccontextmanager
async def _planes(
    store_url: str, keys: Keyspace, api: Api, n: int = 1, *, every: float = 60.0
) -> AsyncIterator[list[Plane]]:
    planes = [Plane(store_url, keys, api, every=every) for _ in range(n)]
    try:
        for plane in planes:
            await plane.start()
        yield planes
    finally:
        for plane in planes:
            await plane.aclose()


@pytest.fixture
async def world(store: TokenStore) -> AsyncIterator[Api]:
    async with make_api(store) as api:
        yield api


@pytest.fixture
async def plane(store_url: str, keys: Keyspace, world: Api) -> AsyncIterator[Plane]:
    async with _planes(store_url, keys, world) as planes:
        yield planes[0]


async def _token(api: Api, user: str = "alice", **kw: Any) -> tuple[Token, str]:
    return await api.tokens.create(
        Actor.system(),
        name="reader-" + str(len(api.secrets)) + "-" + str(time.monotonic_ns()),
        owner=Owner("user", user, "acme"),
        scopes=["threads:read"],
        **kw,
    )


async def _reuse_events(api: Api, **kw: Any) -> list[dict[str, Any]]:
    """Every reuse event of acme, oldest first (all four types)."""
    found: list[dict[str, Any]] = []
    for kind in _REUSE_TYPES:
        items, _ = await query_events(api.store, EventQuery(org_id="acme", type=kind, limit=200))
        found += items
    found = [e for e in found if all(e.get(k) == v for k, v in kw.items())]
    return sorted(found, key=lambda e: e["id"])


async def _settle(*planes: Plane) -> None:
    """Wait for the background event writes of each plane's tripwire."""
    for p in planes:
        await p.tripwire.aclose()


def _assert_event(
    event: dict[str, Any], kind: str, token: Token, *, at: float, path: str = "/threads/7"
) -> None:
    assert event == {
        "id": event["id"],
        "type": kind,
        "at": at,
        "org_id": "acme",
        "actor": {"type": "client", "id": _IP, "token_id": None},
        "ip": _IP,
        "user_agent": _UA,
        "token_id": token.id,
        "user_id": token.owner_id,
        "data": {"method": "GET", "path": path},
    }


async def _stored(client: aioredis.Redis, key: str) -> bytes:
    value = await client.get(key)
    assert isinstance(value, bytes), key
    return value


async def _reuse_keys(client: aioredis.Redis, namespace: str) -> list[bytes]:
    return [k async for k in client.scan_iter(match="{" + namespace + ":*}:reuse:*")]


async def _assert_expiry(
    client: aioredis.Redis, key: str, *, ttl: float, written_after: float
) -> None:
    """``key`` was written with a TTL of ``ttl`` seconds at some time between
    ``written_after`` and now (wall clock, which the store shares). Read as an absolute
    expiry (PEXPIRETIME), so a stalled CI machine cannot make it look short; a key already
    gone must have outlived its TTL."""
    now = time.time()
    at = await client.pexpiretime(key)
    if at == -2:
        assert time.time() - written_after >= ttl, f"{key!r} vanished before its TTL"
        return
    assert (written_after + ttl) * 1000 - 1 <= at <= (now + ttl) * 1000 + 1, (key, at)


# -- each kind of dead secret ----------------------------------------------------------


async def test_revoked_secret_writes_one_event_then_counts_only(
    world: Api, plane: Plane, redis_client: aioredis.Redis, namespace: str
) -> None:
    token, secret = await _token(world)
    assert (await plane.present(secret))[0] == 200  # cached while valid
    await world.tokens.revoke(Actor.system(), token.id)
    revoked_at = world.clock.now
    written_after = time.time()

    async def refused() -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + 2.0
        while True:  # the subscriber drops the cached answer
            status, info = await plane.present(secret)
            if status != 200 or time.monotonic() > deadline:
                return status, info
            await asyncio.sleep(0.005)

    status, info = await refused()
    assert status == 401
    assert info["error_description"] == "token revoked"
    await _settle(plane)
    [event] = await _reuse_events(world)
    _assert_event(event, "token.reuse_after_revoke", token, at=revoked_at)
    assert plane.reuse_counts() == {"revoked": 1, "rotated": 0, "expired": 0, "deleted": 0}
    # the query string never reaches the event; the reuse key lives one minute
    [key] = await _reuse_keys(redis_client, namespace)
    assert key.endswith(b":reuse:" + token.id.encode())
    await _assert_expiry(redis_client, key.decode(), ttl=60.0, written_after=written_after)

    # Again within the minute (from the cache, then from the store): counted, no event.
    world.clock.now += 30
    assert (await plane.present(secret))[0] == 401
    plane.cache.flush()
    assert (await plane.present(secret, path="/other"))[0] == 401
    await _settle(plane)
    assert len(await _reuse_events(world)) == 1
    assert plane.reuse_count("revoked") == 3


async def test_expired_secret_writes_an_expiry_event(world: Api, plane: Plane) -> None:
    token, secret = await _token(world, expires_at=world.clock.now + 100)
    assert (await plane.present(secret))[0] == 200
    await _settle(plane)
    assert await _reuse_events(world) == []
    world.clock.now += 101  # expired on the cached answer: no store change at all
    status, info = await plane.present(secret)
    assert (status, info["error_description"]) == (401, "token expired")
    await _settle(plane)
    [event] = await _reuse_events(world)
    _assert_event(event, "token.reuse_after_expiry", token, at=world.clock.now)
    assert plane.reuse_counts() == {"revoked": 0, "rotated": 0, "expired": 1, "deleted": 0}


async def test_rotation_without_grace_leaves_a_tombstone_that_trips(
    world: Api, plane: Plane, redis_client: aioredis.Redis
) -> None:
    token, old = await _token(world)
    _, new = await world.tokens.regenerate(Actor.system(), token.id)
    keys = world.store.keys_for("acme")
    stone_key = keys.tombstone(world.fmt.digest(old))
    stone = Tombstone.decode(await _stored(redis_client, stone_key))
    assert (stone.token_id, stone.reason, stone.user_id) == (token.id, "rotated", "alice")
    # the default tombstone TTL: 30 days
    assert 30 * 86_400_000 - 60_000 < await redis_client.pttl(stone_key) <= 30 * 86_400_000

    status, info = await plane.present(old)
    assert (status, info["error_description"]) == (401, "token rotated")
    assert (await plane.present(new))[0] == 200
    await _settle(plane)
    [event] = await _reuse_events(world)
    _assert_event(event, "token.reuse_after_rotation", token, at=world.clock.now)
    assert plane.reuse_counts() == {"revoked": 0, "rotated": 1, "expired": 0, "deleted": 0}
    assert [kind for kind, _ in plane.tripwire.calls] == ["rotated"]


async def test_rotation_after_the_grace_period_ends(world: Api, plane: Plane) -> None:
    token, old = await _token(world)
    _, new = await world.tokens.regenerate(Actor.system(), token.id, grace_period=60)
    # within the grace period both secrets work, and nothing is reported
    assert (await plane.present(old))[0] == 200
    assert (await plane.present(new))[0] == 200
    world.clock.now += 61  # the grace period lapses on its own
    status, info = await plane.present(old)
    assert (status, info["error_description"]) == (401, "token rotated")
    assert (await plane.present(new))[0] == 200
    await _settle(plane)
    [event] = await _reuse_events(world)
    _assert_event(event, "token.reuse_after_rotation", token, at=world.clock.now)

    # A grace ended explicitly: the previous secret is buried, still one event a minute.
    second, old2 = await _token(world, user="bob")
    await world.tokens.regenerate(Actor.system(), second.id, grace_period=3600)
    assert (await plane.present(old2))[0] == 200
    await world.tokens.end_grace(Actor.system(), second.id)
    plane.cache.flush()
    status, info = await plane.present(old2)
    assert (status, info["error_description"]) == (401, "token rotated")
    await _settle(plane)
    events = await _reuse_events(world, token_id=second.id)
    assert [e["type"] for e in events] == ["token.reuse_after_rotation"]
    assert events[0]["user_id"] == "bob"
    assert plane.reuse_count("rotated") == 2


async def test_deleted_secret_answers_as_unknown_and_trips(
    world: Api, plane: Plane, redis_client: aioredis.Redis
) -> None:
    token, secret = await _token(world)
    assert (await plane.present(secret))[0] == 200
    await world.tokens.delete(Actor.system(), token.id)
    plane.cache.flush()
    deleted = await plane.present(secret)
    unknown = await plane.present(world.fmt.generate(world.store.keys_for("acme").partition))
    assert deleted == unknown  # status, challenge and body: exactly an unknown token's
    assert deleted[0] == 401
    assert {k: deleted[1][k] for k in _UNKNOWN} == _UNKNOWN
    await _settle(plane)
    [event] = await _reuse_events(world)
    _assert_event(event, "token.reuse_after_delete", token, at=world.clock.now)
    assert plane.reuse_counts() == {"revoked": 0, "rotated": 0, "expired": 0, "deleted": 1}
    stone_key = world.store.keys_for("acme").tombstone(world.fmt.digest(secret))
    assert Tombstone.decode(await _stored(redis_client, stone_key)).reason == "deleted"


# -- what writes nothing -----------------------------------------------------------------


async def test_unknown_and_valid_tokens_write_nothing(
    world: Api, plane: Plane, redis_client: aioredis.Redis, namespace: str
) -> None:
    _, secret = await _token(world)
    for _ in range(3):
        assert (await plane.present(secret))[0] == 200
        status, info = await plane.present(world.fmt.generate())
        assert (status, info["error_description"]) == (401, "invalid or unknown token")
        assert (await plane.present("pat_malformed"))[0] == 401
    await _settle(plane)
    assert plane.tripwire.calls == []  # never called on success, nor for unknown secrets
    assert plane.reuse_counts() == dict.fromkeys(REUSE_EVENTS, 0.0)
    assert await _reuse_events(world) == []
    assert await _reuse_keys(redis_client, namespace) == []


# -- once a minute, across processes -----------------------------------------------------


async def test_a_new_event_after_the_minute(
    world: Api, store_url: str, keys: Keyspace, redis_client: aioredis.Redis, namespace: str
) -> None:
    # A short "minute" so the store's own window (PX) can pass in real time too; a whole
    # second, so that a loaded machine still reads the key before it expires.
    async with _planes(store_url, keys, world, every=1.0) as [plane]:
        token, secret = await _token(world)
        await world.tokens.revoke(Actor.system(), token.id)
        written_after = time.time()
        assert (await plane.present(secret))[0] == 401
        await _settle(plane)
        for key in await _reuse_keys(redis_client, namespace):  # none if its second passed
            await _assert_expiry(redis_client, key.decode(), ttl=1.0, written_after=written_after)
        world.clock.now += 0.1
        assert (await plane.present(secret))[0] == 401  # within the window: none
        await _settle(plane)
        assert len(await _reuse_events(world)) == 1
        world.clock.now += 1.0
        await anyio.sleep(1.05)
        assert (await plane.present(secret))[0] == 401
        await _settle(plane)
        events = await _reuse_events(world)
        assert [e["type"] for e in events] == ["token.reuse_after_revoke"] * 2
        assert events[1]["at"] == world.clock.now
        assert plane.reuse_count("revoked") == 3


async def test_the_local_minute_follows_the_clock(world: Api, plane: Plane) -> None:
    """The process's own table spares store calls within its minute; once its clock
    passes the minute it asks the store again (which decides: its key still lives)."""
    token, secret = await _token(world)
    await world.tokens.revoke(Actor.system(), token.id)
    calls: list[str] = []
    original = plane.store.reuse_event

    async def counting(partition: int, token_id: str, event: str, **kw: Any) -> bool:
        calls.append(token_id)
        return await original(partition, token_id, event, **kw)

    plane.store.reuse_event = counting  # type: ignore[method-assign]
    for _ in range(5):
        assert (await plane.present(secret))[0] == 401
        world.clock.now += 10
    await _settle(plane)
    assert calls == [token.id]
    world.clock.now += 20  # 70 s after the first presentation
    assert (await plane.present(secret))[0] == 401
    await _settle(plane)
    assert calls == [token.id, token.id]
    assert len(await _reuse_events(world)) == 1  # the store's minute is real time
    assert plane.reuse_count("revoked") == 6


async def test_at_most_one_event_a_minute_across_two_processes(
    world: Api, store_url: str, keys: Keyspace
) -> None:
    async with _planes(store_url, keys, world, n=2) as [one, two]:
        token, secret = await _token(world)
        await world.tokens.revoke(Actor.system(), token.id)
        # concurrently, then one after the other, from both
        results = await asyncio.gather(*(p.present(secret) for p in (one, two) * 3))
        assert {status for status, _ in results} == {401}
        await _settle(one, two)
        assert len(await _reuse_events(world)) == 1
        assert one.reuse_count("revoked") == 3
        assert two.reuse_count("revoked") == 3
        # each process asked the store once (its own table), the store let one through
        assert len(one.tripwire.calls) == len(two.tripwire.calls) == 3

        # a different dead token is its own minute
        other, other_secret = await _token(world, user="bob")
        await world.tokens.delete(Actor.system(), other.id)
        assert (await two.present(other_secret))[0] == 401
        assert (await one.present(other_secret))[0] == 401
        await _settle(one, two)
        assert [e["token_id"] for e in await _reuse_events(world)] == [token.id, other.id]


# -- tombstones --------------------------------------------------------------------------


async def test_tombstone_ttl_is_configurable(
    world: Api, plane: Plane, redis_client: aioredis.Redis
) -> None:
    # long enough that a stalled machine still presents the secret while its stone lives
    short = TokenService(world.store, world.fmt, clock=world.clock, tombstone_ttl=2.5)
    token, secret = await _token(world)
    written_after = time.time()
    await short.delete(Actor.system(), token.id)
    stone_key = world.store.keys_for("acme").tombstone(world.fmt.digest(secret))
    await _assert_expiry(redis_client, stone_key, ttl=2.5, written_after=written_after)
    assert (await plane.present(secret))[0] == 401
    await _settle(plane)
    assert [e["type"] for e in await _reuse_events(world)] == ["token.reuse_after_delete"]

    await anyio.sleep(max(0.0, written_after + 2.55 - time.time()))
    assert not await redis_client.exists(stone_key)  # the TTL ran out
    world.clock.now += 120  # past the tripwire's minute too
    status, info = await plane.present(secret)
    assert (status, info["error_description"]) == (401, "invalid or unknown token")
    await _settle(plane)
    assert len(await _reuse_events(world)) == 1  # just unknown now: nothing reported
    assert plane.reuse_count("deleted") == 1

    # tombstone_ttl=0: no tombstone at all, the secret is unknown at once
    none = TokenService(world.store, world.fmt, clock=world.clock, tombstone_ttl=0)
    gone, gone_secret = await _token(world)
    await none.delete(Actor.system(), gone.id)
    assert not await redis_client.exists(
        world.store.keys_for("acme").tombstone(world.fmt.digest(gone_secret))
    )
    assert (await plane.present(gone_secret))[0] == 401
    await _settle(plane)
    assert await _reuse_events(world, token_id=gone.id) == []


async def test_the_api_app_passes_its_tombstone_ttl(
    world: Api, redis_client: aioredis.Redis
) -> None:
    app = create_api_app(world.store, world.fmt, clock=world.clock, tombstone_ttl=5.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as c:
        token, secret = await _token(world, user="admin")
        headers = {"authorization": "Bearer " + world.secrets["admin"]}
        written_after = time.time()
        response = await c.delete(f"/v1/tokens/{token.id}", headers=headers)
        assert response.status_code == 204, response.text
    stone_key = world.store.keys_for("acme").tombstone(world.fmt.digest(secret))
    await _assert_expiry(redis_client, stone_key, ttl=5.0, written_after=written_after)


# -- the management API and the runtime ------------------------------------------------


async def test_management_api_caller_resolution_trips(world: Api) -> None:
    metrics = Metrics()
    tripwire = Tripwire(world.store, metrics, clock=world.clock)
    authenticator = Authenticator(
        world.store,
        TokenCache(0, 0.0, 0.0),
        world.fmt,
        make_policy(),
        metrics,
        clock=world.clock,
        tripwire=tripwire,
    )
    app = create_api_app(world.store, world.fmt, clock=world.clock, authenticator=authenticator)
    transport = httpx.ASGITransport(app=app, client=(_IP, 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as c:
        alice = {"authorization": "Bearer " + world.secrets["alice"], "user-agent": _UA}
        assert (await c.get("/v1/me", headers=alice)).status_code == 200
        await tripwire.aclose()
        assert await _reuse_events(world) == []
        await world.tokens.revoke(Actor.system(), world.ids["alice"])
        response = await c.get("/v1/me?x=1", headers=alice)
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_token", "detail": "token revoked"}
        assert (await c.get("/v1/tokens", headers=alice)).status_code == 401
        await tripwire.aclose()
        value = metrics.registry.get_sample_value("patgate_token_reuse_total", {"kind": "revoked"})
        assert value == 2

        # the org admin sees it through the API
        admin = {"authorization": "Bearer " + world.secrets["admin"]}
        listed = await c.get(
            "/v1/events", params={"type": "token.reuse_after_revoke"}, headers=admin
        )
        assert listed.status_code == 200, listed.text
        [event] = listed.json()["items"]
        assert event == {
            "id": event["id"],
            "type": "token.reuse_after_revoke",
            "at": world.clock.now,
            "org_id": "acme",
            "actor": {"type": "client", "id": _IP, "token_id": None},
            "ip": _IP,
            "user_agent": _UA,
            "token_id": world.ids["alice"],
            "user_id": "alice",
            "data": {"method": "GET", "path": "/v1/me"},
        }
        # the filter works: no other reuse type matches
        for kind in _REUSE_TYPES:
            if kind != "token.reuse_after_revoke":
                other = await c.get("/v1/events", params={"type": kind}, headers=admin)
                assert other.json()["items"] == []


async def _hello(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def test_runtime_wires_the_tripwire_into_the_served_app(
    settings: Settings, world: Api
) -> None:
    from patgate.policies.engine import parse_policy

    policy = parse_policy(POLICY_TOML, "tripwire-test.toml")
    runtime: Runtime[Settings] = Runtime(settings.evolve(lastused_interval=60), policy=policy)
    assert runtime.authenticator.tripwire is runtime.tripwire
    app = Starlette(
        routes=[Route("/threads/{id}", _hello)],
        middleware=[Middleware(PatgateMiddleware, runtime=runtime)],
    )
    token, secret = await _token(world)
    await world.tokens.revoke(Actor.system(), token.id)
    async with (
        serve(app) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        auth = {"authorization": "Bearer " + secret, "user-agent": _UA}
        for _ in range(3):
            response = await client.get("/threads/9", headers=auth)
            assert response.status_code == 401
            assert "token revoked" in response.headers["www-authenticate"]
    # the shutdown waited for the event in flight
    [event] = await _reuse_events(world)
    assert event["type"] == "token.reuse_after_revoke"
    assert (event["ip"], event["user_agent"]) == ("127.0.0.1", _UA)
    assert event["data"] == {"method": "GET", "path": "/threads/9"}
    assert (event["token_id"], event["user_id"], event["org_id"]) == (token.id, "alice", "acme")
    value = runtime.metrics.registry.get_sample_value(
        "patgate_token_reuse_total", {"kind": "revoked"}
    )
    assert value == 3


# -- more owners and causes ----------------------------------------------------------------


async def test_an_org_token_has_no_user_and_a_disabled_owner_is_not_reuse(
    world: Api, plane: Plane
) -> None:
    service, secret = await world.tokens.create(
        Actor.system(),
        name="ci-bot",
        owner=Owner("org", "acme", "acme"),
        scopes=["threads:read"],
    )
    await world.tokens.revoke(Actor.system(), service.id)
    assert (await plane.present(secret))[0] == 401
    await _settle(plane)
    [event] = await _reuse_events(world)
    assert (event["type"], event["token_id"], event["user_id"]) == (
        "token.reuse_after_revoke",
        service.id,
        None,
    )

    # A suspended owner's token is refused, but it is not a dead secret: no report.
    _, bobs = await _token(world, user="bob")
    await world.directory.put_user(Actor.system(), "bob", {"enabled": False})
    status, info = await plane.present(bobs)
    assert (status, info["error_description"]) == (401, "token owner disabled")
    await _settle(plane)
    assert len(await _reuse_events(world)) == 1
    assert plane.reuse_counts() == {"revoked": 1, "rotated": 0, "expired": 0, "deleted": 0}


async def test_deleting_all_own_tokens_buries_each(world: Api, plane: Plane) -> None:
    made = [await _token(world) for _ in range(3)]
    headers = {"authorization": "Bearer " + world.secrets["alice"]}
    response = await world.client.delete("/v1/tokens", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 4}  # with alice's own management token
    for _, secret in made:
        status, info = await plane.present(secret)
        assert (status, info["error_description"]) == (401, "invalid or unknown token")
    await _settle(plane)
    events = await _reuse_events(world)
    assert sorted(e["token_id"] for e in events) == sorted(t.id for t, _ in made)
    assert {e["type"] for e in events} == {"token.reuse_after_delete"}


async def test_a_failed_event_write_is_counted_and_tried_again(world: Api, keys: Keyspace) -> None:
    from ._servers import free_port

    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    metrics = Metrics()
    tripwire = Tripwire(TokenStore(down, keys), metrics, clock=world.clock)
    try:
        for _ in range(2):
            tripwire.presented(
                "revoked",
                token_id="tok_0000000000000000",
                org_id="acme",
                user_id="alice",
                method="GET",
                path="/x",
                ip=_IP,
                user_agent=_UA,
            )
            await tripwire.aclose()
        errors = metrics.registry.get_sample_value("patgate_redis_errors_total", {"op": "reuse"})
        assert errors == 2  # the second presentation tried again: no minute was taken
        reuse = metrics.registry.get_sample_value("patgate_token_reuse_total", {"kind": "revoked"})
        assert reuse == 2
    finally:
        await down.aclose()
