"""The failed-authentication limit is shared by two real gateway processes (issue 12).

Two ``uvicorn`` processes running the gateway app (tests/gateway/
test_revocation_two_processes.py starts them) share the session Valkey and namespace,
each with its own connections, invalidation subscriber and limiter. Both trust
127.0.0.1 as a proxy, so the attacker's requests carry ``X-Forwarded-For: 203.0.113.7``
and the bystander's none (its client is 127.0.0.1). Failures split between the processes
below the limit in each add up in the store, and the block the second process's flush
reaches is answered by the first one within a short time; it ends with the window.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests.gateway._drills import unknown_secret
from tests.gateway.test_revocation_two_processes import _gateway_process
from tests.middleware._servers import ok_upstream, serve
from tests.middleware._tokens import add_user, issue

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_ROOT = Path(__file__).resolve().parents[2]
LIMIT = 10
WINDOW = 3
ATTACKER = {"X-Forwarded-For": "203.0.113.7"}
#: the time a block may take to reach the other process (flush interval + pub/sub).
REACH = 1.0


async def _status(client: httpx.AsyncClient, secret: str, headers: dict[str, str]) -> int:
    response = await client.get(
        "/anything", headers={**headers, "Authorization": f"Bearer {secret}"}
    )
    return response.status_code


async def test_failures_on_two_processes_add_up_and_the_block_reaches_both(
    valkey_url: str, namespace: str, store: TokenStore
) -> None:
    await add_user(store, "u1")
    token = await issue(store, TokenFormat(), scopes=("*",))
    async with serve(ok_upstream, lifespan="off") as upstream_port:
        env = {
            **os.environ,
            "PATGATE_REDIS_URL": valkey_url,
            "PATGATE_NAMESPACE": namespace,
            "PATGATE_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
            "PATGATE_LASTUSED_INTERVAL": "60",
            "PATGATE_AUTH_FAILURE_LIMIT": str(LIMIT),
            "PATGATE_AUTH_FAILURE_WINDOW": str(WINDOW),
            "PATGATE_TRUSTED_PROXIES": "127.0.0.1",
            "PYTHONPATH": str(_ROOT),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        async with _gateway_process(env) as first, _gateway_process(env) as other:
            for gw in (first, other):
                assert await _status(gw, token.secret, ATTACKER) == 200
                assert await _status(gw, token.secret, {}) == 200

            # Half the limit on each, minus one on the first: neither blocks on its own.
            began = time.time()
            half = LIMIT // 2
            assert [await _status(first, unknown_secret(), ATTACKER)
                    for _ in range(half - 1)] == [401] * (half - 1)  # fmt: skip
            assert await _status(first, token.secret, ATTACKER) == 200
            assert [await _status(other, unknown_secret(), ATTACKER)
                    for _ in range(half)] == [401] * half  # fmt: skip
            await asyncio.sleep(0.3)  # both flushed: LIMIT - 1 in the store, below it
            for gw in (first, other):
                assert await _status(gw, token.secret, ATTACKER) == 200

            # The LIMIT-th failure, on the other process: its flush crosses the limit in
            # the store, and the block reaches the first process too.
            assert await _status(other, unknown_secret(), ATTACKER) == 401
            crossed = time.monotonic()
            while await _status(first, token.secret, ATTACKER) != 429:
                assert time.monotonic() - crossed < REACH, "block did not reach the process"
                await asyncio.sleep(0.01)
            reached = time.monotonic() - crossed
            auth = {**ATTACKER, "Authorization": f"Bearer {token.secret}"}
            refused = await first.get("/anything", headers=auth)
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= WINDOW
            assert refused.json()["error"] == "rate_limited"
            assert await _status(other, token.secret, ATTACKER) == 429
            # The bystander (127.0.0.1 itself, no forwarded address) is served by both.
            for gw in (first, other):
                assert await _status(gw, token.secret, {}) == 200
                assert await _status(gw, token.secret, {"X-Forwarded-For": "203.0.113.8"}) == 200

            # Both let the client in again once its window has passed.
            deadline = began + WINDOW + 3
            for gw in (first, other):
                while await _status(gw, token.secret, ATTACKER) != 200:
                    assert time.time() < deadline, "block outlived its window"
                    await asyncio.sleep(0.05)
            assert time.time() - began >= WINDOW - 0.2
    print(f"\nblock reached the other process in {reached * 1000:.1f} ms")
