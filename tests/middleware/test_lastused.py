"""LastUsedRecorder: coalescing, bounds, batched flushes, shutdown, deleted tokens."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from patgate.middleware.keys import Keyspace, partition_of_org
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import LastUsed
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

from ._tokens import add_user, delete, issue

pytestmark = pytest.mark.anyio

#: the partition of the test org "o1" (tests/middleware/_tokens.py), where its tokens are.
P1 = partition_of_org("o1")


class CountingStore(TokenStore):
    """The real store, counting ``touch`` calls (one EVALSHA each)."""

    def __init__(self, client: aioredis.Redis, keys: Keyspace) -> None:
        super().__init__(client, keys)
        self.touches: list[int] = []

    async def touch(self, batch: Sequence[tuple[int, str, LastUsed]]) -> int:
        self.touches.append(len(batch))
        return await super().touch(batch)


def _used(at: float, path: str = "/threads/1") -> LastUsed:
    return LastUsed(at, "GET", path, "203.0.113.7", "curl/8")


def _value(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


@pytest.fixture
def counting(redis_client: aioredis.Redis, keys: Keyspace) -> CountingStore:
    return CountingStore(redis_client, keys)


async def test_coalesces_per_token_into_one_write(counting: CountingStore) -> None:
    fmt = TokenFormat()
    await add_user(counting)
    a = await issue(counting, fmt)
    b = await issue(counting, fmt)
    metrics = Metrics()
    recorder = LastUsedRecorder(counting, metrics, interval=60)
    for i in range(1000):
        recorder.record(P1, a.token.id, _used(1000.0 + i, f"/threads/{i}"))
    recorder.record(P1, b.token.id, _used(5.0))
    assert len(recorder) == 2
    assert _value(metrics, "patgate_lastused_pending") == 2
    assert await recorder.flush() == 2
    assert counting.touches == [2]  # one round trip for both tokens
    got = await counting.get_token(a.token.id)
    assert got is not None
    assert got.last_used == _used(1999.0, "/threads/999")
    assert _value(metrics, "patgate_lastused_flushed_total") == 2
    assert _value(metrics, "patgate_lastused_pending") == 0
    assert await recorder.flush() == 0
    assert counting.touches == [2]  # nothing pending: no Redis call at all


async def test_bounded_new_tokens_dropped_and_counted(counting: CountingStore) -> None:
    metrics = Metrics()
    recorder = LastUsedRecorder(counting, metrics, interval=60, max_pending=3)
    for i in range(5):
        recorder.record(P1, f"tok_{i}", _used(float(i)))
    recorder.record(P1, "tok_0", _used(99.0))  # already pending: updating it is always fine
    assert len(recorder) == 3
    assert _value(metrics, "patgate_lastused_dropped_total") == 2
    assert recorder._pending["tok_0"].at == 99.0


async def test_large_batches_are_chunked(counting: CountingStore) -> None:
    metrics = Metrics()
    recorder = LastUsedRecorder(counting, metrics, interval=60, batch_size=100)
    for i in range(250):
        recorder.record(P1, f"tok_missing_{i}", _used(1.0))
    assert await recorder.flush() == 0  # none of these tokens exist
    assert counting.touches == [100, 100, 50]


async def test_never_recreates_a_deleted_token(counting: CountingStore) -> None:
    fmt = TokenFormat()
    await add_user(counting)
    kept = await issue(counting, fmt)
    gone = await issue(counting, fmt)
    recorder = LastUsedRecorder(counting, Metrics(), interval=60)
    recorder.record(P1, kept.token.id, _used(1.0))
    recorder.record(P1, gone.token.id, _used(1.0))
    await delete(counting, gone)  # deleted between the request and the flush
    assert await recorder.flush() == 1
    raw = await counting.client.hget(counting.keys_for("o1").last_used, gone.token.id)
    assert raw is None
    assert await counting.client.hexists(counting.keys_for("o1").tokens, gone.token.id) == 0


class GatedStore(CountingStore):
    """The real store whose first ``touch`` waits at a gate: a flush held mid-write."""

    def __init__(self, client: aioredis.Redis, keys: Keyspace) -> None:
        super().__init__(client, keys)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def touch(self, batch: Sequence[tuple[int, str, LastUsed]]) -> int:
        if not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        return await super().touch(batch)


async def test_a_stop_during_a_flush_still_writes_what_came_meanwhile(
    redis_client: aioredis.Redis, keys: Keyspace
) -> None:
    # aclose() while the loop's flush is writing: the uses recorded during that write
    # must be written before aclose returns (CI once lost them on this interleaving).
    store = GatedStore(redis_client, keys)
    await add_user(store)
    a = await issue(store, TokenFormat())
    recorder = LastUsedRecorder(store, Metrics(), interval=0.01)
    recorder.start()
    recorder.record(P1, a.token.id, _used(1.0))
    await asyncio.wait_for(store.entered.wait(), 5.0)
    recorder.record(P1, a.token.id, _used(3.0))
    closing = asyncio.create_task(recorder.aclose())
    await asyncio.sleep(0.05)  # aclose has set the stop and waits for the loop
    store.gate.set()
    await asyncio.wait_for(closing, 5.0)
    got = await store.get_token(a.token.id)
    assert got is not None
    assert got.last_used is not None
    assert got.last_used.at == 3.0
    assert len(recorder) == 0
    assert store.touches == [1, 1]


async def test_background_flush_on_interval_and_final_flush(counting: CountingStore) -> None:
    fmt = TokenFormat()
    await add_user(counting)
    a = await issue(counting, fmt)
    metrics = Metrics()
    recorder = LastUsedRecorder(counting, metrics, interval=0.05)
    recorder.start()
    try:
        recorder.record(P1, a.token.id, _used(1.0))
        for _ in range(200):
            if counting.touches:
                break
            await asyncio.sleep(0.01)
        assert counting.touches == [1]
        recorder.record(P1, a.token.id, _used(2.0))
        recorder.record(P1, a.token.id, _used(3.0))
    finally:
        await recorder.aclose()
    got = await counting.get_token(a.token.id)
    assert got is not None
    assert got.last_used is not None
    assert got.last_used.at == 3.0
    assert len(recorder) == 0


async def test_writes_at_most_once_per_token_per_interval(counting: CountingStore) -> None:
    """Hammer one token for ~0.3 s with a 0.1 s interval: a handful of writes, not
    thousands."""
    fmt = TokenFormat()
    await add_user(counting)
    a = await issue(counting, fmt)
    recorder = LastUsedRecorder(counting, Metrics(), interval=0.1)
    recorder.start()
    loop = asyncio.get_running_loop()
    requests = 0
    end = loop.time() + 0.3
    try:
        while loop.time() < end:
            recorder.record(P1, a.token.id, _used(loop.time()))
            requests += 1
            if requests % 50 == 0:
                await asyncio.sleep(0)
    finally:
        await recorder.aclose()
    assert requests > 1000
    assert 1 <= len(counting.touches) <= 5  # ≈ 0.3 s / 0.1 s, plus the final flush
    assert all(n == 1 for n in counting.touches)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_down_drops_batch_counts_and_keeps_running(keys: Keyspace) -> None:
    client = redis_client(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        metrics = Metrics()
        recorder = LastUsedRecorder(TokenStore(client, keys), metrics, interval=0.02)
        recorder.start()
        recorder.record(P1, "tok_a", _used(1.0))
        recorder.record(P1, "tok_b", _used(1.0))
        for _ in range(300):
            if _value(metrics, "patgate_lastused_dropped_total") >= 2:
                break
            await asyncio.sleep(0.01)
        assert _value(metrics, "patgate_lastused_dropped_total") == 2
        errors = metrics.registry.get_sample_value("patgate_redis_errors_total", {"op": "touch"})
        assert errors == 1
        recorder.record(P1, "tok_c", _used(2.0))  # still accepting: requests never block
        assert len(recorder) == 1
        await recorder.aclose()
        assert _value(metrics, "patgate_lastused_dropped_total") == 3
    finally:
        await client.aclose()
