"""Redis memory per token: ``used_memory`` delta over ``count`` tokens in a fresh Valkey.

A fresh embedded Valkey (real server, AOF on) holds only this run's data. The orgs and
users are written first (``users`` users in ``orgs`` orgs: 10 tokens each at 100k, the
default per-owner limit), then ``INFO memory`` ``used_memory`` is read, the tokens are
bulk-loaded with ``Plan.put_token`` + ``COMMIT`` in batches, and ``used_memory`` is read
again: (after - before) / count is the table's number. It covers every key a token
touches — the record hash, the digest index, the per-owner name sets and listing zsets,
the per-org owner sets — but not the audit stream (one event per create, capped at
``events_maxlen``), which is measured separately and reported beside it.

The breakdown uses ``MEMORY USAGE <key> SAMPLES 0`` (exact) and ``OBJECT ENCODING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.seed import created_event, owners, seed_tokens, seed_users
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.keys import Keys, Keyspace
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["MemoryResult", "memory_per_token"]

#: the one client factory (issue 10), with room for the benchmark's bulk operations.
_BENCH_TIMEOUT = 60.0

_NAMESPACE = "patgate"


@dataclass(frozen=True, slots=True)
class MemoryResult:
    tokens: int
    users: int
    orgs: int
    used_before: int
    used_after: int
    #: key group → (bytes, encoding), from MEMORY USAGE / OBJECT ENCODING.
    breakdown: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: bytes per audit event in the stream (one per create).
    event_bytes: float = 0.0
    record_bytes: float = 0.0
    seconds: float = 0.0

    @property
    def per_token(self) -> float:
        return (self.used_after - self.used_before) / self.tokens if self.tokens else 0.0


async def _used(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


async def _usage(client: aioredis.Redis, key: str) -> tuple[int, str]:
    raw: Any = client
    size = await raw.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
    encoding = await raw.execute_command("OBJECT", "ENCODING", key)
    return int(size or 0), (encoding or b"-").decode()


async def _group(client: aioredis.Redis, pattern: str) -> tuple[int, str]:
    """Total MEMORY USAGE of the keys matching ``pattern`` and their encodings."""
    total = 0
    encodings: dict[str, int] = {}
    async for key in client.scan_iter(match=pattern, count=1000):
        size, enc = await _usage(client, key.decode())
        total += size
        encodings[enc] = encodings.get(enc, 0) + 1
    return total, ", ".join(f"{n} {e}" for e, n in sorted(encodings.items()))


async def _measure(url: str, count: int, users: int, orgs: int, batch: int) -> MemoryResult:
    client = redis_client(url, timeout=_BENCH_TIMEOUT)
    try:
        store = TokenStore(client, Keyspace(_NAMESPACE))
        # Every partition's keys of each kind (the partition's tag is ``{<ns>:<3 hex>}``).
        keys = Keys(_NAMESPACE)
        every = "{" + _NAMESPACE + ":???}:"
        people = owners(users, orgs)
        await seed_users(store, people)
        await asyncio.sleep(0.05)
        before = await _used(client)
        started = time.perf_counter()
        seeded = await seed_tokens(
            store, TokenFormat(), count, people, keep_secrets=False, batch=batch
        )
        seconds = time.perf_counter() - started
        after = await _used(client)
        breakdown = {
            "records (tok)": await _group(client, every + "tok"),
            "digest index (idx)": await _group(client, every + "idx"),
            "per-owner name sets (nm:*)": await _group(
                client, keys.owner_names("*").replace(keys.base, every)
            ),
            "per-owner zsets (own:*)": await _group(
                client, keys.owner_tokens("*").replace(keys.base, every)
            ),
            "org owner sets (orgown:*)": await _group(
                client, keys.org_owners("*").replace(keys.base, every)
            ),
        }
        record = sum(len(t.encode()) for t in seeded.tokens[:1000]) / min(1000, count)
        event = await _event_bytes(client, seeded.tokens[: min(2000, count)])
        return MemoryResult(
            tokens=count, users=users, orgs=orgs, used_before=before, used_after=after,
            breakdown=breakdown, event_bytes=event, record_bytes=record, seconds=seconds,
        )  # fmt: skip
    finally:
        await client.aclose()


async def _event_bytes(client: aioredis.Redis, tokens: list[Any]) -> float:
    """Bytes per ``token.created`` event in a stream of such events (a scratch key)."""
    if not tokens:
        return 0.0
    key = "{bench}:events-probe"
    async with client.pipeline(transaction=False) as pipe:
        for token in tokens:
            pipe.xadd(key, {"e": created_event(token)})
        await pipe.execute()
    size, _ = await _usage(client, key)
    await client.delete(key)
    return size / len(tokens)


def memory_per_token(
    count: int = 100_000, *, users: int | None = None, orgs: int = 100, batch: int = 2000
) -> MemoryResult:
    """Load ``count`` tokens into a fresh Valkey and measure what they cost."""
    users = users if users is not None else max(1, count // 10)
    with tempfile.TemporaryDirectory(prefix="patgate-mem-") as tmp:
        server = EmbeddedValkey(Path(tmp))
        url = server.start()
        try:
            return asyncio.run(_measure(url, count, users, min(orgs, users), batch))
        finally:
            with contextlib.suppress(Exception):
                server.stop()
