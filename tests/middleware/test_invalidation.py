"""The invalidation subscriber against a real Valkey: messages, reconnects, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from patgate.middleware.cache import TokenCache
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.keys import Keyspace
from patgate.middleware.metrics import Metrics
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.store.plan import org_message, stamp, token_message, user_message
from patgate.middleware.tokenformat import TokenFormat

from ._tokens import add_user, issue, revoke

pytestmark = pytest.mark.anyio


def _d(n: int) -> bytes:
    return n.to_bytes(32, "big")


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> float:
    """Poll ``check`` until true; returns how long it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class _Rig:
    def __init__(self, url: str, keys: Keyspace, **options: Any) -> None:
        self.metrics = Metrics()
        self.cache: TokenCache[str] = TokenCache(64, 30.0, 2.0, self.metrics, active=True)
        self.client = redis_client(url, retries=0)
        #: the channel of the test org's partition ("o1", tests/middleware/_tokens.py).
        self.channel = keys.for_org("o1").channel
        # Every partition's channel, as a process subscribes (runtime).
        self.subscriber = InvalidationSubscriber(
            self.client, keys.channels, self.cache, self.metrics, **options
        )

    def fill(self, *digests: bytes, owner: str | None = "u1") -> None:
        for digest in digests:
            self.cache.put(digest, "v", owner, self.cache.epoch, time.monotonic())

    def has(self, digest: bytes) -> bool:
        return self.cache.get(digest, time.monotonic()) is not None

    async def aclose(self) -> None:
        await self.subscriber.aclose()
        await self.client.aclose()


@pytest.fixture
async def rig(valkey_url: str, keys: Keyspace) -> AsyncIterator[_Rig]:
    rig = _Rig(valkey_url, keys, ping_interval=0.1, ping_timeout=0.3, max_backoff=0.1)
    try:
        yield rig
    finally:
        await rig.aclose()


@pytest.mark.parametrize(
    ("message", "kind", "left"),
    [
        # The store's own encoders write the well-formed messages (it owns the format).
        (token_message(_d(1)).encode(), "token", {2, 3}),
        (user_message("u1").encode(), "owner", {3}),
        (b"*", "flush", set()),
        (b"t nothex", "flush", set()),  # malformed: when in doubt, forget everything
        (b"t " + b"ab" * 16, "flush", set()),  # a digest of the wrong length
        (b"x something", "flush", set()),
        (b"", "flush", set()),
    ],
)
def test_apply_message_table(
    valkey_url: str, keys: Keyspace, message: bytes, kind: str, left: set[int]
) -> None:
    rig = _Rig(valkey_url, keys)
    rig.fill(_d(1), _d(2))
    rig.fill(_d(3), owner="u2")
    assert rig.subscriber.apply(message) == kind
    assert {n for n in (1, 2, 3) if rig.has(_d(n))} == left
    assert _value(rig.metrics, "patgate_cache_invalidations_total", kind=kind) == 1


def _lag(metrics: Metrics, le: str | None = None) -> float:
    if le is None:
        return _value(metrics, "patgate_invalidation_lag_seconds_count")
    return _value(metrics, "patgate_invalidation_lag_seconds_bucket", le=le)


def _position(metrics: Metrics) -> float:
    return _value(metrics, "patgate_invalidation_position")


def _us(t: float) -> int:
    return int(t * 1_000_000)


@pytest.mark.parametrize(
    ("message", "kind", "left"),
    [
        (token_message(_d(1)), "token", {2, 3}),
        (user_message("u1"), "owner", {3}),
        (org_message("acme"), "flush", set()),
    ],
)
def test_stamped_messages_apply_and_observe_lag_and_position(
    valkey_url: str, keys: Keyspace, message: str, kind: str, left: set[int]
) -> None:
    """Issue 11: the same three kinds, stamped by COMMIT; lag is now minus commit time."""
    rig = _Rig(valkey_url, keys)
    rig.fill(_d(1), _d(2))
    rig.fill(_d(3), owner="u2")
    committed = time.time() - 0.02  # committed 20 ms ago
    assert rig.subscriber.apply(stamp(message, 41, _us(committed)).encode()) == kind
    assert {n for n in (1, 2, 3) if rig.has(_d(n))} == left
    assert _lag(rig.metrics) == 1
    assert _lag(rig.metrics, "0.015") == 0
    assert _lag(rig.metrics, "0.5") == 1  # 20 ms plus this test's own few milliseconds
    assert _position(rig.metrics) == 41


def test_clock_skew_counts_as_no_lag_and_unstamped_messages_as_no_sample(
    valkey_url: str, keys: Keyspace
) -> None:
    rig = _Rig(valkey_url, keys)
    ahead = _us(time.time() + 5)  # the server's clock runs 5 s ahead of ours
    rig.subscriber.apply(stamp(token_message(_d(1)), 7, ahead).encode())
    assert _lag(rig.metrics) == _lag(rig.metrics, "0.0005") == 1
    assert _value(rig.metrics, "patgate_invalidation_lag_seconds_sum") == 0
    assert _position(rig.metrics) == 7
    # the format before issue 11 still applies, without a lag sample or a new position
    rig.fill(_d(2))
    assert rig.subscriber.apply(token_message(_d(2)).encode()) == "token"
    assert not rig.has(_d(2))
    assert _lag(rig.metrics) == 1
    assert _position(rig.metrics) == 7


async def test_first_subscription_flushes_and_activates(rig: _Rig) -> None:
    rig.cache.deactivate()
    assert not rig.subscriber.connected
    assert _value(rig.metrics, "patgate_redis_up") == 0
    await rig.subscriber.start(wait=5.0)
    assert rig.subscriber.connected
    assert rig.cache.active
    assert rig.subscriber.connects == 1
    assert _value(rig.metrics, "patgate_redis_up") == 1


async def test_published_messages_drop_entries(rig: _Rig, redis_client: aioredis.Redis) -> None:
    await rig.subscriber.start(wait=5.0)
    rig.fill(_d(1), _d(2))
    rig.fill(_d(3), owner="u2")
    await redis_client.spublish(rig.channel, token_message(_d(1)))
    await _until(lambda: not rig.has(_d(1)))
    assert rig.has(_d(2))
    assert rig.has(_d(3))
    await redis_client.spublish(rig.channel, user_message("u2"))
    await _until(lambda: not rig.has(_d(3)))
    assert rig.has(_d(2))
    await redis_client.spublish(rig.channel, b"*")
    await _until(lambda: len(rig.cache) == 0)
    assert _lag(rig.metrics) == 0  # unstamped (the format before issue 11): no lag sample


async def test_committed_plan_invalidates_within_milliseconds(rig: _Rig, store: TokenStore) -> None:
    """The store's COMMIT script publishes; the subscriber drops the entry."""
    fmt = TokenFormat()
    await add_user(store)
    issued = await issue(store, fmt)
    await rig.subscriber.start(wait=5.0)
    rig.fill(issued.digest)
    started = time.monotonic()
    await revoke(store, issued)
    took = await _until(lambda: not rig.has(issued.digest), seconds=1.0)
    assert time.monotonic() - started < 0.5
    assert took < 0.5


async def test_commits_show_as_lag_samples_and_the_store_position(
    rig: _Rig, store: TokenStore, redis_client: aioredis.Redis
) -> None:
    """Real commits through the store: each applied message is one lag sample (well under
    a second on loopback) and the gauge follows the store's counter."""
    fmt = TokenFormat()
    await add_user(store)
    tokens = [await issue(store, fmt) for _ in range(3)]
    await rig.subscriber.start(wait=5.0)
    before = _lag(rig.metrics)
    for issued in tokens:
        rig.fill(issued.digest)
        await revoke(store, issued)
    await _until(lambda: not any(rig.has(t.digest) for t in tokens), seconds=1.0)
    stored = int(await redis_client.get(store.keys_for("o1").position) or 0)
    await _until(lambda: _position(rig.metrics) == stored, seconds=1.0)
    assert stored >= 3
    assert _lag(rig.metrics) - before >= 3
    assert _lag(rig.metrics, "1.0") == _lag(rig.metrics)  # every sample under a second


async def test_subscription_catches_up_to_the_store_position(rig: _Rig, store: TokenStore) -> None:
    """Invalidations committed before this process subscribed were never delivered to it,
    but the flush on subscribing covers them: it reports the store's position, not 0, so
    a restart in a quiet namespace does not look like a process that fell behind."""
    fmt = TokenFormat()
    await add_user(store)
    issued = await issue(store, fmt)
    await revoke(store, issued)
    stored = int(await store.client.get(store.keys_for("o1").position) or 0)
    assert stored >= 1
    assert _position(rig.metrics) == 0
    await rig.subscriber.start(wait=5.0)
    await _until(lambda: _position(rig.metrics) == stored, seconds=1.0)
    assert _lag(rig.metrics) == 0  # nothing was applied late


async def test_killed_subscription_switches_cache_off_then_reconnects_flushed(
    rig: _Rig, redis_client: aioredis.Redis
) -> None:
    await rig.subscriber.start(wait=5.0)
    rig.fill(_d(1))
    await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
    # Either we observe the gap, or the reconnect already happened; both flushed _d(1).
    await _until(lambda: rig.subscriber.connects >= 2)
    assert not rig.has(_d(1))
    assert rig.subscriber.connected
    assert rig.cache.active
    assert _value(rig.metrics, "patgate_redis_errors_total", op="subscribe") >= 1


async def test_unanswered_ping_counts_as_disconnected(
    rig: _Rig, redis_client: aioredis.Redis
) -> None:
    await rig.subscriber.start(wait=5.0)
    rig.fill(_d(1))
    # Paused server: the subscription socket stays open but PINGs go unanswered.
    await redis_client.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # type: ignore[no-untyped-call]
    try:
        await _until(lambda: not rig.subscriber.connected, seconds=1.4)
        assert not rig.cache.active
        assert not rig.has(_d(1))
        assert _value(rig.metrics, "patgate_redis_up") == 0
    finally:
        await _until(lambda: rig.subscriber.connected, seconds=10.0)
    assert rig.subscriber.connects >= 2


async def test_store_outage_and_recovery(tmp_path: Path, keys: Keyspace) -> None:
    """A dedicated server is stopped: the cache goes off and stays off until the
    subscription is back, then starts empty."""
    server = EmbeddedValkey(tmp_path / "own")
    url = server.start()
    rig = _Rig(url, keys, ping_interval=0.1, ping_timeout=0.3, max_backoff=0.1)
    try:
        await rig.subscriber.start(wait=5.0)
        rig.fill(_d(1))
        server.stop()
        await _until(lambda: not rig.subscriber.connected)
        assert not rig.cache.active
        assert len(rig.cache) == 0
        rig.fill(_d(2))  # a racing lookup's put is refused while down
        assert not rig.has(_d(2))
        await asyncio.sleep(0.3)  # several failed reconnect attempts
        assert not rig.subscriber.connected
        server.start()
        await _until(lambda: rig.subscriber.connected, seconds=10.0)
        assert rig.cache.active
        assert len(rig.cache) == 0
        assert rig.subscriber.connects == 2
    finally:
        await rig.aclose()
        server.stop()


async def test_aclose_stops_and_deactivates(rig: _Rig) -> None:
    await rig.subscriber.start(wait=5.0)
    await rig.subscriber.aclose()
    assert not rig.subscriber.connected
    assert not rig.cache.active
    assert _value(rig.metrics, "patgate_redis_up") == 0
