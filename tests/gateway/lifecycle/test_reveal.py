"""The one-time reveal: a secret leaves patgate in the create/regenerate response only.

Not in any other response, audit event, log record, invalidation message, or any value
stored in Redis (every key of the namespace is dumped and searched).
"""

from __future__ import annotations

import base64
import logging

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from patgate.middleware.store import TokenStore
from tests.gateway.api._world import make_api, snapshot


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    body = secret.split("_", 1)[1].encode()
    return [raw, body, raw.hex().encode(), body.hex().encode(), base64.b64encode(raw)]


def _leaks(blob: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if any(form in blob for form in _forms(s))]


@pytest.mark.anyio
async def test_secrets_are_revealed_once_and_stored_nowhere(
    store: TokenStore,
    redis_client: aioredis.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pubsub = redis_client.pubsub()
    # COMMIT publishes on acme's partition channel, a shard channel (SPUBLISH)
    await pubsub.ssubscribe(store.keys_for("acme").channel)
    revealing: list[httpx.Response] = []
    other: list[httpx.Response] = []
    async with make_api(store) as api:

        async def call(method: str, path: str, who: str = "alice", **kw: object) -> httpx.Response:
            r = await api.call(method, path, who, **kw)
            assert r.status_code < 500, r.text
            (
                revealing
                if method == "POST"
                and (path == "/v1/tokens" or path.endswith("/regenerate"))
                and r.status_code in (200, 201)
                else other
            ).append(r)
            return r

        a = (await call("POST", "/v1/tokens", json={"name": "a", "scopes": ["x:read"]})).json()
        b = (
            await call(
                "POST", "/v1/tokens", "admin", json={"name": "svc", "owner": {"type": "org"}}
            )
        ).json()
        regen = (await call("POST", f"/v1/tokens/{a['id']}/regenerate")).json()
        await call("PATCH", f"/v1/tokens/{a['id']}", json={"description": "d"})
        await call("POST", f"/v1/tokens/{a['id']}/scopes", json={"scopes": ["y:read"]})
        await call("DELETE", f"/v1/tokens/{a['id']}/scopes/y:read")
        await call("GET", f"/v1/tokens/{a['id']}")
        await call("GET", "/v1/tokens")
        await call("GET", "/v1/admin/tokens", "admin")
        await call("GET", "/v1/events", "admin", params={"limit": 200})
        await call("POST", f"/v1/tokens/{a['id']}/revoke")
        await call("POST", f"/v1/tokens/{a['id']}/regenerate")  # revealing again (new secret)
        await call("PUT", "/v1/users/bob", "admin", json={"enabled": False})
        await call("DELETE", "/v1/users/bob", "admin")
        await call("DELETE", f"/v1/tokens/{b['id']}", "admin")
        await call("GET", "/v1/me")
        await call("GET", "/v1/openapi.json")
        secrets = [r.json()["token"] for r in revealing] + list(api.secrets.values())
        assert len(set(secrets)) == len(secrets) == 4 + 3
        assert a["token"] in secrets
        assert regen["token"] in secrets

    messages: list[bytes] = []
    with anyio.move_on_after(0.3):
        while True:
            m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if m is not None:
                assert m["type"] == "smessage"
                messages.append(m["data"])
    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # each revealing response carries its own secret exactly once, and no other secret
    for r in revealing:
        own = r.json()["token"]
        assert r.text.count(own) == 1
        assert _leaks(r.content, [s for s in secrets if s != own]) == []
    for r in other:
        assert _leaks(r.content, secrets) == [], r.request.url
        assert _leaks(str(r.headers).encode(), secrets) == []
    assert messages  # the flow published invalidations
    assert _leaks(b"\n".join(messages), secrets) == []
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r}" for rec in caplog.records)
    assert _leaks(logged.encode(), secrets) == []

    dump = await snapshot(redis_client, namespace)
    assert store.keys_for("acme").events.encode() in dump
    assert store.keys_for("acme").index.encode() in dump
    flat = repr(dump).encode()
    assert _leaks(flat, secrets) == []
    # what is stored instead: the digests, as the index's keys
    index = dict(dump[store.keys_for("acme").index.encode()])
    assert api.fmt.digest(regen["token"]) not in index  # regenerated away
    assert all(len(k) == 32 for k in index)
