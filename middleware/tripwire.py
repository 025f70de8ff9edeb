"""The reuse tripwire (issue 12): a dead secret presented again is reported to its owner.

A secret that was revoked, rotated out (its grace period over), expired, or whose token
was deleted (recognised by the digest's tombstone, :meth:`Keys.tombstone`) is refused as
always; in addition, each such presentation

* counts in ``patgate_token_reuse_total{kind}`` (and the ``PatgateTokenReuse`` alert), and
* writes an audit event — ``token.reuse_after_revoke``, ``…_after_rotation``,
  ``…_after_expiry`` or ``…_after_delete`` — with the client's IP, user agent, method and
  path, at most one per token per minute across every process (the ``REUSE`` script's
  ``SET NX`` decides; a local table spares most calls).

Someone presenting a secret its owner no longer uses is how a leak shows itself. The
happy path pays nothing: all of this runs in the refusal branch, and the event is
written by a background task so the refusal is not delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from .errors import PatgateError
from .keys import partition_of_org
from .metrics import Metrics
from .store import TokenStore
from .store.plan import audit_event

__all__ = ["REUSE_EVENTS", "Tripwire"]

_log = logging.getLogger("patgate.tripwire")

#: refusal reason → audit event type.
REUSE_EVENTS = {
    "revoked": "token.reuse_after_revoke",
    "rotated": "token.reuse_after_rotation",
    "expired": "token.reuse_after_expiry",
    "deleted": "token.reuse_after_delete",
}
#: event writes in flight at once; more are dropped (and counted) rather than queued.
_MAX_IN_FLIGHT = 64
#: seconds a shutdown waits for the events in flight.
_CLOSE_WAIT = 2.0


class Tripwire:
    """Reports presentations of dead secrets (module docstring); one per process."""

    def __init__(
        self,
        store: TokenStore,
        metrics: Metrics,
        *,
        every: float = 60.0,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._every = every
        self._max = max_tracked
        self._clock = clock
        #: token id → when this process may write its next event.
        self._next: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = {kind: metrics.token_reuse.labels(kind) for kind in REUSE_EVENTS}
        self._errors = metrics.redis_errors.labels("reuse")

    def presented(
        self,
        kind: str,
        *,
        token_id: str,
        org_id: str,
        user_id: str | None,
        method: str,
        path: str,
        ip: str | None,
        user_agent: str | None,
    ) -> None:
        """A dead secret of ``token_id`` was presented; ``kind`` is the refusal reason."""
        counter = self._counts.get(kind)
        if counter is None:
            return
        counter.inc()
        now = self._clock()
        due = self._next.get(token_id)
        if due is not None and now < due:
            return
        if len(self._next) >= self._max:
            self._next.clear()
        self._next[token_id] = now + self._every
        if len(self._tasks) >= _MAX_IN_FLIGHT:
            self._errors.inc()
            return
        # The anonymous client that presented the secret is the actor (nobody is
        # authenticated here).
        event = audit_event(
            REUSE_EVENTS[kind],
            now,
            org_id=org_id,
            actor={"type": "client", "id": ip or "unknown", "token_id": None},
            ip=ip,
            user_agent=user_agent,
            token_id=token_id,
            user_id=user_id,
            data={"method": method, "path": path},
        )
        task = asyncio.create_task(self._write(org_id, token_id, event), name="patgate-reuse")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, org_id: str, token_id: str, event: str) -> None:
        try:
            await self._store.reuse_event(
                partition_of_org(org_id), token_id, event, every_ms=int(self._every * 1000)
            )
        except (PatgateError, RedisError, OSError):
            self._errors.inc()
            _log.warning("reuse event for token %s not written", token_id)
            self._next.pop(token_id, None)  # try again on the next presentation

    async def aclose(self) -> None:
        """Let the events in flight finish (bounded), so a shutdown loses none of them."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_WAIT):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
