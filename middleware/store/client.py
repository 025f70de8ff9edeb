"""The token store on Redis/Valkey: a narrow async interface over a few hashes and zsets.

Writes go through one Lua script, ``COMMIT``, that applies a :class:`~.plan.Plan`
atomically: compare-and-set checks on the records it read, uniqueness and limit checks,
the writes, the audit event (XADD) and the cache invalidations (SPUBLISH) — all or nothing.
That is what makes name uniqueness and token limits hold under concurrent creates (SPEC:
"atomic in Redis, not check-then-set in Python"), keeps the audit trail complete, and
makes a revoke that could not publish its invalidation fail instead of silently
succeeding. A compare-and-set that lost a race raises :class:`StaleWrite`; callers retry
through :func:`~.retry.retry_stale`.

The data plane's cache-miss path is one ``EVALSHA`` (``LOOKUP``): digest → id → record →
owner's user record → org record in a single round trip.

Partitions (issue 11, :mod:`patgate.middleware.keys`): every call works in one partition
— a plan in its org's, a lookup in the one the secret's hint names — so each script
touches one Cluster slot. After a commit, on a primary with a replica, ``WAIT`` (or
``WAITAOF`` for a durable write) on the same connection confirms a replica has it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import redis.exceptions as redis_errors
from redis.asyncio.cluster import PipelineCommand, RedisCluster

from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import Conflict, PatgateError, StoreUnavailable
from patgate.middleware.keys import (
    PREVIOUS_SUFFIX,
    Keys,
    Keyspace,
    partition_of_id,
    partition_of_org,
    token_ids_of,
)
from patgate.middleware.records import LastUsed, Org, Token, User, user_key
from patgate.middleware.tokenformat import partition_of_hint

from . import scripts
from .plan import Plan, forwarded

__all__ = [
    "Buried",
    "Found",
    "PlanBatch",
    "StaleWrite",
    "TokenStore",
    "has_sharded_pubsub",
    "redis_errors_wrapped",
]

#: attempts of a replicated commit on a Cluster (MOVED, ASK, TRYAGAIN each cost one) and
#: the pause after a TRYAGAIN: up to ~1 s for a migrating slot's keys to come together.
_CLUSTER_ATTEMPTS = 20
_TRYAGAIN_PAUSE = 0.05

#: TOUCH calls in flight at once during one last-used flush.
_TOUCH_CONCURRENCY = 4

_NO_AOF = (
    "the store has AOF (appendonly) disabled, so a new secret could be lost: "
    "enable appendonly or set PATGATE_DURABLE_WRITES=false"
)


class Found(NamedTuple):
    """What :meth:`TokenStore.lookup` found for a digest: the records, and whether it was
    the previous pepper's digest that matched (the token then wants re-indexing)."""

    record: bytes
    user: bytes | None
    org: bytes | None
    previous_pepper: bool = False


class Buried(NamedTuple):
    """A digest with no token but a tombstone (a deleted or rotated-out secret)."""

    tombstone: bytes
    previous_pepper: bool = False


class StaleWrite(PatgateError):
    """A record changed between read and commit; the service re-reads and retries."""


@contextlib.contextmanager
def redis_errors_wrapped() -> Iterator[None]:
    """Turn redis-py's connection/timeout errors into :class:`StoreUnavailable`."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"store unreachable: {exc.__class__.__name__}") from exc
    except redis_errors.RedisClusterException as exc:
        # Not a RedisError: raised when no seed node answers or the slot map is missing.
        raise StoreUnavailable(f"cluster unreachable: {exc}") from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(("LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN")):
            raise StoreUnavailable(f"store not ready: {exc}") from exc
        raise


async def has_sharded_pubsub(client: StoreClient, probe: str) -> bool:
    """Whether the server knows SPUBLISH: publish nothing to ``probe``, a channel nobody
    subscribes to (redis-py cannot parse COMMAND INFO's nil for an unknown command)."""
    try:
        await client.execute_command("SPUBLISH", probe, "")
    except redis_errors.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise
    return True


def _rows(flat: list[bytes]) -> list[tuple[str, int]]:
    """``[member, score, member, score, ...]`` (WITHSCORES from Lua) as (id, score) rows."""
    return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


class TokenStore:
    """Async access to patgate's records. One instance per process; cheap to share.

    Every method names the partition it works in: by org (lifecycle), by the secret's
    hint (:meth:`lookup`), or by token id (:meth:`get_token` without an org)."""

    def __init__(
        self,
        client: StoreClient,
        keyspace: Keyspace,
        *,
        events_maxlen: int = 1_000_000,
        durable_writes: bool = True,
        durable_timeout_ms: int = 2000,
        durable_replicas: int | None = None,
    ) -> None:
        self.client = client
        # redis-py types command results as unions for its sync and async clients alike;
        # this handle is the same client, typed loosely for the command calls below.
        self._r: Any = client
        self.keyspace = keyspace
        self._events_maxlen = str(events_maxlen)
        self._durable_writes = durable_writes
        self._durable_timeout_ms = durable_timeout_ms
        self._durable_replicas = durable_replicas
        #: per server (its address): how many replicas a write waits for.
        self._durability: dict[str, int] = {}
        #: servers known to have AOF on (durable writes refuse the others up front).
        self._aof_ok: set[str] = set()
        #: SPUBLISH or PUBLISH, found on the first commit that publishes.
        self._publish: str | None = None
        self._commit = client.register_script(scripts.COMMIT)
        self._lookup = client.register_script(scripts.LOOKUP)
        self._forward = client.register_script(scripts.FORWARD)
        self._touch = client.register_script(scripts.TOUCH)
        self._pages = client.register_script(scripts.PAGES)
        self._count = client.register_script(scripts.COUNT)
        self._reuse = client.register_script(scripts.REUSE)
        self._roster = client.register_script(scripts.ROSTER)
        parts = keyspace.partitions
        #: the LOOKUP script's keys per partition, built once (the cache-miss path).
        self._lookup_keys = [[k.index, k.tokens, k.users, k.orgs] for k in parts]

    def keys_for(self, org_id: str) -> Keys:
        """The keys of the partition ``org_id`` lives in."""
        return self.keyspace.for_org(org_id)

    def plan(self, org_id: str) -> Plan:
        """A plan for one atomic change to ``org_id``'s partition."""
        return Plan(self.keyspace.for_org(org_id))

    def plan_partition(self, partition: int) -> Plan:
        """A plan for partition ``partition`` itself (an external token's forward)."""
        return Plan(self.keyspace.partition(partition))

    async def index_entry(self, partition: int, digest: bytes) -> bytes | None:
        """What partition ``partition``'s index holds for ``digest``: a token id, a
        forward (``> <p>``), or None."""
        with redis_errors_wrapped():
            value = await self._r.hget(self.keyspace.partition(partition).index, digest)
        return None if value is None else bytes(value)

    def batch(self) -> PlanBatch:
        """Plans for writes across many orgs, one per partition touched (bulk loads)."""
        return PlanBatch(self)

    async def sharded(self) -> bool:
        """Whether the server has sharded pub/sub (SPUBLISH: Redis 7.0, Valkey 7.2)."""
        return await self._publish_command() == "SPUBLISH"

    async def _publish_command(self) -> str:
        if self._publish is None:
            with redis_errors_wrapped():
                probe = self.keyspace.partition(0).base + "probe"
                sharded = await has_sharded_pubsub(self.client, probe)
                self._publish = "SPUBLISH" if sharded else "PUBLISH"
        return self._publish

    async def commit(self, plan: Plan, *, durable: bool = False) -> None:
        """Apply ``plan`` atomically, then wait — on the same connection — until a
        replica has it, where the primary has one (``WAIT``); ``durable`` waits instead
        until it is fsynced to the AOF here and on that replica (``WAITAOF``).

        So a write the caller saw succeed survives a failover: a revoke is not undone
        by promoting a replica that never got it, and a secret is shown only once it is
        on disk twice (issue 11; docs/scale.md, "Durability")."""
        k = plan.keys
        publish = await self._publish_command() if plan.publish else "PUBLISH"
        keys = [k.events, k.tokens]
        args: list[Any] = [plan.encode(), self._events_maxlen, k.channel, publish]
        try:
            with redis_errors_wrapped():
                result = await self._commit_and_wait(keys, args, durable and self._durable_writes)
        except StoreUnavailable:
            # A failover or a lost replica: look at the replication again next time.
            self._durability.clear()
            raise
        status = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if status == "ok":
            return
        detail = result[1]
        if status == "stale":
            raise StaleWrite("record changed concurrently")
        if status == "exists":
            raise Conflict("a token with this name already exists for this owner")
        raise PatgateError(f"unexpected commit result {status!r} {detail!r}")

    def _wait_commands(self, durable: bool, replicas: int) -> list[tuple[Any, ...]]:
        """What follows COMMIT on its connection; the last one's reply is the verdict.

        ``WAIT`` makes the primary ask its replicas for an acknowledgement at once
        (``REPLCONF GETACK``); ``WAITAOF`` alone waits for their next periodic one, up to
        a second later. So a durable write with replicas sends both: the replica's
        answer to the first carries its fsynced offset too, which is all the second needs
        when the replica fsyncs every write (``appendfsync always``; with ``everysec`` it
        waits for the replica's next fsync, docs/scale.md)."""
        timeout = self._durable_timeout_ms
        if durable:
            first = [("WAIT", replicas, timeout)] if replicas else []
            return [*first, ("WAITAOF", 1, replicas, timeout)]
        if replicas:
            return [("WAIT", replicas, timeout)]
        return []

    async def _commit_and_wait(self, keys: list[str], args: list[Any], durable: bool) -> Any:
        """COMMIT, then WAIT or WAITAOF on the same connection: both wait for the writes
        of *their own* connection, so anything else could confirm nothing. A pipeline
        on a standalone or Sentinel primary; the slot owner's connection on a Cluster."""
        if isinstance(self.client, RedisCluster):
            return await self._commit_and_wait_cluster(keys, args, durable)
        replicas = await self._replicas("", None, durable)
        waits = self._wait_commands(durable, replicas)
        if not waits:
            return await self._commit(keys=keys, args=args)
        async with self.client.pipeline(transaction=False) as pipe:
            await self._commit(keys=keys, args=args, client=pipe)
            for wait in waits:
                pipe.execute_command(*wait)
            result, *_, acked = await pipe.execute(raise_on_error=False)
        return self._acknowledged(result, acked, replicas, durable)

    async def _commit_and_wait_cluster(
        self, keys: list[str], args: list[Any], durable: bool
    ) -> Any:
        assert isinstance(self.client, RedisCluster)
        sha = self._commit.sha
        asking: Any = None  # the migration target an ASK named, for the next attempt
        for _attempt in range(_CLUSTER_ATTEMPTS):
            await self.client.initialize()
            node = asking or self.client.get_node_from_key(keys[1])
            if node is None:  # the slot is not covered: mid-failover
                raise StoreUnavailable("no cluster node serves the partition's slot yet")
            replicas = await self._replicas(node.name, node, durable)
            waits = self._wait_commands(durable, replicas)
            if not waits:
                # The cluster client follows MOVED/ASK and waits out TRYAGAIN itself.
                return await self._commit(keys=keys, args=args)
            # The slot is being moved here: ASKING lets the next command in.
            head = [PipelineCommand(0, "ASKING")] if asking is not None else []
            commit = PipelineCommand(0, "EVALSHA", sha, len(keys), *keys, *args)
            commands = [*head, commit, *(PipelineCommand(0, *w) for w in waits)]
            asking = None
            await node.execute_pipeline(commands)
            result, acked = commit.result, commands[-1].result
            if isinstance(result, redis_errors.NoScriptError):
                await node.execute_command("SCRIPT", "LOAD", scripts.COMMIT)
                continue
            if isinstance(result, redis_errors.AskError):
                # The slot is migrating and the keys are already on the target.
                asking = self.client.get_node(host=result.host, port=result.port)
                continue
            if isinstance(result, redis_errors.MovedError):
                # Resharding or failover moved the slot: nothing was written; reload the
                # slot map and go to the new owner.
                await self.client.nodes_manager.initialize()
                continue
            if isinstance(result, redis_errors.TryAgainError):
                # The partition's keys are split between two nodes mid-migration.
                await asyncio.sleep(_TRYAGAIN_PAUSE)
                continue
            return self._acknowledged(result, acked, replicas, durable)
        raise StoreUnavailable("the cluster kept moving the partition's slot; try again")

    def _acknowledged(self, result: Any, acked: Any, replicas: int, durable: bool) -> Any:
        if isinstance(result, Exception):
            raise result
        status = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if status != "ok":
            return result  # nothing was written, so there is nothing to wait for
        if isinstance(acked, redis_errors.ResponseError) and "appendonly" in str(acked):
            raise StoreUnavailable(_NO_AOF)
        if isinstance(acked, Exception):
            raise acked
        if not durable:
            if int(acked) < replicas:
                raise StoreUnavailable(
                    f"the write is on the primary, but {acked} of {replicas} replica(s) "
                    "confirmed it in time; repeat it once the store is healthy"
                )
            return result
        local, remote = (int(n) for n in acked)
        if local < 1:
            raise StoreUnavailable("the store did not confirm the write to its AOF in time")
        if remote < replicas:
            raise StoreUnavailable(
                f"{remote} of {replicas} replica(s) confirmed the write to their AOF in time "
                "(replicas need appendonly yes; PATGATE_DURABLE_REPLICAS sets how many)"
            )
        return result

    async def _replicas(self, where: str, node: Any, durable: bool) -> int:
        """How many replicas a write waits for on this server (0 or 1: ``auto``), read
        once per server and again after a failure; for a durable write, first refuse a
        server without AOF — failing WAITAOF after the write would leave a token whose
        secret was never shown to anyone."""
        target = {} if node is None else {"target_nodes": node}
        if durable and where not in self._aof_ok:
            info = await self._r.info("persistence", **target)
            if int(info.get("aof_enabled", 0)) != 1:
                raise StoreUnavailable(_NO_AOF)
            self._aof_ok.add(where)
        if where in self._durability:
            return self._durability[where]
        if self._durable_replicas is not None:
            replicas = self._durable_replicas
        else:
            replication = await self._r.info("replication", **target)
            replicas = 1 if int(replication.get("connected_slaves", 0)) > 0 else 0
        self._durability[where] = replicas
        return replicas

    # -- data plane ----------------------------------------------------------------------

    async def lookup(
        self, digest: bytes, partition: int, previous: bytes | None = None
    ) -> Found | Buried | None:
        """Token record, owner user record and org record for a digest, in one round trip
        to the partition the secret's hint names (two for a token ``patgate migrate``
        moved to its org's partition, until it is regenerated). During a pepper rotation
        ``previous`` is the previous pepper's digest, tried in the same call only after
        ``digest`` found nothing; a dead secret's tombstone comes back as :class:`Buried`."""
        target = partition
        with redis_errors_wrapped():
            for hop in range(2):
                found = await self._lookup(
                    keys=self._lookup_script_keys(target, digest, previous),
                    args=[digest] if previous is None else [digest, previous],
                )
                if not found:
                    return None
                head = found[0]
                if head in (b">", ">"):
                    to = forwarded(found[1])
                    if to is None or hop:
                        return None  # malformed, or a forward to a forward: never written
                    target = to
                    continue
                via_previous = found[-1] in (b"p", "p")
                if head in (b"t", "t"):
                    return Buried(found[1], via_previous)
                record, user, org = found[0], found[1], found[2]
                return Found(record, user or None, org or None, via_previous)
        return None

    def _lookup_script_keys(
        self, partition: int, digest: bytes, previous: bytes | None
    ) -> list[str]:
        k = self.keyspace.partitions[partition]
        keys = [*self._lookup_keys[partition], k.tombstone(digest)]
        if previous is not None:
            keys.append(k.tombstone(previous))
        return keys

    async def add_counts(
        self,
        partition: int,
        names: Sequence[tuple[str, str, int]],
        *,
        limit: int,
        window_ms: int,
        announce: bool,
    ) -> list[tuple[int, int]]:
        """Add to windowed counters of one partition: ``(key, name, increment)`` each.
        Returns ``(count, ms left in its window)`` per counter; with ``announce``, a
        counter crossing ``limit`` publishes ``b <name> <until>`` to every process."""
        k = self.keyspace.partitions[partition]
        args: list[Any] = [limit, window_ms]
        if announce:
            args += [k.channel, await self._publish_command()]
        else:
            args += ["", "PUBLISH"]
        for _key, name, delta in names:
            args += [name, delta]
        with redis_errors_wrapped():
            replies = await self._count(keys=[key for key, _, _ in names], args=args)
        return [(int(n), int(left)) for n, left in replies]

    async def reuse_event(
        self, partition: int, token_id: str, event: str, *, every_ms: int = 60_000
    ) -> bool:
        """Append a reuse event to the partition's audit stream unless one for this
        token was written in the last ``every_ms`` (by any process). True if written."""
        k = self.keyspace.partitions[partition]
        with redis_errors_wrapped():
            written = await self._reuse(
                keys=[k.reuse(token_id), k.events], args=[every_ms, event, self._events_maxlen]
            )
        return bool(written)

    async def touch(self, batch: Sequence[tuple[int, str, LastUsed]]) -> int:
        """Store last-used entries ``(partition, token id, used)`` for tokens that still
        exist; returns how many. One script call per partition in the batch."""
        if not batch:
            return 0
        by_partition: dict[int, list[Any]] = {}
        for partition, token_id, used in batch:
            args = by_partition.setdefault(partition, [])
            args.append(token_id)
            args.append(used.encode())
        parts = self.keyspace.partitions
        # A few calls at a time: a batch can name hundreds of partitions, and the data
        # plane's connection pool also serves cache misses.
        gate = asyncio.Semaphore(_TOUCH_CONCURRENCY)

        async def one(p: int, args: list[Any]) -> int:
            async with gate:
                return int(await self._touch(keys=[parts[p].tokens, parts[p].last_used], args=args))

        with redis_errors_wrapped():
            counts = await asyncio.gather(*(one(p, a) for p, a in by_partition.items()))
        return sum(counts)

    # -- reads ---------------------------------------------------------------------------

    async def get_token(self, token_id: str, org_id: str | None = None) -> Token | None:
        """Token ``token_id``: in ``org_id``'s partition when the caller knows its org
        (a token of another org is not found there, as it must not be), else in the
        partition the id names — following a ``patgate migrate`` forward."""
        if org_id is not None:
            tokens = await self.get_tokens(org_id, [token_id])
            return tokens[0] if tokens else None
        partition = partition_of_id(token_id)
        if partition is None:
            return None
        parts = self.keyspace.partitions
        for _hop in range(2):
            k = parts[partition]
            with redis_errors_wrapped():
                found = await self._forward(
                    keys=[k.tokens, k.last_used, k.forwards], args=[token_id]
                )
            if not found:
                return None
            if found[0] not in (b">", ">"):
                return Token.decode(found[0], found[1] or None, found[2] or None)
            target = forwarded(found[1])
            if target is None:
                return None
            partition = target
        return None

    async def get_tokens(self, org_id: str, ids: Sequence[str]) -> list[Token]:
        """The tokens of ``org_id`` that exist among ``ids``, in order, with last-used."""
        if not ids:
            return []
        k = self.keys_for(org_id)
        with redis_errors_wrapped():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(k.tokens, list(ids))
                pipe.hmget(k.last_used, [*ids, *(i + PREVIOUS_SUFFIX for i in ids)])
                records, used = await pipe.execute()
        n = len(ids)
        tokens = [
            Token.decode(r, u, p)
            for r, u, p in zip(records, used[:n], used[n:], strict=True)
            if r is not None
        ]
        return [t for t in tokens if t.org_id == org_id]

    async def token_page(
        self, zkey: str, *, before: tuple[int, str] | None, count: int
    ) -> list[tuple[str, int]]:
        """Token ids from a zset, newest first, strictly after the ``before`` cursor."""
        rows: list[Any]
        with redis_errors_wrapped():
            if before is None:
                rows = await self._r.zrevrangebyscore(
                    zkey, "+inf", "-inf", start=0, num=count, withscores=True
                )
            else:
                score, last_id = before
                # Ties on the same millisecond are ordered by member (descending), so the
                # cursor carries both; fetch from the score inclusive and skip past it.
                # However many members share the cursor's millisecond (bulk creates), keep
                # reading until past them: stopping early would end the listing with a gap.
                rows = []
                offset = 0
                while len(rows) < count:
                    chunk = await self._r.zrevrangebyscore(
                        zkey, score, "-inf", start=offset, num=count + 64, withscores=True
                    )
                    rows += [
                        r
                        for r in chunk
                        if int(r[1]) < score or (int(r[1]) == score and r[0].decode() < last_id)
                    ]
                    if len(chunk) < count + 64:
                        break
                    offset += len(chunk)
                rows = rows[:count]
        return [(m.decode(), int(s)) for m, s in rows]

    async def token_pages(
        self, requests: Sequence[tuple[str, tuple[int, str] | None]], *, count: int
    ) -> list[list[tuple[str, int]]]:
        """:meth:`token_page` for many ``(zset, cursor)`` pairs, in one script call per
        :data:`scripts.PAGES_BATCH` zsets (a pipeline of thousands of commands costs far more in
        redis-py than one reply of the same rows).

        A page shorter than ``count`` means its zset holds nothing more after the cursor.
        Members on the cursor's own millisecond are fetched whole (at most one owner's
        tokens) and filtered here, so no tie is skipped however many share it."""
        pages: list[list[tuple[str, int]]] = []
        for start in range(0, len(requests), scripts.PAGES_BATCH):
            batch = requests[start : start + scripts.PAGES_BATCH]
            args: list[Any] = [count]
            args += ["" if before is None else before[0] for _, before in batch]
            with redis_errors_wrapped():
                replies = await self._pages(keys=[z for z, _ in batch], args=args)
            for (_, before), reply in zip(batch, replies, strict=True):
                rows: list[tuple[str, int]] = []
                if before is not None:
                    ties, reply = reply
                    rows += [r for r in _rows(ties) if r[0] < before[1]]
                rows += _rows(reply)
                pages.append(rows[:count])
        return pages

    async def roster(self, org_id: str) -> tuple[bytes | None, list[Token]]:
        """Every token of ``org_id`` (without last use) and the org's active-token
        version, read together in one script call: what its limits are checked against
        (:meth:`Plan.hold_active_count`)."""
        k = self.keys_for(org_id)
        with redis_errors_wrapped():
            reply = await self._roster(
                keys=[k.active_versions, k.org_owners(org_id), k.tokens],
                args=[org_id, k.owner_tokens("")],
            )
        version, *records = reply
        tokens = [Token.decode(r) for r in records]
        return version or None, [t for t in tokens if t.org_id == org_id]

    async def expiring(
        self, first: int, last: int, partitions: Sequence[int] | None = None
    ) -> dict[tuple[int, int], list[str]]:
        """Token ids of every expiry bucket (Keys.expiring) of the hours ``first`` to
        ``last``, by (partition, hour): one pipelined ZRANGEBYSCORE per partition finds
        its non-empty hours (Keys.expiry_hours), then one GET per bucket found (a
        Cluster splits each pipeline by node). The notification worker's reminders read
        this, never every token. ``partitions``: only these (default: all)."""
        parts = self.keyspace.partitions
        chosen = parts if partitions is None else [parts[p] for p in partitions]
        with redis_errors_wrapped():
            async with self.client.pipeline(transaction=False) as pipe:
                for k in chosen:
                    pipe.zrangebyscore(k.expiry_hours, first, last)
                hours = await pipe.execute()
            buckets = [
                (k.partition, int(h)) for k, found in zip(chosen, hours, strict=True) for h in found
            ]
            if not buckets:
                return {}
            async with self.client.pipeline(transaction=False) as pipe:
                for partition, hour in buckets:
                    pipe.get(parts[partition].expiring(hour))
                entries = await pipe.execute()
        return {
            bucket: token_ids_of(found)
            for bucket, found in zip(buckets, entries, strict=True)
            if found
        }

    async def trim_expiry_hours(self, before: int, partitions: Sequence[int] | None = None) -> None:
        """Forget the hours before ``before`` in the partitions' Keys.expiry_hours."""
        parts = self.keyspace.partitions
        chosen = parts if partitions is None else [parts[p] for p in partitions]
        with redis_errors_wrapped():
            async with self.client.pipeline(transaction=False) as pipe:
                for k in chosen:
                    pipe.zremrangebyscore(k.expiry_hours, "-inf", f"({before}")
                await pipe.execute()

    async def tokens_in(self, partition: int, ids: Sequence[str]) -> list[Token]:
        """The tokens among ``ids`` that partition ``partition`` holds, any org's."""
        if not ids:
            return []
        with redis_errors_wrapped():
            blobs = await self._r.hmget(self.keyspace.partition(partition).tokens, list(ids))
        return [Token.decode(b) for b in blobs if b is not None]

    async def org_owner_keys(self, org_id: str) -> list[str]:
        """Owner keys (``u:<id>``, ``o:<id>``) that hold tokens of ``org_id``, sorted."""
        with redis_errors_wrapped():
            members = await self._r.smembers(self.keys_for(org_id).org_owners(org_id))
        return sorted(m.decode() for m in members)

    async def count(self, zkey: str) -> int:
        with redis_errors_wrapped():
            return int(await self._r.zcard(zkey))

    async def get_user(self, org_id: str, user_id: str) -> User | None:
        """User ``user_id`` of ``org_id``: ids are scoped per org (no cross-org oracle)."""
        with redis_errors_wrapped():
            blob = await self._r.hget(self.keys_for(org_id).users, user_key(org_id, user_id))
        return None if blob is None else User.decode(blob)

    async def get_users(self, org_id: str, ids: Iterable[str]) -> list[User]:
        fields = [user_key(org_id, i) for i in ids]
        if not fields:
            return []
        with redis_errors_wrapped():
            blobs = await self._r.hmget(self.keys_for(org_id).users, fields)
        return [User.decode(b) for b in blobs if b is not None]

    async def org_user_ids(self, org_id: str) -> list[str]:
        with redis_errors_wrapped():
            ids = await self._r.zrange(self.keys_for(org_id).org_users(org_id), 0, -1)
        return [i.decode() for i in ids]

    async def get_org(self, org_id: str) -> Org | None:
        with redis_errors_wrapped():
            blob = await self._r.hget(self.keys_for(org_id).orgs, org_id)
        return None if blob is None else Org.decode(blob)

    async def events(
        self, org_id: str, *, before: str | None = None, count: int = 100
    ) -> list[tuple[str, bytes]]:
        """Audit events of ``org_id``'s partition newest first, as (stream id, JSON
        bytes); the partition's other orgs' events too (the caller filters by org)."""
        if before == "0-0":  # nothing precedes it, and Redis refuses the exclusive "(0-0"
            return []
        with redis_errors_wrapped():
            top = "+" if before is None else "(" + before
            rows = await self._r.xrevrange(self.keys_for(org_id).events, top, "-", count=count)
        return [(i.decode(), fields[b"e"]) for i, fields in rows]

    async def ping(self) -> bool:
        with redis_errors_wrapped():
            return bool(await self._r.ping())

    async def drop_forwards(self, token: Token, *, keep_id: bool = False) -> None:
        """After a delete (or, ``keep_id``, a regenerate) of a token ``patgate migrate``
        moved: remove the forwards its old secret's hint and its id left in other
        partitions. Best effort and harmless to skip: a forward to a token that is gone,
        or to a digest no longer indexed, resolves to nothing."""
        if token.issuer is not None:
            return  # an external token's forward is its own (gateway.lifecycle.tokens)
        home = partition_of_org(token.org_id)
        parts = self.keyspace.partitions
        hint = token.prefix.partition("_")[2][:2]
        with contextlib.suppress(PatgateError, redis_errors.RedisError), redis_errors_wrapped():
            if len(hint) == 2 and hint.isalnum() and hint.isascii():
                at = partition_of_hint(hint)
                if at != home:
                    await self._r.hdel(parts[at].index, token.digest)
            at_id = partition_of_id(token.id)
            if not keep_id and at_id is not None and at_id != home:
                await self._r.hdel(parts[at_id].forwards, token.id)

    async def legacy_data(self) -> bool:
        """Whether the namespace holds data in the layout before partitions (every key
        under ``{<namespace>}``): ``patgate migrate`` moves it."""
        old = self.keyspace.legacy
        with redis_errors_wrapped():
            return bool(await self._r.exists(old.tokens, old.users, old.orgs))


class PlanBatch:
    """One :class:`Plan` per partition touched, for bulk writes across orgs
    (``patgate migrate``, bench seeding): a plan writes one partition, so records of
    many orgs need as many plans. Each commits atomically on its own, one after another
    (so a batch never holds more than one connection); the batch as a whole does not."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store
        self._plans: dict[int, Plan] = {}

    def for_org(self, org_id: str) -> Plan:
        """The batch's plan for ``org_id``'s partition."""
        partition = self._store.keys_for(org_id).partition
        if partition not in self._plans:
            self._plans[partition] = self._store.plan(org_id)
        return self._plans[partition]

    async def commit(self) -> None:
        """Commit every plan and start empty again."""
        plans, self._plans = self._plans, {}
        for plan in plans.values():
            await self._store.commit(plan)
