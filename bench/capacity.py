"""What one primary sustains: the capacity table of docs/scale.md (issue 11).

    python bench/capacity.py                 # ~20 s; prints a markdown table
    python bench/capacity.py --seconds 2     # shorter windows

One fresh embedded Valkey (a real server, AOF on, ``appendfsync always``) plays one
primary. For each operation, client tasks run it as fast as they can for a bounded
window (``--seconds``, and at most ``--max-ops``), and the server's own CPU time
(``INFO cpu``: ``used_cpu_user`` + ``used_cpu_sys``) is read before and after:

* server CPU µs per operation → what one primary core sustains, ``1e6 / µs`` per
  second — the number that scales with primaries (the clients here are one Python
  process, which saturates long before the server does, so its own rate is printed
  beside it but is not the capacity);
* the operations: a lifecycle write (``TokenService.create``: the owner, actor and org
  read, one ``COMMIT`` and ``WAITAOF``), a revoke (read + ``COMMIT``), a cache-miss
  lookup (one ``LOOKUP``) and last-used entries (``TOUCH`` of 500 entries per call, as
  the recorder flushes them).

Everything on 127.0.0.1, bounded in count and time, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.seed import owners, seed_tokens, seed_users
from patgate.gateway.lifecycle import Actor, TokenService
from patgate.gateway.lifecycle.tokens import Owner
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.keys import Keyspace
from patgate.middleware.records import LastUsed
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["Capacity", "capacity", "main"]

_TOUCH_BATCH = 500


@dataclass(frozen=True, slots=True)
class Capacity:
    operation: str
    #: operations completed in the window (entries, for last-used).
    ops: int
    seconds: float
    #: server CPU seconds spent in the window.
    server_cpu: float

    @property
    def client_rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def server_us(self) -> float:
        return self.server_cpu * 1e6 / self.ops if self.ops else float("nan")

    @property
    def per_core(self) -> float:
        """Operations per second one primary core sustains (server CPU bound)."""
        return 1e6 / self.server_us if self.ops and self.server_cpu > 0 else float("nan")


async def _server_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _window(
    client: Any,
    name: str,
    op: Callable[[int], Awaitable[int]],
    *,
    tasks: int,
    seconds: float,
    max_ops: int,
) -> Capacity:
    """Run ``op`` from ``tasks`` tasks until the window or the op budget ends."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        i = n
        while done < max_ops and time.perf_counter() < stop:
            # Not ``done += await op(i)``: that reads ``done`` before the await and
            # writes back over what the other tasks counted meanwhile.
            n = await op(i)
            done += n
            i += tasks

    cpu = await _server_cpu(client)
    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(tasks)))
    elapsed = time.perf_counter() - started
    return Capacity(name, done, elapsed, await _server_cpu(client) - cpu)


async def _measure(url: str, seconds: float, max_ops: int, tokens: int) -> list[Capacity]:
    client = redis_client(url, timeout=60.0)
    r: Any = client
    try:
        store = TokenStore(client, Keyspace("patgate"))
        fmt = TokenFormat()
        people = owners(max(1, tokens // 10), 100)
        await seed_users(store, people)
        seeded = await seed_tokens(store, fmt, tokens, people, keep_secrets=True)
        service = TokenService(store, fmt)
        system = Actor.system(user_agent="patgate-bench")
        results: list[Capacity] = []

        async def create(i: int) -> int:
            uid, org = people[i % len(people)]
            await service.create(
                system,
                name=f"cap-{i}",
                scopes=["threads:read"],
                expiration="30d",
                owner=Owner("user", uid, org),
            )
            return 1

        results.append(
            await _window(
                r, "lifecycle write (create, durable)", create, tasks=16,
                seconds=seconds, max_ops=max_ops,
            )
        )  # fmt: skip

        order = list(range(len(seeded.tokens)))
        random.shuffle(order)

        async def revoke(i: int) -> int:
            if i >= len(order):
                return 0
            await service.revoke(system, seeded.tokens[order[i]].id)
            return 1

        pairs = [(fmt.digest(s), fmt.partition(s)) for s in seeded.secrets]

        async def lookup(i: int) -> int:
            digest, partition = pairs[i % len(pairs)]
            await store.lookup(digest, partition)
            return 1

        results.append(
            await _window(
                r, "cache-miss lookup (LOOKUP)", lookup, tasks=32,
                seconds=seconds, max_ops=max_ops,
            )
        )  # fmt: skip

        now = time.time()
        used = LastUsed(now, "GET", "/threads/1", "127.0.0.1", "bench")
        batches = [
            [
                (store.keys_for(t.org_id).partition, t.id, used)
                for t in seeded.tokens[start : start + _TOUCH_BATCH]
            ]
            for start in range(0, len(seeded.tokens), _TOUCH_BATCH)
        ]

        async def touch(i: int) -> int:
            return await store.touch(batches[i % len(batches)])

        results.append(
            await _window(
                r, "last-used entries (TOUCH, 500 per call)", touch, tasks=4,
                seconds=seconds, max_ops=max_ops * 10,
            )
        )  # fmt: skip
        results.append(
            await _window(
                r, "lifecycle write (revoke)", revoke, tasks=16,
                seconds=seconds, max_ops=min(max_ops, len(order)),
            )
        )  # fmt: skip
        return results
    finally:
        await client.aclose()


def capacity(
    *, seconds: float = 3.0, max_ops: int = 200_000, tokens: int = 20_000
) -> list[Capacity]:
    """Measure on a fresh embedded Valkey (one primary); stops it at the end."""
    with tempfile.TemporaryDirectory(prefix="patgate-cap-") as tmp:
        server = EmbeddedValkey(Path(tmp))
        url = server.start()
        try:
            return asyncio.run(_measure(url, seconds, max_ops, tokens))
        finally:
            with contextlib.suppress(Exception):
                server.stop()


def render(results: list[Capacity]) -> str:
    lines = [
        "| operation | ops in window | client rate /s | server CPU µs/op | one primary core /s |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in results:
        lines.append(
            f"| {c.operation} | {c.ops:,} | {c.client_rate:,.0f} | {c.server_us:.1f} "
            f"| {c.per_core:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="window per operation")
    parser.add_argument("--max-ops", type=int, default=200_000, help="budget per operation")
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens seeded first")
    a = parser.parse_args(argv)
    print(render(capacity(seconds=a.seconds, max_ops=a.max_ops, tokens=a.tokens)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
