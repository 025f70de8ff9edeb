"""The management API records its caller token's last use like the data plane (issue 13):
method, path (no query string), client IP through trusted proxies, user agent; coalesced
per secret in the runtime's :class:`LastUsedRecorder`, written by its flush, never awaited
by the request.

Real components throughout: the session's Valkey, the runtime as ``patgate serve`` builds
the admin listener (:func:`gateway.server.build_listeners`), and a recorder whose store is
a Redis that is not running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService, bootstrap
from patgate.gateway.server import build_listeners
from patgate.gateway.settings import Settings
from patgate.middleware.auth import Authenticator
from patgate.middleware.cache import TokenCache
from patgate.middleware.keys import Keyspace
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import LastUsed
from patgate.middleware.runtime import Runtime
from patgate.middleware.store import TokenStore
from patgate.middleware.trust import TrustedProxies
from patgate.policies.engine import default_policy
from tests.gateway._clock import T0
from tests.gateway.api._world import OWN, Api
from tests.middleware._servers import free_port

pytestmark = pytest.mark.anyio

UA = {"user-agent": "deploy-bot/2.1"}
#: the ASGI transport's peer is 127.0.0.1, a trusted proxy by default.
VIA_PROXY = {**UA, "x-forwarded-for": "203.0.113.9"}


async def test_a_management_call_is_the_tokens_last_use_in_patgate_serve(
    settings: Settings,
) -> None:
    """The admin listener exactly as ``patgate serve`` builds it records into the runtime's
    recorder; the flush writes it; the token then shows it."""
    runtime = Runtime(settings.evolve(lastused_interval=60))
    try:
        ((app, _),) = build_listeners(settings, "api", runtime)
        tokens = TokenService(runtime.store, runtime.token_format)
        directory = Directory(runtime.store)
        await bootstrap(tokens, directory, org_id="acme")
        system = Actor.system()
        await directory.put_user(system, "alice", {"org_id": "acme", "email": "alice@acme.io"})
        mgmt, secret = await tokens.create(
            system, name="mgmt", owner=Owner("user", "alice", org_id="acme"), scopes=OWN
        )
        auth = {"authorization": "Bearer " + secret}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as c:
            r = await c.get("/v1/tokens?status=active&q=mg", headers={**auth, **VIA_PROXY})
            assert r.status_code == 200, r.text
            assert len(runtime.recorder) == 1  # in memory: the request wrote nothing
            stored = await runtime.store.get_token(mgmt.id, "acme")
            assert stored is not None
            assert stored.last_used is None
            assert await runtime.recorder.flush() == 1
            r = await c.get(f"/v1/tokens/{mgmt.id}", headers=auth)
            assert r.status_code == 200, r.text
        used = r.json()["last_used"]
        assert used.pop("at") == pytest.approx(mgmt.created_at, abs=60)
        assert used == {
            "method": "GET",
            "path": "/v1/tokens",
            "ip": "203.0.113.9",
            "user_agent": "deploy-bot/2.1",
        }
    finally:
        await runtime.aclose()


def _recording_app(api: Api, recorder: LastUsedRecorder, metrics: Metrics) -> httpx.AsyncClient:
    """The world's API again, on an authenticator with ``recorder`` (as the runtime's has)
    and the runtime's way of finding the client address."""
    auth = Authenticator(
        api.store,
        TokenCache(0, 0.0, 0.0),
        api.fmt,
        default_policy(),
        metrics,
        recorder,
        clock=api.clock,
    )
    trusted = TrustedProxies(["127.0.0.1"])
    app = create_api_app(
        api.store,
        api.fmt,
        clock=api.clock,
        authenticator=auth,
        client_ip=lambda request: trusted.client_ip(request.scope),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p.test")


@pytest.fixture
async def recording(api: Api) -> AsyncIterator[tuple[httpx.AsyncClient, LastUsedRecorder]]:
    metrics = Metrics()
    recorder = LastUsedRecorder(api.store, metrics)
    async with _recording_app(api, recorder, metrics) as client:
        yield client, recorder


def _as(api: Api, who: str, **extra: str) -> dict[str, str]:
    return {"authorization": "Bearer " + api.secrets[who], **extra}


async def test_uses_are_coalesced_per_token(
    api: Api, recording: tuple[httpx.AsyncClient, LastUsedRecorder]
) -> None:
    client, recorder = recording
    for _ in range(5):  # five calls in the same second: one entry, the first
        assert (await client.get("/v1/me", headers=_as(api, "alice", **UA))).status_code == 200
    r = await client.get("/v1/tokens", headers=_as(api, "bob", **UA))
    assert r.status_code == 200
    assert len(recorder) == 2  # one per token, whatever the request count
    api.clock.now += 2  # past the recorder's 1 s resolution: the newer use replaces it
    r = await client.patch(
        f"/v1/tokens/{api.ids['alice']}?x=1",
        headers=_as(api, "alice", **VIA_PROXY),
        json={"description": "edited"},
    )
    assert r.status_code == 200, r.text
    assert len(recorder) == 2
    assert await recorder.flush() == 2
    alice = await api.store.get_token(api.ids["alice"], "acme")
    bob = await api.store.get_token(api.ids["bob"], "acme")
    assert alice is not None
    assert bob is not None
    assert alice.last_used == LastUsed(
        T0 + 2, "PATCH", f"/v1/tokens/{api.ids['alice']}", "203.0.113.9", "deploy-bot/2.1"
    )
    assert bob.last_used == LastUsed(T0, "GET", "/v1/tokens", "127.0.0.1", "deploy-bot/2.1")


async def test_a_previous_secret_in_its_grace_period_records_its_own_use(
    api: Api, recording: tuple[httpx.AsyncClient, LastUsedRecorder]
) -> None:
    client, recorder = recording
    old = api.secrets["alice"]
    r = await client.post(
        f"/v1/tokens/{api.ids['alice']}/regenerate",
        headers=_as(api, "alice", **UA),
        json={"grace_period": 3600},
    )
    assert r.status_code == 200, r.text
    new = r.json()["token"]
    api.clock.now += 5
    r = await client.get("/v1/tokens", headers={"authorization": "Bearer " + old, **UA})
    assert r.status_code == 200  # the old secret still works, and is recorded apart
    api.clock.now += 5
    r = await client.get("/v1/me", headers={"authorization": "Bearer " + new, **UA})
    assert r.status_code == 200
    await recorder.flush()
    token = await api.store.get_token(api.ids["alice"], "acme")
    assert token is not None
    assert token.previous_last_used == LastUsed(
        T0 + 5, "GET", "/v1/tokens", "127.0.0.1", "deploy-bot/2.1"
    )
    assert token.last_used == LastUsed(T0 + 10, "GET", "/v1/me", "127.0.0.1", "deploy-bot/2.1")
    shown = (await client.get(f"/v1/tokens/{token.id}", headers=_as(api, "admin"))).json()
    assert shown["previous_secret"]["last_used"]["path"] == "/v1/tokens"
    assert shown["last_used"]["path"] == "/v1/me"


async def test_refused_callers_record_nothing(
    api: Api, recording: tuple[httpx.AsyncClient, LastUsedRecorder]
) -> None:
    client, recorder = recording
    await api.tokens.revoke(Actor.system(), api.ids["bob"])
    for headers in (
        _as(api, "bob"),  # revoked
        {"authorization": "Bearer " + api.fmt.generate()},  # unknown
        {},  # no credentials
    ):
        assert (await client.get("/v1/tokens", headers=headers)).status_code == 401
    assert len(recorder) == 0


async def test_recording_never_waits_for_the_store(api: Api) -> None:
    """The recorder's store is a Redis nobody runs: every management call still answers
    at once (recording is a dict assignment), and only the flush finds the store down —
    it drops and counts the batch, as the data plane's does."""
    metrics = Metrics()
    dead = aioredis.from_url(
        f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    recorder = LastUsedRecorder(TokenStore(dead, Keyspace("nowhere")), metrics)
    try:
        async with _recording_app(api, recorder, metrics) as client:
            for who in ("alice", "bob", "admin"):
                r = await client.get("/v1/tokens", headers=_as(api, who))
                assert r.status_code == 200, r.text
            assert len(recorder) == 3
            assert await recorder.flush() == 0
        assert len(recorder) == 0
        dropped = metrics.registry.get_sample_value("patgate_lastused_dropped_total")
        assert dropped == 3
    finally:
        await dead.aclose()


async def test_without_a_recorder_nothing_is_recorded(api: Api) -> None:
    """``create_api_app`` without the runtime's authenticator (the world's ``api``) runs
    on an uncached one with no recorder: calls answer, and no last use is ever written."""
    assert Authenticator.uncached(api.store, api.fmt).recorder is None
    for _ in range(3):
        assert (await api.call("GET", "/v1/tokens", "alice")).status_code == 200
    token = await api.store.get_token(api.ids["alice"], "acme")
    assert token is not None
    assert token.last_used is None
