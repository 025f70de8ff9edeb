"""The delivery worker: ``patgate notify``, also run inside ``patgate serve`` (issue 14).

Two loops, each safe with any number of replicas:

* **ingest** reads the audit streams (one per partition, ``keys.Keys.events``) through
  one Redis Streams consumer group, ``patgate-notify``: each event goes to one replica.
  For each event it enqueues its jobs in the outbox (:mod:`.outbox`), then
  acknowledges it (``XACK``). A replica killed in between leaves the event pending;
  ``XAUTOCLAIM`` hands it to a live replica once it has been idle ``claim_idle``
  seconds, and enqueuing again changes nothing.
* **deliver** claims due jobs (each leased to one replica), sends them, and marks them
  done, re-schedules them with exponential backoff and jitter, or moves them to the dead
  letters after ``max_attempts`` (or at once for a permanent failure).

Only streams that exist are read: an org's partition has a stream once it has an event,
and a namespace of a few orgs uses a few of the 1,024 partitions, so a poll reads those
(one XREADGROUP on a standalone or Sentinel server; one command per stream on a
Cluster) — not 1,024. Every ``discover`` seconds the worker looks for new streams
(one EXISTS per partition, pipelined) and joins them.

The very first worker of a namespace creates the group at each stream's end (``$``):
history before it is not mailed. Any later group — a stream that appeared since — is
created at its start (``0``): everything in it is newer than the first worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from patgate.middleware.errors import DeliveryFailed, NotFound, PatgateError
from patgate.middleware.store import TokenStore, redis_errors_wrapped

from .endpoints import Endpoints
from .fanout import Fanout
from .mail import MailMessage, MailSender
from .outbox import Channel, Job, Outbox
from .reminders import Reminders
from .webhooks import WebhookSender

__all__ = ["GROUP", "Notifier", "NotifyConfig", "NotifyMetrics"]

log = logging.getLogger("patgate.notify")

GROUP = "patgate-notify"
_CHANNELS: tuple[Channel, ...] = ("mail", "webhook")


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    #: attempts before a job becomes a dead letter.
    max_attempts: int = 8
    #: the backoff's first delay; attempt n waits backoff * 2**(n-1), capped, ±50 %.
    backoff: float = 5.0
    backoff_max: float = 3600.0
    #: how long a claimed job is one replica's before another may take it.
    lease: float = 60.0
    #: seconds an event may sit unacknowledged with a consumer before another claims it.
    claim_idle: float = 30.0
    batch: int = 100
    #: seconds between polls when there was nothing to do.
    poll: float = 0.25
    #: seconds between reads of the expiry index for reminders.
    reminder_interval: float = 60.0
    #: seconds between looks for audit streams that appeared (a new org's partition).
    discover: float = 10.0
    #: the longest pause between polls while nothing happens (it grows from ``poll``).
    idle_poll: float = 1.0


class NotifyMetrics:
    """sent, failed, retried, dead-lettered by channel; queue, lag and dead letters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def counter(name: str, text: str) -> Counter:
            return Counter(name, text, ["channel"], registry=registry)

        self.sent = counter("patgate_notifications_sent_total", "Notifications delivered")
        self.failed = counter("patgate_notifications_failed_total", "Delivery attempts that failed")
        self.retried = counter(
            "patgate_notifications_retried_total", "Failed deliveries scheduled again"
        )
        self.dead = counter(
            "patgate_notifications_dead_lettered_total", "Notifications given up on"
        )
        for channel in _CHANNELS:  # every series exists from the start (alerts, rate())
            for c in (self.sent, self.failed, self.retried, self.dead):
                c.labels(channel)
        self.queued = Gauge(
            "patgate_notify_queue_jobs", "Notification jobs waiting", registry=registry
        )
        self.lag = Gauge(
            "patgate_notify_lag_seconds",
            "How long the oldest due notification has waited (0: none waiting)",
            registry=registry,
        )
        self.stream_lag = Gauge(
            "patgate_notify_stream_lag",
            "Audit events not yet read by the notification consumer group",
            registry=registry,
        )
        self.dead_letters = Gauge(
            "patgate_notify_dead_letters", "Notifications in the dead letters", registry=registry
        )


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"


class Notifier:
    def __init__(
        self,
        store: TokenStore,
        outbox: Outbox,
        endpoints: Endpoints,
        fanout: Fanout,
        *,
        mail: MailSender | None,
        webhooks: WebhookSender,
        metrics: NotifyMetrics,
        config: NotifyConfig | None = None,
        clock: Callable[[], float] = time.time,
        consumer: str | None = None,
        reminders: Reminders | None = None,
    ) -> None:
        self.store = store
        self.reminders = reminders
        self.outbox = outbox
        self.endpoints = endpoints
        self.fanout = fanout
        self.mail = mail
        self.webhooks = webhooks
        self.metrics = metrics
        self.config = config or NotifyConfig()
        self.clock = clock
        self.consumer = consumer or _consumer_name()
        self._r: Any = store.client
        self._all = [k.events for k in store.keyspace.partitions]
        #: the audit streams that exist and have the group: the ones polled.
        self._streams: list[str] = []
        self._partition_of = {k.events: k.partition for k in store.keyspace.partitions}
        self._last_discover = -math.inf
        self._cluster = isinstance(store.client, RedisCluster)
        self._last_claim = 0.0
        self._last_gauges = 0.0
        self._last_reminders = -math.inf

    # -- the consumer group --------------------------------------------------------------

    async def ensure_groups(self) -> None:
        """Join every audit stream that exists, creating the group where it is missing
        (at the stream's end for the namespace's first worker, else at its start)."""
        self._last_discover = self.clock()
        with redis_errors_wrapped():
            # The namespace's first worker ever: history before it is not notified.
            first = await self._r.set(self.outbox.keys.base + "since", "1", nx=True)
            async with self._r.pipeline(transaction=False) as pipe:
                for stream in self._all:
                    pipe.exists(stream)
                exists = await pipe.execute()
            found = [s for s, e in zip(self._all, exists, strict=True) if e]
            new = [s for s in found if s not in set(self._streams)]
            if not new:
                return
            async with self._r.pipeline(transaction=False) as pipe:
                for stream in new:
                    pipe.xgroup_create(stream, GROUP, id="$" if first else "0")
                results = await pipe.execute(raise_on_error=False)
        for stream, result in zip(new, results, strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise PatgateError(f"could not create the notification group: {result}")
            self._streams.append(stream)

    async def _read(self) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """New events for this consumer, from every stream. One XREADGROUP over all
        of them where the server allows (standalone, Sentinel); a Cluster refuses keys
        of several slots in one command, so there one per stream, pipelined."""
        count = self.config.batch
        if not self._streams:
            return []
        with redis_errors_wrapped():
            if not self._cluster:
                reply = await self._r.xreadgroup(
                    GROUP, self.consumer, dict.fromkeys(self._streams, ">"), count=count
                )
            else:
                async with self._r.pipeline(transaction=False) as pipe:
                    for stream in self._streams:
                        pipe.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count)
                    replies = await pipe.execute(raise_on_error=False)
                reply = []
                for r in replies:
                    if isinstance(r, Exception):
                        raise r
                    reply.extend(r or [])
        return [(_text(stream), entries) for stream, entries in reply or []]

    async def _claim_stale(self) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """Events another (dead) consumer read and never acknowledged."""
        idle = int(self.config.claim_idle * 1000)
        out: list[tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]] = []
        if not self._streams:
            return out
        with redis_errors_wrapped():
            async with self._r.pipeline(transaction=False) as pipe:
                for stream in self._streams:
                    pipe.xautoclaim(
                        stream, GROUP, self.consumer, idle, "0-0", count=self.config.batch
                    )
                replies = await pipe.execute(raise_on_error=False)
        for stream, reply in zip(self._streams, replies, strict=True):
            if isinstance(reply, redis_errors.ResponseError) and "NOGROUP" in str(reply):
                continue
            if isinstance(reply, Exception):
                raise reply
            entries = [e for e in reply[1] if e is not None and e[1] is not None]
            if entries:
                out.append((stream, entries))
        return out

    async def ingest_once(self) -> int:
        """Read, enqueue and acknowledge one batch; how many events it handled."""
        now = self.clock()
        if now - self._last_discover >= self.config.discover:
            await self.ensure_groups()
        batches = await self._read()
        if now - self._last_claim >= self.config.claim_idle / 2:
            self._last_claim = now
            batches += await self._claim_stale()
        handled = 0
        for stream, entries in batches:
            partition = self._partition_of[stream]
            acked = []
            for stream_id, fields in entries:
                sid = _text(stream_id)
                try:
                    event = json.loads(fields[b"e"])
                except (KeyError, ValueError):
                    acked.append(sid)  # not an event this worker can read: nothing to do
                    continue
                for job in await self.fanout.jobs(f"{partition:03x}-{sid}", event):
                    await self.outbox.enqueue(job, now)
                acked.append(sid)
                handled += 1
            if acked:
                with redis_errors_wrapped():
                    await self._r.xack(stream, GROUP, *acked)
        return handled

    # -- delivery ------------------------------------------------------------------------

    async def deliver_once(self) -> int:
        """Claim and deliver one batch of due jobs; how many it tried."""
        jobs = await self.outbox.claim(self.clock(), self.config.lease, self.config.batch)
        for job in jobs:
            await self._deliver(job)
        return len(jobs)

    async def _deliver(self, job: Job) -> None:
        try:
            if job.channel == "mail":
                await self._send_mail(job)
            else:
                await self._send_webhook(job)
        except DeliveryFailed as exc:
            await self._failed(job, exc)
            return
        except NotFound:
            # Its endpoint was deleted: nobody to deliver to any more.
            await self.outbox.done(job)
            return
        except PatgateError:
            raise  # the store: the job stays leased, and is due again after its lease
        except Exception as exc:
            # A job this worker cannot handle (a bug, a malformed job): a dead letter to
            # look at, rather than a job retried forever or a worker that stops.
            log.exception("notification %s failed unexpectedly", job.key)
            failure = DeliveryFailed(f"internal error: {type(exc).__name__}", retryable=False)
            await self._failed(job, failure)
            return
        await self.outbox.done(job)
        self.metrics.sent.labels(job.channel).inc()

    async def _send_mail(self, job: Job) -> None:
        if self.mail is None:
            raise DeliveryFailed("mail is not configured (PATGATE_SMTP_HOST)", retryable=True)
        c = job.content
        await self.mail.send(
            MailMessage(
                to=tuple(job.target),
                subject=c["subject"],
                text=c["text"],
                html=c["html"],
                message_id=job.key,
            )
        )

    async def _send_webhook(self, job: Job) -> None:
        assert isinstance(job.target, str)
        endpoint = await self.endpoints.find(job.org_id, job.target)
        attempt = await self.webhooks.deliver(
            endpoint.url, endpoint.secret, job.key, job.content["body"].encode()
        )
        await self.outbox.log_attempt(endpoint.id, {**attempt.to_json(), "id": job.key})
        if not attempt.ok:
            raise DeliveryFailed(attempt.error or "failed", retryable=attempt.retryable)

    async def _failed(self, job: Job, exc: DeliveryFailed) -> None:
        now = self.clock()
        job.attempts += 1
        job.last_error = exc.detail
        self.metrics.failed.labels(job.channel).inc()
        if not exc.retryable or job.attempts >= self.config.max_attempts:
            await self.outbox.bury(job, now)
            self.metrics.dead.labels(job.channel).inc()
            log.warning(
                "notification %s (%s) dead after %d attempt(s): %s",
                job.key,
                job.channel,
                job.attempts,
                exc.detail,
            )
            return
        cfg = self.config
        delay = min(cfg.backoff_max, cfg.backoff * 2 ** (job.attempts - 1))
        delay *= random.uniform(0.5, 1.5)  # jitter: replicas and jobs do not retry in step
        if await self.outbox.retry(job, now + delay):
            self.metrics.retried.labels(job.channel).inc()

    # -- the loop ------------------------------------------------------------------------

    async def update_gauges(self) -> None:
        now = self.clock()
        n, first_due = await self.outbox.queued()
        self.metrics.queued.set(n)
        self.metrics.lag.set(max(0.0, now - first_due) if first_due is not None else 0.0)
        self.metrics.dead_letters.set(await self.outbox.dead_count())
        lag = 0
        with contextlib.suppress(PatgateError, redis_errors.RedisError):
            async with self._r.pipeline(transaction=False) as pipe:
                for stream in self._streams:
                    pipe.xinfo_groups(stream)
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                for group in reply if isinstance(reply, list) else []:
                    if _text(group.get("name", b"")) == GROUP:
                        lag += int(group.get("lag") or 0)
            self.metrics.stream_lag.set(lag)

    async def run_once(self) -> int:
        done = await self.ingest_once()
        now = self.clock()
        if self.reminders is not None and now - self._last_reminders >= (
            self.config.reminder_interval
        ):
            self._last_reminders = now
            # Only partitions with an audit stream can hold tokens (every token write
            # appends an event).
            partitions = [self._partition_of[s] for s in self._streams]
            done += await self.reminders.tick(now, partitions)
        done += await self.deliver_once()
        now = self.clock()
        if now - self._last_gauges >= 5.0:
            self._last_gauges = now
            await self.update_gauges()
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set. A store outage pauses it (logged), never ends it.
        Polls every ``poll`` seconds while there is work, backing off to ``idle_poll``
        while there is none (an idle replica costs a few commands a second)."""
        await self._until_groups(stop)
        pause = self.config.poll
        while not stop.is_set():
            try:
                busy = await self.run_once()
            except PatgateError as exc:
                log.warning("notification worker: %s; retrying", exc)
                busy = 0
            except Exception:  # never let one bad step end the worker inside serve
                log.exception("notification worker step failed; retrying")
                busy = 0
            if busy:
                pause = self.config.poll
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(self.config.idle_poll, pause * 2)

    async def _until_groups(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.ensure_groups()
                return
            except PatgateError as exc:
                log.warning("notification worker: %s; retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
