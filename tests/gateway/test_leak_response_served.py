"""Issue 12's leak response as ``patgate serve --role api`` wires it: the admin listener
from :func:`gateway.server.build_listeners` over a real :class:`Runtime` and the
session's Valkey, served by uvicorn on 127.0.0.1 (a trusted proxy by default, so
``X-Forwarded-For`` names the client).

The settings reach the app — ``credential_report_limit``/``_window`` (the reports' rate
limit) and ``tombstone_ttl`` — and the management API resolves callers through the
runtime's authenticator, so a dead management token presented to it trips the runtime's
tripwire: the event is written, ``/metrics`` counts it, and the org admin reads it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService, bootstrap
from patgate.gateway.server import build_listeners
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve

pytestmark = pytest.mark.anyio

_OWN = ["tokens:read:own", "tokens:write:own"]
_CLIENT = "198.51.100.40"


async def test_reports_and_the_tripwire_through_the_served_api(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    configured = settings.evolve(
        lastused_interval=60,
        credential_report_limit=2,
        credential_report_window=60.0,
        tombstone_ttl=120.0,
    )
    runtime: Runtime[Settings] = Runtime(configured)
    ((app, _),) = build_listeners(configured, "api", runtime)
    try:
        tokens = TokenService(runtime.store, runtime.token_format)
        directory = Directory(runtime.store)
        system = Actor.system()
        _, admin_secret = await bootstrap(tokens, directory, org_id="acme")
        await directory.put_user(
            system, "alice", {"org_id": "acme", "email": "alice@acme.io", "name": "Alice"}
        )
        leaked, leaked_secret = await tokens.create(
            system, name="leaked", owner=Owner("user", "alice", org_id="acme"), scopes=_OWN
        )
        doomed, doomed_secret = await tokens.create(
            system, name="doomed", owner=Owner("user", "admin", org_id="acme"), scopes=_OWN
        )
    except BaseException:
        await runtime.aclose()  # the server's lifespan never ran to close it
        raise

    admin = {"authorization": "Bearer " + admin_secret}
    seen = {"x-forwarded-for": _CLIENT, "user-agent": "found-it-on-a-paste-site/1"}
    async with (
        serve(app) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):

        async def report(secrets: list[str]) -> httpx.Response:
            return await client.post(
                "/v1/credentials/revoke", json={"credentials": secrets}, headers=seen
            )

        leaked_auth = {"authorization": "Bearer " + leaked_secret}
        assert (await client.get("/v1/me", headers=leaked_auth)).status_code == 200
        first = await report([leaked_secret])
        second = await report([runtime.token_format.generate()])
        assert (first.status_code, first.json()) == (202, {"status": "accepted"})
        assert (second.status_code, second.content) == (first.status_code, first.content)
        limited = await report([doomed_secret])
        assert limited.status_code == 429  # credential_report_limit = 2
        assert limited.json()["error"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60

        # The leaked management token, presented again to the management API.
        presented = {"authorization": "Bearer " + leaked_secret, **seen}
        refused = await client.get("/v1/me", headers=presented)
        assert refused.status_code == 401
        assert refused.json() == {"error": "invalid_token", "detail": "token revoked"}

        # The tombstone TTL comes from the settings.
        deleted = await client.delete(f"/v1/tokens/{doomed.id}", headers=admin)
        assert deleted.status_code == 204, deleted.text
        stone = runtime.store.keys_for("acme").tombstone(runtime.token_format.digest(doomed_secret))
        assert 110_000 < await redis_client.pttl(stone) <= 120_000
        gone = await client.get("/v1/me", headers={"authorization": "Bearer " + doomed_secret})
        assert gone.status_code == 401
        assert gone.json()["detail"] == "invalid or unknown token"

        await runtime.tripwire.aclose()  # the background writes
        metrics = (await client.get("/metrics")).text
        assert 'patgate_token_reuse_total{kind="revoked"} 1.0' in metrics
        assert 'patgate_token_reuse_total{kind="deleted"} 1.0' in metrics

        async def events(kind: str) -> list[dict[str, Any]]:
            listed = await client.get("/v1/events", params={"type": kind}, headers=admin)
            assert listed.status_code == 200, listed.text
            items: list[dict[str, Any]] = listed.json()["items"]
            return items

        [revoked] = await events("token.revoked")
        assert revoked["token_id"] == leaked.id
        assert revoked["actor"] == {"type": "system", "id": "credential-report", "token_id": None}
        assert (revoked["ip"], revoked["user_agent"]) == (_CLIENT, seen["user-agent"])
        assert revoked["data"] == {"reason": "reported_leaked"}

        [reuse] = await events("token.reuse_after_revoke")
        assert {k: reuse[k] for k in ("token_id", "user_id", "org_id", "ip", "user_agent")} == {
            "token_id": leaked.id,
            "user_id": "alice",
            "org_id": "acme",
            "ip": _CLIENT,
            "user_agent": seen["user-agent"],
        }
        assert reuse["data"] == {"method": "GET", "path": "/v1/me"}
        assert reuse["actor"] == {"type": "client", "id": _CLIENT, "token_id": None}

        [after_delete] = await events("token.reuse_after_delete")
        assert (after_delete["token_id"], after_delete["user_id"]) == (doomed.id, "admin")
        assert after_delete["ip"] == "127.0.0.1"  # no X-Forwarded-For on that request
        # no secret in any event
        dump = json.dumps([*await events("token.reuse_after_revoke"), revoked])
        assert leaked_secret not in dump
        assert admin_secret not in dump
