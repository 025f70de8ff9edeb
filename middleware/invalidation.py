"""Cache invalidation over Redis pub/sub: one subscriber task per process.

Messages on the partitions' channels (``Keyspace.channels``, published by the store's
``COMMIT`` script, so a write that cannot publish fails): ``t <hex digest>`` drops one
token, ``u <user id>`` drops a user's tokens, ``*`` flushes. Anything else also flushes —
when in doubt, forget. The store owns the format and its parser
(:func:`patgate.middleware.store.plan.parse_message`).

Sharded pub/sub (issue 11): where the server has it, the channels are shard channels
(``SSUBSCRIBE``), each on the primary that owns its partition's slot, so an invalidation
travels only within its shard instead of over the whole cluster bus. On a Cluster one
session is a connection per primary, each subscribed to the channels of the slots it
owns (one ``SSUBSCRIBE`` per slot: a command may not span slots); the session is live
once every channel is confirmed, and any failure of any of them — an error, an
unanswered PING, or the server's ``sunsubscribe`` when a slot moves (resharding,
failover) — ends the whole session: cache off, slot map reloaded, all resubscribed,
cache flushed and on again. A server without sharded pub/sub gets plain ``SUBSCRIBE``.

Lag and position (issue 11): each message carries its commit time and position. The
subscriber observes ``patgate_invalidation_lag_seconds`` (receive time minus commit time)
and sets ``patgate_invalidation_position`` to the sum over the partitions of the last
position applied — or, after each confirmed subscription (which flushed the cache), to
the sum of the store's current positions (``Keys.position_of(channel)``), so a restarted
process in a quiet namespace is not shown as behind. A process whose position trails its
peers missed or has not yet applied invalidations they did (alert ``PatgateInvalidationBehind``).

The trust rule (docs/data-plane.md): the cache is used only while the subscription is
known to be live. Each confirmed subscription — the first one and every one after a
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
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from .cache import TokenCache
from .connect import StoreClient, ready
from .keys import Keys
from .metrics import Metrics
from .store.client import has_sharded_pubsub
from .store.plan import parse_message

__all__ = ["InvalidationSubscriber"]

_ERRORS = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,  # not a RedisError: no node answers, slot uncovered
    OSError,
    asyncio.TimeoutError,
)
_log = logging.getLogger("patgate.invalidation")


class _Unresponsive(Exception):
    """The subscription connection did not answer a PING in time."""


class _Moved(Exception):
    """The server dropped a subscription (its slot moved): resubscribe everywhere."""


class _Group:
    """One connection of a session and the channels it subscribes to."""

    __slots__ = ("channels", "pubsub", "slots")

    def __init__(self, pubsub: aioredis.client.PubSub, channels: list[str], slots: bool) -> None:
        self.pubsub = pubsub
        self.channels = channels
        #: one SSUBSCRIBE per slot (a Cluster refuses a command that spans slots).
        self.slots = slots


class InvalidationSubscriber:
    """Applies invalidation messages to a :class:`TokenCache`; reconnects with backoff."""

    def __init__(
        self,
        client: StoreClient,
        channels: Sequence[str],
        cache: TokenCache[Any],
        metrics: Metrics,
        *,
        ping_interval: float = 1.0,
        ping_timeout: float = 2.0,
        min_backoff: float = 0.05,
        # Short: an election ends without notice, and every second spent waiting to
        # retry after it is a second of cache misses (issue 11's drills: service back
        # within the promotion time plus 2 s). Jitter keeps the retries apart.
        max_backoff: float = 0.5,
        sharded: bool | None = None,
        on_block: Callable[[str, float], None] | None = None,
    ) -> None:
        self._client = client
        #: ``b <client> <until>`` messages (the failed-auth limit, middleware.limits).
        self.on_block = on_block
        self._channels = list(channels)
        self._cache = cache
        self._metrics = metrics
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        #: None: ask the server on the first session (SPUBLISH known or not).
        self._sharded = sharded
        self._task: asyncio.Task[None] | None = None
        #: the one-off read of the store's positions after each (re)subscribe.
        self._catching_up: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._kinds = {
            kind: metrics.cache_invalidations.labels(kind) for kind in ("token", "owner", "flush")
        }
        self._errors = metrics.redis_errors.labels("subscribe")
        self._lag = metrics.invalidation_lag
        self._position = metrics.invalidation_position
        #: per channel: the last position applied this session; the gauge shows the sum.
        self._positions: dict[bytes, int] = {}
        self._position_sum = 0
        #: whether this session's read of the store's positions is in (the gauge follows
        #: the messages only from then on, so a fresh session never shows a dip).
        self._caught_up = True
        #: connections of the current session still waiting for their confirmations.
        self._unconfirmed = 0
        #: whether the current session got as far as a confirmed subscription.
        self._session_ok = False
        #: how many times a subscription was confirmed (1 after the first connect).
        self.connects = 0

    @classmethod
    def for_staleness(
        cls,
        client: StoreClient,
        channels: Sequence[str],
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
            channels,
            cache,
            metrics,
            ping_interval=interval,
            ping_timeout=staleness - interval,
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def apply(self, data: bytes, channel: bytes | None = None) -> str:
        """Apply one message to the cache; returns its kind (token, owner, flush, block)."""
        msg = parse_message(data)
        if msg.kind == "block":
            # Not an invalidation: another process saw a client cross the failure limit.
            if self.on_block is not None:
                self.on_block(msg.owner, msg.until_ms / 1000)
            return msg.kind
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
            key = b"" if channel is None else channel
            before = self._positions.get(key, 0)
            if msg.position > before:
                self._positions[key] = msg.position
                self._position_sum += msg.position - before
                if self._caught_up:
                    self._position.set(self._position_sum)
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
        fresh_map = False
        while True:
            groups: list[_Group] = []
            try:
                groups = await self._groups(fresh_map)
                await self._session(groups)
            except (*_ERRORS, _Unresponsive, _Moved) as exc:
                self._errors.inc()
                _log.warning("invalidation subscription lost (%s); cache off", type(exc).__name__)
            except Exception:
                # Never let the subscriber die: without it the cache stays off for good.
                self._errors.inc()
                _log.exception("invalidation subscriber failed; cache off, reconnecting")
            finally:
                self._down()
                for group in groups:
                    with contextlib.suppress(*_ERRORS):
                        await group.pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed since redis 8.2
            # A Cluster's next session reloads the slot map: a failover or a reshard is
            # the usual reason this one ended.
            fresh_map = True
            if self._session_ok:
                backoff = self._min_backoff
                self._session_ok = False
            # Jittered (0.5 to 1.5 times) so processes do not reconnect in lockstep.
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._max_backoff)

    async def _groups(self, fresh_map: bool) -> list[_Group]:
        """The session's connections: one per primary on a Cluster with sharded pub/sub,
        else one (the store's server, or any node of a Cluster without it, where PUBLISH
        reaches every node)."""
        client = self._client
        await ready(client)  # a Cluster's slot map routes the subscriptions
        if self._sharded is None:
            self._sharded = await has_sharded_pubsub(client, self._channels[0] + ":probe")
        if not isinstance(client, RedisCluster):
            return [_Group(client.pubsub(), self._channels, slots=False)]
        if fresh_map:
            await client.nodes_manager.initialize()
        if not self._sharded:
            node = client.get_random_node()
            return [_Group(_node_client(node).pubsub(), self._channels, slots=False)]
        by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
        for channel in self._channels:
            node = _owner(client, channel)
            by_node.setdefault(node.name, (node, []))[1].append(channel)
        return [
            _Group(_node_client(node).pubsub(), channels, slots=True)
            for node, channels in by_node.values()
        ]

    async def _session(self, groups: list[_Group]) -> None:
        """Subscribe every group and listen on all of them until one fails."""
        self._unconfirmed = len(groups)
        tasks = [
            asyncio.create_task(self._listen(g), name="patgate-invalidation-node") for g in groups
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise the first failure
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, *_ERRORS, _Unresponsive, _Moved):
                    await task

    async def _subscribe(self, group: _Group) -> str:
        """Send the group's subscriptions (their confirmations arrive as messages);
        returns the confirmation type to count."""
        pubsub = group.pubsub
        if not self._sharded:
            await pubsub.subscribe(*group.channels)
            return "subscribe"
        if not group.slots:
            await pubsub.ssubscribe(*group.channels)
            return "ssubscribe"
        by_slot: dict[int, list[str]] = {}
        for channel in group.channels:
            by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
        for channels in by_slot.values():
            await pubsub.ssubscribe(*channels)
        return "ssubscribe"

    async def _listen(self, group: _Group) -> None:
        pubsub = group.pubsub
        confirm = await self._subscribe(group)
        unconfirmed = len(group.channels)
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
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
            if me is not None and me.cancelling():
                # A cancel that landed as the read timed out: redis-py's read turns the
                # two into its timeout and returns None, swallowing the cancel (Python
                # 3.11), and the session would never end. Honour it.
                raise asyncio.CancelledError()
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
            if kind in ("message", "smessage"):
                self.apply(msg["data"], msg["channel"])
            elif kind == confirm:
                unconfirmed -= 1
                if unconfirmed == 0:
                    self._confirmed()
                elif unconfirmed < 0:
                    # A confirmation nobody asked for: redis-py resubscribed by itself,
                    # and messages in between may be lost. Start over.
                    raise _Moved()
            elif kind in ("sunsubscribe", "unsubscribe"):
                # Sent by the server when the channel's slot moved to another node.
                raise _Moved()

    def _confirmed(self) -> None:
        """One connection has all its channels; the session is up when all have."""
        self._unconfirmed -= 1
        if self._unconfirmed > 0:
            return
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
        # The flush made the cache current: positions start again from the store's
        # (which a failover that lost writes may have set back).
        self._positions = {}
        self._position_sum = 0
        self._caught_up = False
        self._session_ok = True
        self.connects += 1
        self._connected.set()
        self._metrics.redis_up.set(1)

    async def _catch_up(self) -> None:
        """The cache was just flushed, so it is current up to the store's positions.

        Commits racing this read arrive as messages right after it: for those few
        milliseconds the gauge is ahead of what was applied, never behind."""
        names = [Keys.position_of(c) for c in self._channels]
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel() of
            # aclose() when it races the read's completion, and the task never ends.
            async with asyncio.timeout(self._ping_timeout):
                client: Any = self._client
                if isinstance(self._client, RedisCluster):
                    raw = await client.mget_nonatomic(names)
                else:
                    raw = await client.mget(names)
            positions = {c.encode(): int(v or 0) for c, v in zip(self._channels, raw, strict=True)}
        except (*_ERRORS, TimeoutError, ValueError):
            # Only a gauge: the subscription itself is what the cache trusts.
            _log.debug("invalidation positions not read", exc_info=True)
            self._caught_up = True
            return
        # Messages applied while the read was in flight may be ahead of what it saw.
        for channel, position in positions.items():
            self._positions[channel] = max(position, self._positions.get(channel, 0))
        self._position_sum = sum(self._positions.values())
        self._position.set(self._position_sum)
        self._caught_up = True

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


def _owner(client: RedisCluster, key: str) -> ClusterNode:
    node = client.get_node_from_key(key)
    if node is None:  # no slot map, or the slot is not covered (mid-failover)
        raise redis_errors.ConnectionError(f"no node serves the slot of {key}")
    return node


def _node_client(node: ClusterNode) -> aioredis.Redis:
    """A plain client for one Cluster node, with the cluster client's connection options
    (auth, TLS, timeouts: the node's own connection class and arguments) and no retry:
    a silent reconnect could lose messages."""
    options = dict(node.connection_kwargs) | {"retry": Retry(NoBackoff(), 0)}
    pool = aioredis.ConnectionPool(connection_class=node.connection_class, **options)
    return aioredis.Redis(connection_pool=pool)
