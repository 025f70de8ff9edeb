"""The reuse tripwire's "one event per token and minute" holds across *processes*: two
gateway processes (uvicorn subprocesses running ``create_gateway_app``, each with its own
Runtime, Tripwire and local table) share the session Valkey and namespace, and a revoked
secret presented to both writes one ``token.reuse_after_revoke`` event — the store's
``SET NX`` decides, not either process's memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from patgate.gateway.lifecycle import EventQuery, query_events
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests.gateway.test_revocation_two_processes import _gateway_process, gateway_env
from tests.middleware._servers import ok_upstream, serve
from tests.middleware._tokens import add_user, issue, revoke

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _reuse(store: TokenStore, token_id: str) -> list[dict[str, Any]]:
    query = EventQuery(org_id="o1", type="token.reuse_after_revoke", token_id=token_id)
    return (await query_events(store, query))[0]


async def _wait_for_one(store: TokenStore, token_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5.0
    while True:  # written by the process's background task
        events = await _reuse(store, token_id)
        if events or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.02)


async def test_one_reuse_event_across_two_gateway_processes(
    valkey_url: str, namespace: str, store: TokenStore
) -> None:
    fmt = TokenFormat()
    await add_user(store, "u1")
    async with serve(ok_upstream, lifespan="off") as upstream_port:
        env = gateway_env(valkey_url, namespace, upstream_port)
        async with _gateway_process(env) as first, _gateway_process(env) as other:
            token = await revoke(store, await issue(store, fmt, scopes=("*",)))
            auth = {"Authorization": f"Bearer {token.secret}", "User-Agent": "reuser/1"}
            assert (await first.get("/a?q=1", headers=auth)).status_code == 401
            [event] = await _wait_for_one(store, token.token.id)
            assert (event["data"], event["user_agent"]) == (
                {"method": "GET", "path": "/a"},
                "reuser/1",
            )
            # The other process has never seen this token: its own table would let it
            # write, the store's key does not.
            for gateway in (other, first, other):
                assert (await gateway.get("/b", headers=auth)).status_code == 401
            await asyncio.sleep(0.3)
            assert len(await _reuse(store, token.token.id)) == 1

            # The other process writes events too: a second token, presented there first.
            second = await revoke(store, await issue(store, fmt, scopes=("*",)))
            header = {"Authorization": f"Bearer {second.secret}"}
            results = await asyncio.gather(
                *(gw.get("/c", headers=header) for gw in (other, first) * 4)
            )
            assert {r.status_code for r in results} == {401}
            [event] = await _wait_for_one(store, second.token.id)
            assert event["data"] == {"method": "GET", "path": "/c"}
            await asyncio.sleep(0.3)
            assert len(await _reuse(store, second.token.id)) == 1
