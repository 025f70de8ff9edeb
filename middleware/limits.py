"""Failed-authentication limits per client (issue 12): N failures in a window, then 429.

A client — an IP address, or its /64 for IPv6, where one host usually holds a whole /64
— that fails authentication ``limit`` times within ``window`` seconds is answered 429
with ``Retry-After`` until its window passes, whatever it sends, valid tokens included;
every other client is unaffected. A *failed authentication* is a presented Bearer token
that did not authenticate (unknown, malformed, revoked, expired, rotated, disabled): a
request with no credentials at all is not an attempt and is not counted.

Cost, by design:

* **Success pays nothing shared.** A request checks the local block table only while
  it holds an entry (one truthiness test otherwise) and never calls Redis for it.
* **Failures are counted locally at once and shared in batches.** ``failed()`` adds to
  a per-process table; every ``interval`` seconds the flush sends the increments to the
  store — one ``COUNT`` script per counter partition, so an attack costs a handful of
  Redis calls per flush, not one per request — and reads back the shared counts.
* **A block reaches every process within milliseconds.** The script that sees a counter
  cross the limit publishes ``b <client> <until>`` on the partition's invalidation
  channel, to which every process already subscribes (:mod:`middleware.invalidation`).
  A process also blocks on its own count as soon as it alone reaches the limit.

So the shared count can run past ``limit`` by what the processes see in one flush
interval (docs/data-plane.md). Memory is bounded: each table holds at most
``max_clients`` entries (oldest first out), whatever the number of attacking addresses;
the store's counters expire with their window.

The client address is the one :class:`~patgate.middleware.trust.TrustedProxies` resolves:
blocking a trusted proxy's own address (one that sends no ``X-Forwarded-For``) blocks
everyone behind it, which is why only proxies that set the header belong in that list.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from redis.exceptions import RedisError

from .errors import PatgateError
from .keys import PARTITIONS, partition_of
from .metrics import Metrics
from .store import TokenStore

__all__ = ["COUNTER_PARTITIONS", "FailureLimiter", "client_key"]

_log = logging.getLogger("patgate.limits")

#: the partitions the counters live in: a few, spread over the keyspace (and so over a
#: Cluster's primaries), so that one flush is a few script calls however many clients.
COUNTER_PARTITIONS = 16
_STRIDE = PARTITIONS // COUNTER_PARTITIONS


@functools.lru_cache(maxsize=8192)
def client_key(address: str | None) -> str | None:
    """What failures are counted against: an IPv4 address, an IPv6 /64 (``2001:db8::/64``),
    v4-mapped addresses as IPv4; None for something that is no IP address."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        network = ipaddress.IPv6Network((int(ip) >> 64 << 64, 64))
        return str(network)
    return str(ip)


def counter_partition(key: str) -> int:
    """The partition holding ``key``'s counter (one of :data:`COUNTER_PARTITIONS`)."""
    return (partition_of("client:" + key) % COUNTER_PARTITIONS) * _STRIDE


class FailureLimiter:
    """Per-process view of the shared failure counts (module docstring)."""

    def __init__(
        self,
        store: TokenStore,
        metrics: Metrics,
        *,
        limit: int = 50,
        window: float = 60.0,
        interval: float = 0.1,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.limit = limit
        self.window = window
        self._interval = interval
        self._max = max_clients
        self._clock = clock
        #: client → failures not yet sent to the store.
        self._pending: dict[str, int] = {}
        # OrderedDicts, not dicts: evicting the oldest entry of a full table must be O(1).
        # A plain dict's next(iter(d)) after many front deletions scans the dummy slots
        # they leave (~30 µs per eviction at 100k entries, under exactly the attack the
        # bound is for); OrderedDict.popitem(last=False) is ~1 µs.
        #: client → (shared count, end of its window) as last read from the store.
        self._shared: OrderedDict[str, tuple[int, float]] = OrderedDict()
        #: client → blocked until (epoch seconds). Insertion order ≈ expiry order.
        self._blocked: OrderedDict[str, float] = OrderedDict()
        #: the same table, read by the authenticator's pre-check: one truthiness test per
        #: request while nobody is blocked (never rebound, only mutated).
        self.blocked_table: Mapping[str, float] = self._blocked
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = metrics.auth_failures
        self._blocks = metrics.client_blocks
        self._gauge = metrics.blocked_clients
        self._dropped = metrics.auth_failures_dropped
        self._errors = metrics.redis_errors.labels("count")

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    @property
    def blocking(self) -> bool:
        """Whether any client is blocked here (only then does a request look itself up)."""
        return bool(self._blocked)

    def __len__(self) -> int:
        return len(self._pending) + len(self._shared) + len(self._blocked)

    def retry_after(self, address: str | None, now: float | None = None) -> int | None:
        """Seconds until a blocked client may try again, or None when it is not blocked."""
        blocked = self._blocked
        now = self._clock() if now is None else now
        # Expired blocks leave from the front (insertion order ≈ expiry order), so that
        # blocks of clients that never come back do not keep the table — the gauge, and
        # this pre-check on every request — alive for good.
        while blocked:
            head = next(iter(blocked))
            if blocked[head] > now:
                break
            del blocked[head]
            self._gauge.set(len(blocked))
        key = client_key(address)
        if key is None:
            return None
        until = blocked.get(key)
        if until is None:
            return None
        if now >= until:
            del blocked[key]
            self._gauge.set(len(blocked))
            return None
        return max(1, math.ceil(until - now))

    def failed(self, address: str | None) -> None:
        """Count one failed authentication from ``address``; block it here at once if
        this process alone now knows of ``limit`` failures in its window."""
        if not self.enabled:
            return
        key = client_key(address)
        if key is None:
            return
        self._failures.inc()
        pending = self._pending
        if key not in pending and len(pending) >= self._max:
            # Full (more distinct clients failing within one flush interval than the
            # table holds): this one goes uncounted, and the flush is started now.
            self._wake.set()
            self._dropped.inc()
            return
        n = pending.get(key, 0) + 1
        pending[key] = n
        now = self._clock()
        shared, until = self._shared.get(key, (0, 0.0))
        if now >= until:
            shared, until = 0, now + self.window
        if shared + n >= self.limit:
            self.block(key, until)
        if n == 1 and len(pending) == 1:
            self._wake.set()

    def block(self, key: str, until: float) -> None:
        """Block client ``key`` until ``until`` (epoch seconds): from this process's own
        count, a flush's reply, or another process's ``b`` message."""
        blocked = self._blocked
        if until <= self._clock():
            return
        current = blocked.get(key)
        if current is not None and current >= until:
            return
        if current is None:
            if len(blocked) >= self._max:
                blocked.popitem(last=False)
            self._blocks.inc()
        blocked[key] = until
        # (re-)inserted at the end: insertion order stays expiry order
        blocked.move_to_end(key)
        self._gauge.set(len(blocked))

    # -- sharing through the store --------------------------------------------------------

    async def flush(self) -> None:
        """Send the pending increments, one ``COUNT`` call per counter partition, and
        read back the shared counts (blocking what crossed the limit)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        by_partition: dict[int, list[tuple[str, str, int]]] = {}
        for key, delta in pending.items():
            p = counter_partition(key)
            by_partition.setdefault(p, []).append(
                (self._store.keyspace.partition(p).failures(key), key, delta)
            )
        window_ms = max(1, int(self.window * 1000))
        for p, rows in by_partition.items():
            try:
                replies = await self._store.add_counts(
                    p, rows, limit=self.limit, window_ms=window_ms, announce=True
                )
            except (PatgateError, RedisError, OSError):
                # Advisory like last-used: this process still blocks on its own counts.
                self._errors.inc()
                _log.debug("failure counts not shared", exc_info=True)
                continue
            now = self._clock()
            shared = self._shared
            for (_, key, _delta), (count, left_ms) in zip(rows, replies, strict=True):
                until = now + left_ms / 1000
                if key in shared:
                    shared.move_to_end(key)
                elif len(shared) >= self._max:
                    shared.popitem(last=False)
                shared[key] = (count, until)
                if count >= self.limit:
                    self.block(key, until)

    def start(self) -> None:
        if self._task is None and self.enabled:
            self._task = asyncio.create_task(self._run(), name="patgate-failure-limits")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(PatgateError, RedisError, OSError):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Coalesce: everything that fails within one interval goes in one flush.
            await asyncio.sleep(self._interval)
            await self.flush()
