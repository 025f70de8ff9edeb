"""The token store on Redis/Valkey: a narrow async interface over a few hashes and zsets.

Writes go through one Lua script, ``COMMIT``, that applies a :class:`~.plan.Plan`
atomically: compare-and-set checks on the records it read, uniqueness and limit checks,
the writes, the audit event (XADD) and the cache invalidations (PUBLISH) — all or nothing.
That is what makes name uniqueness and token limits hold under concurrent creates (SPEC:
"atomic in Redis, not check-then-set in Python"), keeps the audit trail complete, and
makes a revoke that could not publish its invalidation fail instead of silently
succeeding. A compare-and-set that lost a race raises :class:`StaleWrite`; callers retry
through :func:`~.retry.retry_stale`.

The data plane's cache-miss path is one ``EVALSHA`` (``LOOKUP``): digest → id → record →
owner's user record in a single round trip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import Conflict, LimitReached, PatgateError, StoreUnavailable
from patgate.middleware.keys import Keys
from patgate.middleware.records import LastUsed, Org, Token, User, user_key

from . import scripts
from .plan import Plan

__all__ = ["StaleWrite", "TokenStore", "redis_errors_wrapped"]


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


def _rows(flat: list[bytes]) -> list[tuple[str, int]]:
    """``[member, score, member, score, ...]`` (WITHSCORES from Lua) as (id, score) rows."""
    return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


class TokenStore:
    """Async access to patgate's records. One instance per process; cheap to share."""

    def __init__(
        self,
        client: StoreClient,
        keys: Keys,
        *,
        events_maxlen: int = 1_000_000,
        durable_writes: bool = True,
        durable_timeout_ms: int = 2000,
    ) -> None:
        self.client = client
        # redis-py types command results as unions for its sync and async clients alike;
        # this handle is the same client, typed loosely for the command calls below.
        self._r: Any = client
        self.keys = keys
        self._events_maxlen = str(events_maxlen)
        self._durable_writes = durable_writes
        self._durable_timeout_ms = durable_timeout_ms
        self._aof_checked = False
        self._commit = client.register_script(scripts.COMMIT)
        self._lookup = client.register_script(scripts.LOOKUP)
        self._touch = client.register_script(scripts.TOUCH)
        self._pages = client.register_script(scripts.PAGES)

    def plan(self) -> Plan:
        return Plan(self.keys)

    async def commit(self, plan: Plan, *, durable: bool = False) -> None:
        """Apply ``plan`` atomically; ``durable`` waits until the AOF has it on disk."""
        with redis_errors_wrapped():
            if durable and self._durable_writes and not self._aof_checked:
                await self._check_aof()
            result = await self._commit(
                keys=[self.keys.events, self.keys.tokens],
                args=[plan.encode(), self._events_maxlen, self.keys.channel],
            )
            status = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if status == "ok":
                if durable and self._durable_writes:
                    await self._wait_aof()
                return
        detail = result[1]
        if status == "stale":
            raise StaleWrite("record changed concurrently")
        if status == "exists":
            raise Conflict("a token with this name already exists for this owner")
        if status == "limit":
            raise LimitReached("token limit reached for this owner; delete a token first")
        raise PatgateError(f"unexpected commit result {status!r} {detail!r}")

    async def _check_aof(self) -> None:
        """Refuse durable writes up front on a server without AOF.

        Checked before the first durable commit rather than after it: failing WAITAOF
        after the write would leave a token whose secret was never shown to anyone."""
        info = await self._r.info("persistence", **await self._home())
        if int(info.get("aof_enabled", 0)) != 1:
            raise StoreUnavailable(
                "the store has AOF (appendonly) disabled, so a new secret could be lost: "
                "enable appendonly or set PATGATE_DURABLE_WRITES=false"
            )
        self._aof_checked = True

    async def _home(self) -> dict[str, Any]:
        """On a Cluster, route a keyless command (INFO, WAITAOF) to the primary of the
        namespace's slot, where the scripts wrote; elsewhere the client's one server."""
        if not isinstance(self.client, RedisCluster):
            return {}
        await self.client.initialize()  # a no-op once the slot map is loaded
        return {"target_nodes": self.client.get_node_from_key(self.keys.tokens)}

    async def _wait_aof(self) -> None:
        # WAITAOF numlocal=1: the write is fsynced to the local AOF before we show the
        # secret, so a crash cannot lose a token whose secret a user already copied.
        try:
            local, _replicas = await self._r.execute_command(
                "WAITAOF", 1, 0, self._durable_timeout_ms, **await self._home()
            )
        except redis_errors.ResponseError as exc:
            # A server without AOF refuses WAITAOF; say what to change instead of a 500.
            if "appendonly" not in str(exc):
                raise
            raise StoreUnavailable(
                "the store has AOF (appendonly) disabled, so a new secret could be lost: "
                "enable appendonly or set PATGATE_DURABLE_WRITES=false"
            ) from exc
        if int(local) < 1:
            raise StoreUnavailable("the store did not confirm the write to its AOF in time")

    # -- data plane ----------------------------------------------------------------------

    async def lookup(self, digest: bytes) -> tuple[bytes, bytes | None, bytes | None] | None:
        """Token record, owner user record and org record for a digest, in one round trip."""
        k = self.keys
        with redis_errors_wrapped():
            found = await self._lookup(keys=[k.index, k.tokens, k.users, k.orgs], args=[digest])
        if not found:
            return None
        record, user, org = found
        return record, (user or None), (org or None)

    async def touch(self, batch: Sequence[tuple[str, LastUsed]]) -> int:
        """Store last-used entries for tokens that still exist; returns how many."""
        if not batch:
            return 0
        args: list[Any] = []
        for token_id, used in batch:
            args.append(token_id)
            args.append(used.encode())
        with redis_errors_wrapped():
            return int(await self._touch(keys=[self.keys.tokens, self.keys.last_used], args=args))

    # -- reads ---------------------------------------------------------------------------

    async def get_token(self, token_id: str) -> Token | None:
        tokens = await self.get_tokens([token_id])
        return tokens[0] if tokens else None

    async def get_tokens(self, ids: Sequence[str]) -> list[Token]:
        """The tokens that exist among ``ids``, in order, with last-used attached."""
        if not ids:
            return []
        with redis_errors_wrapped():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(self.keys.tokens, list(ids))
                pipe.hmget(self.keys.last_used, list(ids))
                records, used = await pipe.execute()
        return [Token.decode(r, u) for r, u in zip(records, used, strict=True) if r is not None]

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

    async def org_owner_keys(self, org_id: str) -> list[str]:
        """Owner keys (``u:<id>``, ``o:<id>``) that hold tokens of ``org_id``, sorted."""
        with redis_errors_wrapped():
            members = await self._r.smembers(self.keys.org_owners(org_id))
        return sorted(m.decode() for m in members)

    async def count(self, zkey: str) -> int:
        with redis_errors_wrapped():
            return int(await self._r.zcard(zkey))

    async def get_user(self, org_id: str, user_id: str) -> User | None:
        """User ``user_id`` of ``org_id``: ids are scoped per org (no cross-org oracle)."""
        with redis_errors_wrapped():
            blob = await self._r.hget(self.keys.users, user_key(org_id, user_id))
        return None if blob is None else User.decode(blob)

    async def get_users(self, org_id: str, ids: Iterable[str]) -> list[User]:
        fields = [user_key(org_id, i) for i in ids]
        if not fields:
            return []
        with redis_errors_wrapped():
            blobs = await self._r.hmget(self.keys.users, fields)
        return [User.decode(b) for b in blobs if b is not None]

    async def org_user_ids(self, org_id: str) -> list[str]:
        with redis_errors_wrapped():
            ids = await self._r.zrange(self.keys.org_users(org_id), 0, -1)
        return [i.decode() for i in ids]

    async def get_org(self, org_id: str) -> Org | None:
        with redis_errors_wrapped():
            blob = await self._r.hget(self.keys.orgs, org_id)
        return None if blob is None else Org.decode(blob)

    async def events(
        self, *, before: str | None = None, count: int = 100
    ) -> list[tuple[str, bytes]]:
        """Audit events newest first, as (stream id, JSON bytes)."""
        if before == "0-0":  # nothing precedes it, and Redis refuses the exclusive "(0-0"
            return []
        with redis_errors_wrapped():
            top = "+" if before is None else "(" + before
            rows = await self._r.xrevrange(self.keys.events, top, "-", count=count)
        return [(i.decode(), fields[b"e"]) for i, fields in rows]

    async def ping(self) -> bool:
        with redis_errors_wrapped():
            return bool(await self._r.ping())
