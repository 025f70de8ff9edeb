"""In-process micro-benchmarks: decision CPU on a cache hit, round trips on a cache miss.

Both use a real :class:`~gateway.runtime.Runtime` (started, so the invalidation
subscription is live and the cache is on) against the bench store.

* **Decision CPU**: ``Authenticator.authenticate`` on a warm cache in a tight loop,
  ``time.process_time()`` per segment / its iterations → µs per decision: the fastest
  of ten segments (timeit's convention; the median is reported beside it). The loop
  yields to the event loop every 1,000 calls so the runtime's background tasks keep
  running. This is a best case: code and data stay in the CPU's caches; inside a
  server, between two requests' decisions, they do not.
  Each step (route, credentials, digest, cache get, decide) is also timed on its own.
* **Cache-miss round trips**: the cache is flushed, then one ``authenticate`` runs with
  the store's connections counting the replies they read (one reply = one round trip;
  redis-py does not pipeline a single command). The server's ``INFO commandstats``
  delta is reported alongside: it shows the ``EVALSHA`` and the reads done inside it.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bench.apps import bench_policy
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime, redis_client

__all__ = ["DecisionCpu", "MissTrips", "decision_cpu", "miss_round_trips"]

#: the one client factory (issue 10), with room for the benchmark's bulk operations.
_BENCH_TIMEOUT = 60.0

_CHUNK = 1000
_SEGMENTS = 10
_IGNORED_COMMANDS = {"cmdstat_info", "cmdstat_ping"}


@dataclass(frozen=True, slots=True)
class DecisionCpu:
    iterations: int
    #: fastest segment, µs per decision.
    us_per_decision: float
    #: median segment, µs per decision.
    median_us: float
    #: step name → µs per call, each timed in its own loop.
    steps: dict[str, float]


@dataclass(frozen=True, slots=True)
class MissTrips:
    round_trips: int
    #: command → calls seen by the server during the one cold decision.
    server_commands: dict[str, int]


def _headers(secret: str) -> list[tuple[bytes, bytes]]:
    # What wrk/curl send: host, the credential, a user agent, accept.
    return [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", b"Bearer " + secret.encode()),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
    ]


_SCOPE: dict[str, Any] = {"type": "http", "client": ("127.0.0.1", 40000)}


def _runtime(redis_url: str, namespace: str) -> Runtime:
    settings = Settings(redis_url=redis_url, namespace=namespace, log_level="warning")
    return Runtime(settings, policy=bench_policy())


def _per_call_us(fn: Callable[[], object], iterations: int) -> float:
    started = time.process_time()
    for _ in range(iterations):
        fn()
    return (time.process_time() - started) / iterations * 1e6


async def decision_cpu(
    redis_url: str, namespace: str, secret: str, *, iterations: int = 50_000,
    max_seconds: float = 3.0,
) -> DecisionCpu:  # fmt: skip
    """µs of CPU per ``authenticate`` on a cache hit (bounded by count and time)."""
    runtime = _runtime(redis_url, namespace)
    await runtime.start()
    try:
        if not await runtime.subscriber.wait_connected(5.0):
            raise RuntimeError("invalidation subscription not up: the cache would stay off")
        auth = runtime.authenticator
        headers = _headers(secret)
        await auth.authenticate("GET", "/items", headers, _SCOPE)  # miss: fills the cache
        sample = runtime.metrics.registry.get_sample_value
        before = sample("patgate_cache_hits_total") or 0.0
        await auth.authenticate("GET", "/items", headers, _SCOPE)
        if (sample("patgate_cache_hits_total") or 0.0) != before + 1:
            raise RuntimeError("second decision was not a cache hit")
        gc.collect()
        done = 0
        samples: list[float] = []
        deadline = time.monotonic() + max_seconds
        per_segment = max(_CHUNK, iterations // _SEGMENTS)
        while done < iterations and time.monotonic() < deadline:
            started = time.process_time()
            n = 0
            while n < per_segment:
                for _ in range(_CHUNK):
                    await auth.authenticate("GET", "/items", headers, _SCOPE)
                n += _CHUNK
                await asyncio.sleep(0)
            samples.append((time.process_time() - started) / n * 1e6)
            done += n
        steps = _steps(runtime, secret, headers, min(done, 20_000))
        # The fastest segment, as timeit does: on a shared VM a neighbour's burst slows
        # whole segments down (2x swings between runs here); the median is kept too.
        return DecisionCpu(done, min(samples), statistics.median(samples), steps)
    finally:
        await runtime.aclose()


def _steps(
    runtime: Runtime, secret: str, headers: list[tuple[bytes, bytes]], n: int
) -> dict[str, float]:
    auth = runtime.authenticator
    match = auth.route("GET", "/items")
    digest = auth.digest(secret)
    slot = runtime.cache.get(digest, time.monotonic())
    if slot is None or slot.value is None:
        raise RuntimeError("token not cached")
    resolved = slot.value
    now = time.time()
    return {
        "route": _per_call_us(lambda: auth.route("GET", "/items"), n),
        "credentials": _per_call_us(lambda: auth.credentials(headers), n),
        "digest": _per_call_us(lambda: auth.digest(secret), n),
        "cache get": _per_call_us(lambda: runtime.cache.get(digest, time.monotonic()), n),
        "decide": _per_call_us(lambda: auth.decide(resolved, match, headers, now), n),
        "metrics": _per_call_us(lambda: runtime.metrics.cached_allow(1e-5), n),
    }


def _count_replies(client: aioredis.Redis, counter: list[int]) -> None:
    """Make every connection of ``client``'s pool count the replies it reads."""
    pool = client.connection_pool
    base: Any = pool.connection_class

    async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return await base.read_response(self, *args, **kwargs)

    pool.connection_class = type("Counting" + base.__name__, (base,), {
        "read_response": read_response,
    })  # fmt: skip


def _commandstats(info: dict[str, Any]) -> dict[str, int]:
    return {k: int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")}


async def miss_round_trips(redis_url: str, namespace: str, secret: str) -> MissTrips:
    """Round trips of one cache-miss decision (after the script is loaded, as in steady
    state: the very first call of a process adds a SCRIPT LOAD)."""
    runtime = _runtime(redis_url, namespace)
    counter = [0]
    _count_replies(runtime.redis, counter)
    await runtime.start()
    admin = redis_client(redis_url, timeout=_BENCH_TIMEOUT)
    try:
        if not await runtime.subscriber.wait_connected(5.0):
            raise RuntimeError("invalidation subscription not up")
        auth = runtime.authenticator
        headers = _headers(secret)
        await auth.authenticate("GET", "/items", headers, _SCOPE)  # loads the script
        runtime.cache.flush()
        misses = runtime.metrics.cache_misses
        before_misses = misses._value.get()
        before = _commandstats(await admin.info("commandstats"))
        counter[0] = 0
        await auth.authenticate("GET", "/items", headers, _SCOPE)
        trips = counter[0]
        after = _commandstats(await admin.info("commandstats"))
        if misses._value.get() != before_misses + 1:
            raise RuntimeError("the decision did not miss the cache")
        delta = {
            k.removeprefix("cmdstat_"): n - before.get(k, 0)
            for k, n in after.items()
            if n != before.get(k, 0) and k not in _IGNORED_COMMANDS
        }
        return MissTrips(trips, delta)
    finally:
        await admin.aclose()
        await runtime.aclose()
