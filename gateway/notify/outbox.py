"""The notification outbox: durable jobs, leased to one worker at a time (issue 14).

Every notification — one mail of one event, one webhook delivery of one event to one
endpoint — is a **job** with a stable key, its idempotency key: the ``Message-ID`` of a
mail, the ``webhook-id`` of a webhook. All of it lives under one hash tag,
``{<namespace>:notify}``, so each step below is one atomic script even on a Cluster:

==========  ============================================================================
key         holds
==========  ============================================================================
jobs        HASH key → job JSON (channel, target, content, attempts, last error)
queue       ZSET key → when it may run next (ms): due now, backed off, or leased
done        STRING per key, with a TTL: delivered — a re-read event enqueues it no more
dead        HASH key → the job as it died; ``deadat`` ZSET key → when (listing order)
att:<id>    LIST of a webhook endpoint's last delivery attempts (newest first)
==========  ============================================================================

**At least once.** A job is enqueued (``ENQUEUE``: skipped when done or already queued)
before its event is acknowledged on the audit stream, so a worker killed in between
leaves the event pending, to be claimed again — and the re-enqueue changes nothing.
Claiming (``CLAIM``) does not remove a job: it pushes its score a lease into the future,
so a worker killed mid-delivery leaves it to come due again when the lease runs out.
Only a delivery marks it done (``DONE``); a failure re-schedules it with backoff
(``RETRY``) or, after the last attempt or a permanent failure, moves it to the dead
letters (``BURY``), from where the API and CLI list and retry it (``REVIVE``).

Two workers never hold one job at once (the lease), so a job is delivered twice only
when a delivery outlives its lease or a worker dies after delivering and before
``DONE`` — what at-least-once allows, and the idempotency key de-duplicates.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from patgate.middleware.store import redis_errors_wrapped

__all__ = ["Channel", "Job", "Outbox", "OutboxKeys"]

Channel = Literal["mail", "webhook"]
#: how long a delivered job's key is remembered (a re-read event must not resend it).
DONE_TTL_MS = 7 * 86_400_000

_ENQUEUE = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: queue, jobs. ARGV: now ms, lease ms, how many. Due jobs get the lease as score.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, key in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), key)
  local job = redis.call('HGET', KEYS[2], key)
  if job then out[#out + 1] = job else redis.call('ZREM', KEYS[1], key) end
end
return out
"""

# KEYS: queue, jobs, done. ARGV: key, done ttl ms.
_DONE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: queue, jobs. ARGV: key, job JSON, next ms. Only a job still queued (not revived or
# buried meanwhile by someone else) is re-scheduled.
_RETRY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: queue, jobs, dead, deadat. ARGV: key, job JSON, now ms.
_BURY = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
"""

# KEYS: dead, deadat, jobs, queue. ARGV: key, job JSON (attempts reset), now ms.
_REVIVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class OutboxKeys:
    namespace: str = "patgate"

    @property
    def base(self) -> str:
        return "{" + self.namespace + ":notify}:"

    @property
    def jobs(self) -> str:
        return self.base + "jobs"

    @property
    def queue(self) -> str:
        return self.base + "queue"

    def done(self, key: str) -> str:
        return self.base + "done:" + key

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def dead_at(self) -> str:
        return self.base + "deadat"

    def attempts(self, endpoint_id: str) -> str:
        return self.base + "att:" + endpoint_id

    def endpoints(self, org_id: str) -> str:
        """HASH endpoint id → endpoint JSON, one per org (``notify.endpoints``)."""
        return self.base + "hooks:" + org_id

    def reminded(self, key: str) -> str:
        """STRING per (token, lead, expiry): that reminder was enqueued (``reminders``)."""
        return self.base + "rem:" + key


@dataclass(slots=True)
class Job:
    """One notification to deliver. ``key`` is its idempotency key; ``content`` is what
    the channel needs (the rendered mail, or the webhook's event type and JSON body) —
    never a secret: mails carry the masked prefix, webhooks the event's public fields."""

    key: str
    channel: Channel
    org_id: str
    #: the mail's recipients, or the webhook endpoint's id
    target: list[str] | str
    content: dict[str, Any]
    event_type: str
    created_at: float
    attempts: int = 0
    last_error: str | None = None
    dead_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, blob: bytes | str) -> Job:
        return cls(**json.loads(blob))

    def to_json(self) -> dict[str, Any]:
        """What the API shows of a job (a dead letter): everything but its content."""
        return {
            "id": self.key,
            "channel": self.channel,
            "org_id": self.org_id,
            "target": self.target,
            "event_type": self.event_type,
            "created_at": self.created_at,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "dead_at": self.dead_at,
        }


class Outbox:
    """The outbox's operations, each one script (or command) on ``{<ns>:notify}``."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.r: Any = client
        self.keys = OutboxKeys(namespace)
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._done = client.register_script(_DONE)
        self._retry = client.register_script(_RETRY)
        self._bury = client.register_script(_BURY)
        self._revive = client.register_script(_REVIVE)

    async def enqueue(self, job: Job, now: float) -> bool:
        """Queue ``job`` to run now, unless it was delivered or is queued already."""
        k = self.keys
        with redis_errors_wrapped():
            added = await self._enqueue(
                keys=[k.jobs, k.queue, k.done(job.key)],
                args=[job.key, job.encode(), int(now * 1000)],
            )
        return bool(added)

    async def claim(self, now: float, lease: float, count: int) -> list[Job]:
        """Up to ``count`` due jobs, each leased to the caller for ``lease`` seconds."""
        k = self.keys
        with redis_errors_wrapped():
            blobs = await self._claim(
                keys=[k.queue, k.jobs], args=[int(now * 1000), int(lease * 1000), count]
            )
        return [Job.decode(b) for b in blobs]

    async def done(self, job: Job) -> None:
        k = self.keys
        with redis_errors_wrapped():
            await self._done(keys=[k.queue, k.jobs, k.done(job.key)], args=[job.key, DONE_TTL_MS])

    async def retry(self, job: Job, at: float) -> bool:
        k = self.keys
        with redis_errors_wrapped():
            moved = await self._retry(
                keys=[k.queue, k.jobs], args=[job.key, job.encode(), int(at * 1000)]
            )
        return bool(moved)

    async def bury(self, job: Job, now: float) -> None:
        job.dead_at = now
        k = self.keys
        with redis_errors_wrapped():
            await self._bury(
                keys=[k.queue, k.jobs, k.dead, k.dead_at],
                args=[job.key, job.encode(), int(now * 1000)],
            )

    async def dead_letter(self, key: str) -> Job | None:
        """The dead letter ``key``, or None."""
        with redis_errors_wrapped():
            blob = await self.r.hget(self.keys.dead, key)
        return None if blob is None else Job.decode(blob)

    async def revive(self, key: str, now: float) -> Job | None:
        """A dead letter back into the queue with its attempts reset; None if unknown."""
        k = self.keys
        job = await self.dead_letter(key)
        if job is None:
            return None
        job.attempts, job.last_error, job.dead_at = 0, None, None
        with redis_errors_wrapped():
            moved = await self._revive(
                keys=[k.dead, k.dead_at, k.jobs, k.queue],
                args=[key, job.encode(), int(now * 1000)],
            )
        return job if moved else None

    async def dead_letters(self, org_id: str | None, limit: int = 100) -> list[Job]:
        """Dead letters newest first (of one org, or all for the operator)."""
        k = self.keys
        with redis_errors_wrapped():
            keys = await self.r.zrevrange(k.dead_at, 0, -1)
            if not keys:
                return []
            blobs = await self.r.hmget(k.dead, keys)
        jobs = [Job.decode(b) for b in blobs if b is not None]
        return [j for j in jobs if org_id is None or j.org_id == org_id][:limit]

    async def dead_count(self) -> int:
        with redis_errors_wrapped():
            return int(await self.r.hlen(self.keys.dead))

    async def queued(self) -> tuple[int, float | None]:
        """How many jobs are queued, and the oldest one's due time (seconds), if any."""
        k = self.keys
        with redis_errors_wrapped():
            n = int(await self.r.zcard(k.queue))
            first = await self.r.zrange(k.queue, 0, 0, withscores=True)
        return n, (float(first[0][1]) / 1000 if first else None)

    async def log_attempt(self, endpoint_id: str, attempt: dict[str, Any], keep: int = 50) -> None:
        key = self.keys.attempts(endpoint_id)
        with redis_errors_wrapped():
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.lpush(key, json.dumps(attempt, separators=(",", ":")))
                pipe.ltrim(key, 0, keep - 1)
                await pipe.execute()

    async def attempts(self, endpoint_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with redis_errors_wrapped():
            rows = await self.r.lrange(self.keys.attempts(endpoint_id), 0, limit - 1)
        return [json.loads(r) for r in rows]
