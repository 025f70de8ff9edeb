"""The failed-authentication limit (issue 12), with real components only.

Real :class:`Runtime` objects (their own Redis connections, invalidation subscriber and
limiter flush task) against the session Valkey, requests through
:class:`PatgateMiddleware` over httpx's ASGI transport — which lets each request carry
its own peer address, so attackers and bystanders are told apart exactly as uvicorn's
``scope["client"]`` would. The cross-process case with real ``uvicorn`` processes is in
tests/gateway/test_limits_two_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.limits import FailureLimiter, client_key, counter_partition
from patgate.middleware.metrics import Metrics
from patgate.middleware.runtime import Runtime
from patgate.middleware.store import TokenStore
from tests.gateway._drills import unknown_secret

from ._servers import ok_upstream
from ._tokens import Issued, add_user, issue, make_policy

pytestmark = pytest.mark.anyio

LIMIT = 5
WINDOW = 1.5
#: generous bound for anything that travels through the store (flush + pub/sub).
SHARED_WITHIN = 2.0

ATTACKER = "198.51.100.7"
BYSTANDER = "192.0.2.44"


# -- helpers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started(settings: Settings, **changes: Any) -> AsyncIterator[Runtime[Any]]:
    """A started Runtime with the failure limit set small (``changes`` override)."""
    values: dict[str, Any] = {
        "lastused_interval": 60,
        "auth_failure_limit": LIMIT,
        "auth_failure_window": WINDOW,
        **changes,
    }
    runtime = Runtime(settings.evolve(**values), policy=make_policy())
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


class Client:
    """Requests into one runtime's middleware from one peer address."""

    def __init__(self, runtime: Runtime[Any], peer: str) -> None:
        app = PatgateMiddleware(ok_upstream, runtime=runtime)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(peer, 50000)),
            base_url="http://patgate.test",
        )

    async def get(
        self, secret: str | None, *, path: str = "/threads/1", xff: str | None = None
    ) -> httpx.Response:
        headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
        if xff is not None:
            headers["X-Forwarded-For"] = xff
        return await self.http.get(path, headers=headers)

    async def status(self, secret: str | None, **kw: Any) -> int:
        return (await self.get(secret, **kw)).status_code

    async def aclose(self) -> None:
        await self.http.aclose()


@contextlib.asynccontextmanager
async def clients(runtime: Runtime[Any], *peers: str) -> AsyncIterator[list[Client]]:
    made = [Client(runtime, p) for p in peers]
    try:
        yield made
    finally:
        for c in made:
            await c.aclose()


async def valid_token(runtime: Runtime[Any]) -> Issued:
    await add_user(runtime.store, "u1")
    return await issue(runtime.store, runtime.token_format, scopes=("threads:read",))


def sample(runtime: Runtime[Any], name: str, labels: dict[str, str] | None = None) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def fail(client: Client, n: int, **kw: Any) -> list[int]:
    """``n`` requests with well-formed secrets that were never issued; their statuses."""
    return [await client.status(unknown_secret(), **kw) for _ in range(n)]


async def eventually(check: Callable[[], Any], within: float = SHARED_WITHIN) -> float:
    """Poll the async ``check`` until truthy; seconds it took. Fails after ``within``."""
    started_at = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started_at
        if time.monotonic() - started_at > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.02)


async def stored_count(store: TokenStore, client: str) -> int | None:
    key = store.keyspace.partition(_partition(client)).failures(client_key(client) or "")
    raw = await store.client.get(key)
    return None if raw is None else int(raw)


def _partition(client: str) -> int:
    return counter_partition(client_key(client) or "")


# -- the limit -------------------------------------------------------------------------


async def test_limit_then_429_with_retry_after_until_the_window_passes(
    settings: Settings, store: TokenStore
) -> None:
    async with started(settings) as runtime, clients(runtime, ATTACKER) as (attacker,):
        token = await valid_token(runtime)
        assert await attacker.status(token.secret) == 200

        # LIMIT failures are answered 401 each (the LIMIT-th one blocks the client after).
        first_failure = time.time()
        assert await fail(attacker, LIMIT) == [401] * LIMIT
        blocked_at = time.monotonic()

        response = await attacker.get(unknown_secret())
        assert response.status_code == 429
        retry = int(response.headers["retry-after"])
        assert 1 <= retry <= 2  # ceil of what is left of the 1.5 s window
        assert response.json()["error"] == "rate_limited"
        assert "www-authenticate" not in response.headers  # not a credentials problem
        # A valid token from the blocked client is refused too, and a public route.
        valid = await attacker.get(token.secret)
        assert valid.status_code == 429
        assert "retry-after" in valid.headers
        assert await attacker.status(None, path="/public") == 429
        assert await attacker.status(None) == 429
        refused = {"outcome": "deny", "reason": "rate_limited"}
        assert sample(runtime, "patgate_decisions_total", refused) >= 4
        assert sample(runtime, "patgate_client_blocks_total") == 1
        assert sample(runtime, "patgate_blocked_clients") == 1
        # Only presented bad tokens count: the refused requests above are not failures.
        assert sample(runtime, "patgate_auth_failures_total") == LIMIT
        # The counter reached the store, with the window as its TTL.
        await eventually(lambda: _is(stored_count(store, ATTACKER), LIMIT))
        ttl = await store.client.pttl(
            store.keyspace.partition(_partition(ATTACKER)).failures(ATTACKER)
        )
        assert 0 < ttl <= WINDOW * 1000

        # Still refused until the window passes; then the valid token works again.
        async def served() -> bool:
            return await attacker.status(token.secret) == 200

        await eventually(served, within=WINDOW + 2)
        # The block lasts the window from the first failure: not less, not much more.
        assert WINDOW - 0.2 <= time.time() - first_failure <= WINDOW + 1.0
        assert time.monotonic() - blocked_at <= WINDOW + 1.0
        # A fresh window: failures below the limit do not block.
        assert await fail(attacker, LIMIT - 1) == [401] * (LIMIT - 1)
        assert await attacker.status(token.secret) == 200


async def _is(awaitable: Any, expected: Any) -> bool:
    return bool(await awaitable == expected)


async def _answers(client: Client, secret: str, status: int) -> bool:
    return await client.status(secret) == status


async def test_requests_without_credentials_are_not_counted(
    settings: Settings, store: TokenStore
) -> None:
    async with started(settings) as runtime, clients(runtime, ATTACKER) as (client,):
        token = await valid_token(runtime)
        for _ in range(LIMIT * 4):
            missing = await client.get(None)
            assert missing.status_code == 401
            assert missing.json()["error"] == "missing_credentials"
            assert await client.status(None, path="/public") == 200
        assert await client.status(token.secret) == 200
        assert sample(runtime, "patgate_auth_failures_total") == 0
        assert not runtime.limiter.blocking
        await runtime.limiter.flush()
        assert await stored_count(store, ATTACKER) is None
        # A malformed bearer value is a presented token, and counts.
        assert [await client.status("not-a-patgate-token") for _ in range(LIMIT)] == [401] * LIMIT
        assert await client.status(token.secret) == 429


async def test_other_clients_are_unaffected_while_one_is_blocked(settings: Settings) -> None:
    async with (
        started(settings) as runtime,
        clients(runtime, ATTACKER, BYSTANDER, "192.0.2.45") as (attacker, bystander, third),
    ):
        token = await valid_token(runtime)
        await fail(attacker, LIMIT)
        assert await attacker.status(token.secret) == 429
        # Same valid token, another address: served; bad tokens elsewhere: 401, not 429.
        assert [await bystander.status(token.secret) for _ in range(20)] == [200] * 20
        assert await fail(third, LIMIT - 1) == [401] * (LIMIT - 1)
        assert await third.status(token.secret) == 200
        assert runtime.limiter.retry_after(BYSTANDER) is None
        assert runtime.limiter.retry_after(ATTACKER) in (1, 2)


async def test_an_expired_block_leaves_even_if_its_client_never_returns(
    settings: Settings,
) -> None:
    async with (
        started(settings) as runtime,
        clients(runtime, ATTACKER, BYSTANDER) as (attacker, bystander),
    ):
        token = await valid_token(runtime)
        await fail(attacker, LIMIT)
        assert runtime.limiter.blocking
        assert sample(runtime, "patgate_blocked_clients") == 1
        await asyncio.sleep(WINDOW + 0.1)
        # Only the bystander sends: its pre-check drops the expired block, so the table
        # empties (no more pre-checks) and the gauge says no client is blocked.
        assert await bystander.status(token.secret) == 200
        assert not runtime.limiter.blocking
        assert sample(runtime, "patgate_blocked_clients") == 0
        assert await attacker.status(token.secret) == 200


async def test_ipv6_clients_are_counted_per_64(settings: Settings) -> None:
    same_64 = [f"2001:db8:1:2:{i:x}::{i + 1:x}" for i in range(LIMIT + 1)]
    other_64 = "2001:db8:1:3::1"
    assert {client_key(a) for a in same_64} == {"2001:db8:1:2::/64"}
    async with started(settings) as runtime:
        token = await valid_token(runtime)
        peers = [Client(runtime, a) for a in same_64]
        other = Client(runtime, other_64)
        try:
            # One failure from each of LIMIT addresses of one /64: that /64 is blocked.
            for peer in peers[:LIMIT]:
                assert await peer.status(unknown_secret()) == 401
            assert await peers[LIMIT].status(token.secret) == 429  # a sixth, fresh address
            assert await peers[0].status(token.secret) == 429
            # The neighbouring /64 is another client.
            assert await other.status(token.secret) == 200
            assert await fail(other, LIMIT - 1) == [401] * (LIMIT - 1)
            assert await other.status(token.secret) == 200
        finally:
            for c in (*peers, other):
                await c.aclose()


async def test_v4_mapped_addresses_count_as_their_ipv4(settings: Settings) -> None:
    v4 = "198.51.100.20"
    mapped = "::ffff:" + v4
    assert client_key(mapped) == v4
    async with started(settings) as runtime, clients(runtime, v4, mapped) as (plain, via6):
        token = await valid_token(runtime)
        assert await fail(via6, LIMIT - 2) == [401] * (LIMIT - 2)
        assert await fail(plain, 2) == [401, 401]
        assert await plain.status(token.secret) == 429
        assert await via6.status(token.secret) == 429


async def test_trusted_proxy_forwarded_clients_are_counted_each(settings: Settings) -> None:
    proxy, untrusted = "10.0.0.5", "192.0.2.99"
    async with (
        started(settings, trusted_proxies=(proxy,)) as runtime,
        clients(runtime, proxy, untrusted) as (via_proxy, direct),
    ):
        token = await valid_token(runtime)
        # Behind the trusted proxy: counted per forwarded client.
        assert await fail(via_proxy, LIMIT, xff="203.0.113.7") == [401] * LIMIT
        assert await via_proxy.status(token.secret, xff="203.0.113.7") == 429
        assert await via_proxy.status(token.secret, xff="203.0.113.8") == 200
        assert await via_proxy.status(token.secret, xff="198.18.0.1, 203.0.113.8") == 200
        # The client is the first untrusted hop from the right: a spoofed left entry
        # does not get the blocked address out of its block.
        assert await via_proxy.status(token.secret, xff="198.18.0.1, 203.0.113.7") == 429
        assert runtime.limiter.retry_after(proxy) is None
        # An untrusted peer's X-Forwarded-For is ignored: rotating it does not help.
        statuses = [
            await direct.status(unknown_secret(), xff=f"203.0.113.{100 + i}") for i in range(LIMIT)
        ]
        assert statuses == [401] * LIMIT
        assert await direct.status(token.secret, xff="203.0.113.200") == 429
        assert runtime.limiter.retry_after(untrusted) is not None


async def test_limit_zero_disables(settings: Settings, store: TokenStore) -> None:
    async with (
        started(settings, auth_failure_limit=0) as runtime,
        clients(runtime, ATTACKER) as (attacker,),
    ):
        assert runtime.authenticator.limiter is None
        assert not runtime.limiter.enabled
        token = await valid_token(runtime)
        assert await fail(attacker, LIMIT * 6) == [401] * (LIMIT * 6)
        assert await attacker.status(token.secret) == 200
        runtime.limiter.failed(ATTACKER)  # even called directly it counts nothing
        assert len(runtime.limiter) == 0
        await runtime.limiter.flush()
        assert await stored_count(store, ATTACKER) is None
        assert sample(runtime, "patgate_auth_failures_total") == 0


# -- shared between processes through the store ----------------------------------------


async def test_failures_split_between_runtimes_add_up_and_the_block_reaches_all(
    settings: Settings, store: TokenStore
) -> None:
    async with (
        started(settings) as one,
        started(settings) as two,
        started(settings) as three,
        clients(one, ATTACKER, BYSTANDER) as (a1, b1),
        clients(two, ATTACKER) as (a2,),
        clients(three, ATTACKER, BYSTANDER) as (a3, b3),
    ):
        token = await valid_token(one)
        for c in (a1, a2, a3):
            assert await c.status(token.secret) == 200
        # Below the limit in each process: 3 + 2, neither blocks on its own count.
        assert await fail(a1, 3) == [401] * 3
        await eventually(lambda: _is(stored_count(store, ATTACKER), 3))
        assert not one.limiter.blocking
        assert await fail(a2, 2) == [401, 401]
        crossed = time.monotonic()
        # The second flush makes it 5 in the store: the script publishes the block, and
        # every process — the third never saw a failure — refuses the client.
        for c in (a1, a2, a3):
            await eventually(functools.partial(_answers, c, token.secret, 429))
        reached = time.monotonic() - crossed
        assert reached < SHARED_WITHIN
        assert await stored_count(store, ATTACKER) == LIMIT
        assert sample(three, "patgate_auth_failures_total") == 0
        assert sample(three, "patgate_client_blocks_total") == 1
        # Everyone else is served by every process.
        assert await b1.status(token.secret) == 200
        assert await b3.status(token.secret) == 200
        # And the block ends with the window everywhere.
        for c in (a1, a2, a3):
            await eventually(functools.partial(_answers, c, token.secret, 200), within=WINDOW + 2)


async def test_a_successful_request_never_calls_redis_for_the_limit(
    settings: Settings, store: TokenStore
) -> None:
    watched = ("evalsha", "eval", "incrby", "pexpire", "pttl", "get", "hget")

    async def calls() -> dict[str, int]:
        stats = await store.client.info("commandstats")
        return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in watched}

    async with (
        started(settings) as runtime,
        clients(runtime, ATTACKER, BYSTANDER, "192.0.2.50") as (attacker, good, control),
    ):
        token = await valid_token(runtime)
        assert await good.status(token.secret) == 200  # warm the cache (one lookup)
        # Block one client, so the pre-check is live for every request that follows.
        await fail(attacker, LIMIT)
        await eventually(lambda: _is(stored_count(store, ATTACKER), LIMIT))
        assert runtime.limiter.blocking
        await asyncio.sleep(0.3)  # any flush in flight is done

        before = await calls()
        statuses = [await good.status(token.secret) for _ in range(200)]
        await asyncio.sleep(0.3)  # longer than a flush interval: nothing was pending
        after = await calls()
        assert statuses == [200] * 200
        assert sample(runtime, "patgate_cache_hits_total") >= 200
        assert after == before, {k: after[k] - before[k] for k in watched}

        # Control: the measurement does see the COUNT script when there is a failure.
        assert await control.status(unknown_secret()) == 401
        await eventually(lambda: _is(stored_count(store, "192.0.2.50"), 1))
        seen = await calls()
        assert seen["incrby"] > after["incrby"]
        assert seen["evalsha"] + seen["eval"] >= after["evalsha"] + after["eval"] + 2


# -- memory ----------------------------------------------------------------------------


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


async def test_memory_is_bounded_under_a_million_attacking_addresses(store: TokenStore) -> None:
    """1,000,000 distinct addresses fail once each, with a flush to the real store every
    250,000; then 1,000,000 distinct clients are blocked (as by other processes' ``b``
    messages). Every table stays at ``max_clients``, the process does not grow with the
    attack, and evicting the oldest entry of a full table stays cheap."""
    n = 1_000_000
    gc.collect()
    rss_before = _rss()

    # Failures: a small table (a flush of 100k counters costs seconds of redis-py
    # packing; the bound works the same at any size).
    metrics = Metrics()
    bound = 10_000
    limiter = FailureLimiter(store, metrics, limit=2, window=2.0, max_clients=bound)
    peak = 0
    for i in range(n):
        limiter.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        if i % 250_000 == 249_999:
            peak = max(peak, len(limiter._pending), len(limiter._shared))
            await limiter.flush()
    assert peak <= bound
    assert len(limiter._pending) == 0
    assert len(limiter._shared) == bound  # full, oldest out
    assert client_key.cache_info().currsize <= 8192
    # Every failure is counted in the metric; those beyond a full table are dropped
    # (and said to be) rather than grow it.
    dropped = metrics.registry.get_sample_value("patgate_auth_failures_dropped_total")
    assert metrics.registry.get_sample_value("patgate_auth_failures_total") == n
    assert dropped == n - 4 * bound
    # The store's counters carry the window as their TTL: nothing of the attack stays.
    first = 750_000  # the first address of the last flush (the rest were dropped)
    last = f"10.{first >> 16 & 255}.{first >> 8 & 255}.{first & 255}"
    ttl = await store.client.pttl(store.keyspace.partition(counter_partition(last)).failures(last))
    assert 0 < ttl <= 2000

    # Blocks: the default table size.
    blocks = FailureLimiter(store, metrics)
    assert blocks._max == 100_000
    until = time.time() + 60
    keys = [f"172.{16 + (i >> 16 & 15)}.{i >> 8 & 255}.{i & 255}" for i in range(n)]
    started_at = time.perf_counter()
    for key in keys:
        blocks.block(key, until)
    per_block_us = (time.perf_counter() - started_at) / n * 1e6
    assert len(blocks._blocked) == blocks._max
    assert next(iter(blocks._blocked)) == keys[n - blocks._max]  # the newest are kept
    assert blocks.retry_after(keys[-1]) is not None
    assert blocks.retry_after(keys[0]) is None
    assert metrics.registry.get_sample_value("patgate_blocked_clients") == blocks._max
    del keys
    gc.collect()
    growth = _rss() - rss_before
    # The tables hold ~120k short strings, tens of MB at most; a million entries in
    # each would be hundreds.
    assert growth < 160 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB"
    # O(1) eviction: a plain dict's front pops cost ~30 µs each at this size.
    assert per_block_us < 15, per_block_us
