"""Last-used writes under full load: they follow the number of tokens, not the request rate.

The app under test (``bench.apps:patgate_app``) logs every last-used flush (time, entries
written) and serves the log at ``/__bench/stats``. One measurement: warm the cache with
every token (wrk rotating the ``Authorization`` header over the token list), run the
load for ``duration`` seconds, then wait for the first flush after the load stopped, so
every use made during the load has been written. Over the flushes that happened from
the load's start to that one:

* entries — last-used records written to Redis (one ``HSET`` each, inside the ``TOUCH``
  script; one ``EVALSHA`` per 1,000 entries);
* writes/s — entries / (flushes * interval): the steady write rate;
* the bound — ``tokens / interval``: at most one write per active token per flush
  interval (SPEC), whatever the request rate. A per-request writer would do req/s.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench._wrk import run_load
from bench.apps import STATS_PATH
from bench.servers import Proc

__all__ = ["LastUsedResult", "lastused_writes", "stats"]


@dataclass(frozen=True, slots=True)
class LastUsedResult:
    tokens: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    entries: int
    flushes: int
    max_per_flush: int
    interval: float
    #: lookups that went to Redis during the load (0 when the cache held every token).
    misses: int

    @property
    def writes_per_s(self) -> float:
        return self.entries / (self.flushes * self.interval) if self.flushes else 0.0

    @property
    def bound_per_s(self) -> float:
        return self.tokens / self.interval

    @property
    def ok(self) -> bool:
        return (
            self.flushes > 0
            and self.max_per_flush <= self.tokens
            and self.writes_per_s <= self.bound_per_s
        )


def stats(proc: Proc) -> dict[str, Any]:
    with urllib.request.urlopen(proc.url + STATS_PATH, timeout=5) as response:
        data: dict[str, Any] = json.load(response)
    return data


def lastused_writes(
    proc: Proc,
    tokens: Sequence[str],
    *,
    duration: float,
    warmup: float = 1.0,
    max_warmup: float = 8.0,
    path: str = "/items",
) -> LastUsedResult:
    url = proc.url + path
    # Warm until every token is cached (a cold miss costs a Redis round trip and would
    # make the loaded part measure lookups instead). Every wrk run starts its threads at
    # the same offsets of the token list, so the rest is covered by one run long enough
    # at the cold rate just seen, bounded by ``max_warmup`` seconds.
    warm_started = time.monotonic()
    first = run_load(url, duration=warmup, tokens=tokens)
    if stats(proc)["cache_entries"] < len(tokens):
        needed = 1.5 * len(tokens) / max(first.rps, 1.0)
        run_load(url, duration=min(max_warmup, max(1.0, math.ceil(needed))), tokens=tokens)
    # Keep the load on until one flush has happened since the warm-up began: it writes
    # whatever an earlier load (other tokens) left pending, so the flushes counted below
    # hold only this token set.
    interval = float(stats(proc)["interval"])
    deadline = time.monotonic() + interval + 2.0
    while time.monotonic() < deadline and not any(
        t > warm_started for t, _ in stats(proc)["flushes"]
    ):
        run_load(url, duration=1, tokens=tokens)
    before = stats(proc)
    started = time.monotonic()
    load = run_load(url, duration=duration, tokens=tokens)
    stopped = time.monotonic()
    deadline = stopped + interval + 5.0
    while True:
        after = stats(proc)
        if any(t > stopped for t, _ in after["flushes"]) or time.monotonic() > deadline:
            break
        time.sleep(min(0.1, interval / 4))
    flushes = [n for t, n in after["flushes"] if t > started]
    return LastUsedResult(
        tokens=len(tokens),
        rps=load.rps,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        requests=load.requests,
        entries=sum(flushes),
        flushes=len(flushes),
        max_per_flush=max(flushes, default=0),
        interval=interval,
        misses=int(after["misses"] - before["misses"]),
    )
