"""Cache invalidation over Redis pub/sub: one subscriber task per process.

Messages on ``keys.channel`` (published by the store's ``COMMIT`` script, so a write that
cannot publish fails): ``t <hex digest>`` drops one token, ``u <user id>`` drops a user's
tokens, ``*`` flushes. Anything else also flushes — when in doubt, forget. The store owns
the format and its parser (:func:`patgate.middleware.store.plan.parse_message`).

Lag and position (issue 11): each message carries its commit time and position. The
subscriber observes ``patgate_invalidation_lag_seconds`` (receive time minus commit time)
and sets ``patgate_invalidation_position`` to the last position applied — or, after each
confirmed subscription (which flushed the cache), to the store's current position
(``Keys.position_of(channel)``), so a restarted process in a quiet namespace is not shown
as behind. A process whose position trails its peers missed or has not yet applied
invalidations they did (alert ``PatgateInvalidationBehind``).

The trust rule (docs/data-plane.md): the cache is used only while the subscription is
known to be live. Each confirmed SUBSCRIBE — the first one and every one after a
reconnect — flushes the cache and activates it; any error, or a PING left unanswered for
``ping_timeout`` seconds on an idle connection, deactivates it (flushes and stops caching)
until the next confirmed subscription. While deactivated every request goes to Redis; if
Redis is down too the data plane answers 503, never a stale 200.

The staleness bound: a link that silently drops packets (no RST, no FIN) is noticed at
most ``ping_interval + ping_timeout`` after the last thing it delivered — a PING goes out
``ping_interval`` after the last message, and its deadline is ``ping_timeout`` later; the
loop wakes at exactly those instants rather than on a fixed tick. An invalidation lost on
such a link is so ignored for at most that long. :meth:`InvalidationSubscriber.for_staleness`
derives both from one bound (``PATGATE_INVALIDATION_STALENESS``).

The subscriber's client must not retry internally (``retry=Retry(NoBackoff(), 0)``):
redis-py would otherwise reconnect and resubscribe inside ``get_message`` and we could
miss invalidations published in between. We still treat every ``subscribe`` confirmation
as a reconnect, so even such a silent resubscription flushes the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from .cache import TokenCache
from .connect import StoreClient, ready
from .keys import Keys
from .metrics import Metrics
from .store.plan import parse_message

__all__ = ["InvalidationSubscriber"]

_ERRORS = (redis_errors.RedisError, OSError, asyncio.TimeoutError)
_log = logging.getLogger("patgate.invalidation")


class _Unresponsive(Exception):
    """The subscription connection did not answer a PING in time."""


class InvalidationSubscriber:
    """Applies invalidation messages to a :class:`TokenCache`; reconnects with backoff."""

    def __init__(
        self,
        client: StoreClient,
        channel: str,
        cache: TokenCache[Any],
        metrics: Metrics,
        *,
        ping_interval: float = 1.0,
        ping_timeout: float = 2.0,
        min_backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        self._client = client
        self._channel = channel
        self._cache = cache
        self._metrics = metrics
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        #: the one-off read of the store's position after each (re)subscribe.
        self._catching_up: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._kinds = {
            kind: metrics.cache_invalidations.labels(kind) for kind in ("token", "owner", "flush")
        }
        self._errors = metrics.redis_errors.labels("subscribe")
        self._lag = metrics.invalidation_lag
        self._position = metrics.invalidation_position
        self._position_key = Keys.position_of(channel)
        #: whether the current session got as far as a confirmed subscription.
        self._session_ok = False
        #: how many times a subscription was confirmed (1 after the first connect).
        self.connects = 0

    @classmethod
    def for_staleness(
        cls,
        client: StoreClient,
        channel: str,
        cache: TokenCache[Any],
        metrics: Metrics,
        *,
        staleness: float,
    ) -> InvalidationSubscriber:
        """A subscriber that notices a silently cut link within ``staleness`` seconds.

        A quarter of the bound between PINGs and the rest for the answer: frequent PINGs
        cost one tiny round trip each, while a long answer window keeps a briefly busy
        server (or event loop) from flushing the cache for nothing.
        """
        interval = staleness / 4
        return cls(
            client,
            channel,
            cache,
            metrics,
            ping_interval=interval,
            ping_timeout=staleness - interval,
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def apply(self, data: bytes) -> str:
        """Apply one message to the cache; returns its kind (token, owner or flush)."""
        msg = parse_message(data)
        if msg.kind == "token":
            self._cache.drop(msg.digest)
        elif msg.kind == "owner":
            self._cache.drop_owner(msg.owner)
        else:
            self._cache.flush()
        self._kinds[msg.kind].inc()
        if msg.position is not None and msg.committed_us is not None:
            # Our wall clock against the Redis server's: skew between the hosts can make
            # the difference negative. Count that as no lag (0) rather than drop the
            # sample, so the histogram's count stays the number of messages applied.
            self._lag.observe(max(0.0, time.time() - msg.committed_us / 1e6))
            self._position.set(msg.position)
        return msg.kind

    async def start(self, wait: float = 0.0) -> None:
        """Start the task; optionally wait up to ``wait`` seconds for the subscription."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="patgate-invalidation")
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait)

    async def wait_connected(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), seconds)
        return self.connected

    async def aclose(self) -> None:
        catching_up = self._catching_up
        self._stop_catch_up()
        if catching_up is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await catching_up
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._down()

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._min_backoff
        while True:
            pubsub = self._client.pubsub()
            try:
                await ready(self._client)  # a Cluster's slot map routes the SUBSCRIBE
                await pubsub.subscribe(self._channel)
                await self._listen(pubsub)
            except (*_ERRORS, _Unresponsive) as exc:
                self._errors.inc()
                _log.warning("invalidation subscription lost (%s); cache off", type(exc).__name__)
            except Exception:
                # Never let the subscriber die: without it the cache stays off for good.
                self._errors.inc()
                _log.exception("invalidation subscriber failed; cache off, reconnecting")
            finally:
                self._down()
                with contextlib.suppress(*_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._session_ok:
                backoff = self._min_backoff
                self._session_ok = False
            # Jittered (0.5 to 1.5 times) so processes do not reconnect in lockstep.
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_rx = loop.time()
        ping_sent: float | None = None
        while True:
            # Wake exactly when the next PING is due or the outstanding one expires: a
            # fixed ping_interval tick would add up to one more interval to the bound.
            if ping_sent is None:
                due = last_rx + self._ping_interval
            else:
                due = ping_sent + self._ping_timeout
            msg = await pubsub.get_message(timeout=max(0.0, due - loop.time()))
            now = loop.time()
            if msg is None:
                if ping_sent is not None:
                    if now >= ping_sent + self._ping_timeout:
                        raise _Unresponsive()
                elif now >= last_rx + self._ping_interval:
                    await pubsub.ping()
                    ping_sent = now
                continue
            last_rx = now
            ping_sent = None
            kind = msg["type"]
            if kind == "message":
                self.apply(msg["data"])
            elif kind == "subscribe":
                self._up()
                # Its own task, not awaited here: a command on the client from inside the
                # listen loop left the next get_message() unable to finish on cancel (the
                # subscriber's aclose() hung, redis-py 8.1). Cancelled with the session.
                self._stop_catch_up()
                self._catching_up = asyncio.create_task(
                    self._catch_up(), name="patgate-invalidation-position"
                )

    def _up(self) -> None:
        if self.connects:
            _log.info("invalidation subscription re-established; cache flushed and on")
        self._cache.activate()
        self._kinds["flush"].inc()
        self._session_ok = True
        self.connects += 1
        self._connected.set()
        self._metrics.redis_up.set(1)

    async def _catch_up(self) -> None:
        """The cache was just flushed, so it is current up to the store's position.

        Commits racing this read arrive as messages right after it: for those few
        milliseconds the gauge is ahead of what was applied, never behind."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel() of
            # aclose() when it races the read's completion, and the task never ends.
            async with asyncio.timeout(self._ping_timeout):
                raw: Any = await self._client.get(self._position_key)
            self._position.set(int(raw or 0))
        except (*_ERRORS, TimeoutError, ValueError):
            # Only a gauge: the subscription itself is what the cache trusts.
            _log.debug("invalidation position not read", exc_info=True)

    def _stop_catch_up(self) -> None:
        task, self._catching_up = self._catching_up, None
        if task is not None and not task.done():
            task.cancel()

    def _down(self) -> None:
        self._stop_catch_up()
        if self._connected.is_set() or self._cache.active:
            self._cache.deactivate()
        self._connected.clear()
        self._metrics.redis_up.set(0)
