"""The shared bench environment: one real embedded Valkey and the seeded tokens.

A fresh :class:`~gateway.embedded.EmbeddedValkey` (real ``valkey-server``, AOF on, Unix
socket) in a temporary directory, namespace ``bench``, one org, ``users`` users, and:

* ``token`` — one token with ``items:read``, used by the throughput rows;
* ``ten`` / ``many`` — 10 and ``many`` (10,000) tokens for the last-used rows;
* ``revocable`` — tokens the revocation row revokes, one per round;
* the naive peer's copies of ``token`` (``naive:bench:<sha256>`` → JSON).

:func:`seeded_env` seeds the same data into any store URL (the Sentinel and Cluster rows
start their own topologies: bench/topologies.py). Secrets stay in memory and in wrk's
temporary token file; nothing prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.seed import Seeded, owners, seed_naive, seed_tokens, seed_users
from patgate.middleware.connect import ready
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.keys import Keyspace
from patgate.middleware.records import Token
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["NAMESPACE", "BenchEnv", "bench_env", "seeded_env"]

#: the one client factory (issue 10), with room for the benchmark's bulk operations.
_BENCH_TIMEOUT = 60.0

NAMESPACE = "bench"


@dataclass(slots=True)
class BenchEnv:
    redis_url: str
    data_dir: Path
    token: str
    ten: list[str]
    many: list[str]
    revocable: list[Token]
    revocable_secrets: list[str]
    namespace: str = NAMESPACE
    extra_env: dict[str, str] = field(default_factory=dict)

    def patgate_env(self, **extra: str) -> dict[str, str]:
        """Environment for a patgate server process sharing this store and namespace."""
        return {
            "PATGATE_REDIS_URL": self.redis_url,
            "PATGATE_NAMESPACE": self.namespace,
            "PATGATE_LOG_LEVEL": "warning",
            **self.extra_env,
            **extra,
        }


async def _seed(url: str, many: int, revocable: int, users: int, orgs: int) -> tuple[Seeded, ...]:
    client = redis_client(url, timeout=_BENCH_TIMEOUT)
    try:
        # A Cluster client loads its slot map first: the seeding commits run concurrently
        # (bench/spread.py says why that matters with redis-py 8.1). No-op otherwise.
        await ready(client)
        store = TokenStore(client, Keyspace(NAMESPACE))
        fmt = TokenFormat()
        people = owners(users, orgs)
        await seed_users(store, people)
        one = await seed_tokens(store, fmt, 1, people, label="one")
        ten = await seed_tokens(store, fmt, 10, people, label="ten")
        lots = await seed_tokens(store, fmt, many, people, label="many")
        rev = await seed_tokens(store, fmt, revocable, people, label="revoke")
        await seed_naive(client, NAMESPACE, fmt, one)
        return one, ten, lots, rev
    finally:
        await client.aclose()


def seeded_env(
    url: str,
    data_dir: Path,
    *,
    many: int = 10_000,
    revocable: int = 200,
    users: int = 1000,
    orgs: int = 1,
    extra_env: Mapping[str, str] | None = None,
) -> BenchEnv:
    """Seed the store at ``url`` (any mode: standalone, Sentinel, Cluster) and describe it;
    ``users`` users round-robin over ``orgs`` orgs (one org: every token in one partition)."""
    one, ten, lots, rev = asyncio.run(_seed(url, many, revocable, users, orgs))
    return BenchEnv(
        redis_url=url, data_dir=data_dir, token=one.secrets[0], ten=ten.secrets,
        many=lots.secrets, revocable=rev.tokens, revocable_secrets=rev.secrets,
        extra_env=dict(extra_env or {}),
    )  # fmt: skip


@contextlib.contextmanager
def bench_env(
    *,
    many: int = 10_000,
    revocable: int = 200,
    users: int = 1000,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[BenchEnv]:
    """Start the store, seed it, yield the environment; stop and delete it afterwards."""
    with tempfile.TemporaryDirectory(prefix="patgate-bench-") as tmp:
        server = EmbeddedValkey(Path(tmp) / "store")
        url = server.start()
        try:
            yield seeded_env(url, Path(tmp), many=many, revocable=revocable, users=users,
                             extra_env=extra_env)  # fmt: skip
        finally:
            server.stop()
