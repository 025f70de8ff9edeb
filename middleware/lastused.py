"""The last-used recorder: coalesce in memory, flush in batches, never block a request.

``record()`` is a dict assignment: the newest entry per token id wins, so a token used a
thousand times between two flushes costs one write (SPEC target: ≤ one write per active
token per flush interval, whatever the request rate). The hot path asks ``due()`` first
and records at most one use per token per ``resolution`` (1 s): what is stored is the last
use to within a second, and most requests pay one dict lookup. Every ``interval`` seconds a
background task swaps the dict out and writes it with ``TokenStore.touch`` — one EVALSHA
per partition in each chunk of ``batch_size`` entries (on a Cluster the partitions spread
over every primary, and so do these writes) — which skips tokens that no longer exist, so a flush
racing a delete never resurrects the deleted token.

Memory is bounded by ``max_pending`` distinct tokens; a new token arriving when the dict is
full is dropped and counted (``patgate_lastused_dropped_total``). A failed flush (Redis
down) drops that batch and counts it: last-used is advisory, and holding it back would
either block requests or grow without bound. ``aclose()`` performs a final flush.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import RedisError

from .errors import PatgateError
from .metrics import Metrics
from .records import LastUsed
from .store import TokenStore

__all__ = ["LastUsedRecorder"]


class LastUsedRecorder:
    """Per-process, per-token coalescing of last-used entries."""

    def __init__(
        self,
        store: TokenStore,
        metrics: Metrics,
        *,
        interval: float = 5.0,
        max_pending: int = 100_000,
        batch_size: int = 1000,
        resolution: float = 1.0,
    ) -> None:
        self._store = store
        self._resolution = resolution
        self._interval = interval
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._pending: dict[str, LastUsed] = {}
        #: token id → the partition of its record, for the ids in ``_pending``.
        self._where: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._pending_gauge = metrics.lastused_pending
        self._flushed = metrics.lastused_flushed
        self._dropped = metrics.lastused_dropped
        self._errors = metrics.redis_errors.labels("touch")

    def __len__(self) -> int:
        return len(self._pending)

    def due(self, token_id: str, now: float) -> bool:
        """Whether a use at ``now`` is worth recording: the token has nothing pending, or
        what is pending is at least ``resolution`` seconds older. Lets the hot path skip
        building a :class:`LastUsed` on all but ~one request per token per second."""
        used = self._pending.get(token_id)
        return used is None or now - used.at >= self._resolution

    def record(self, partition: int, token_id: str, used: LastUsed) -> None:
        """Remember ``used`` as the latest use of the token, whose record is in
        ``partition`` (its org's); O(1), never awaits."""
        pending = self._pending
        if token_id not in pending:
            # Only a token's first use in an interval gets here, so the locked metric
            # updates cost once per token per interval, not once per request.
            if len(pending) >= self._max_pending:
                self._dropped.inc()
                return
            self._pending_gauge.inc()
            self._where[token_id] = partition
        pending[token_id] = used

    async def flush(self) -> int:
        """Write everything pending now; returns how many tokens were updated."""
        batch, self._pending = self._pending, {}
        where, self._where = self._where, {}
        self._pending_gauge.set(0)
        if not batch:
            return 0
        items = [(where[token_id], token_id, used) for token_id, used in batch.items()]
        written = 0
        size = self._batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            try:
                n = await self._store.touch(chunk)
            except (PatgateError, RedisError):
                # Store unreachable or refusing writes: drop, count, go on (never block).
                self._errors.inc()
                self._dropped.inc(len(chunk))
                continue
            written += n
            self._flushed.inc(n)
        return written

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="patgate-lastused")

    async def aclose(self) -> None:
        """Stop the flush loop after one last flush (what is pending is written)."""
        task, self._task = self._task, None
        if task is None:
            await self.flush()
            return
        self._stop.set()
        await task

    async def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            await self.flush()
        # A stop that came while that flush was writing: the uses recorded meanwhile are
        # pending still, and aclose() promises them written (nothing is pending
        # otherwise, and this returns at once).
        await self.flush()
