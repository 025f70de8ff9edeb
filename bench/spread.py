"""Key and memory spread across the primaries of a real 3-primary Cluster (issue 11).

    python bench/spread.py                          # 100,000 tokens in 100 orgs
    python bench/spread.py --tokens 10000 --orgs 20

Starts a local Cluster (3 primaries, 3 replicas: ``tests._topologies.start_cluster``) in
a temporary directory, reads ``INFO memory`` on every primary, then seeds it the way the
service layer writes (``bench.seed``: one ``COMMIT`` per partition per batch):

* ``orgs`` orgs and ``tokens / 10`` users round-robin over them (10 tokens per user);
* ``tokens`` tokens round-robin over the users, each with its ``token.created`` audit
  event in its partition's stream;
* a last-used entry for every token (``TokenStore.touch``, as the data plane's flush).

Once every replica has caught up, it reads each primary's ``DBSIZE`` and ``used_memory``
and reports each primary's share of the keys and of the memory growth against the issue's
target, 33 % ± 10 % (percentage points) each. ``used_memory`` also counts buffers that
are not data — the replication backlog fills up to ``repl-backlog-size`` (10 MB) on every
primary alike, which evens the shares out — so the memory share is also reported without
them (``used_memory`` minus the replication buffers, client buffers, AOF buffer and
cluster links), and the memory verdict needs both. Per primary it also says how many
slots it owns, how many orgs hash to it, and how many partitions and slots hold data.

Bounded (every wait has a deadline), 127.0.0.1 only, and it stops exactly the servers it
started. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.report import Row
from bench.seed import owners, seed_tokens, seed_users
from bench.topologies import topology
from patgate.middleware.connect import ready
from patgate.middleware.keys import PARTITIONS, Keyspace, partition_of_org
from patgate.middleware.records import LastUsed
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = [
    "TARGET",
    "TOLERANCE",
    "PrimaryShare",
    "SpreadResult",
    "main",
    "measure_spread",
    "render",
    "spread_details",
    "spread_rows",
]

#: the issue's target: each primary holds a third of the keys and of the memory ...
TARGET = 1 / 3
#: ... within ten percentage points.
TOLERANCE = 0.10
_NAMESPACE = "patgate"
_BENCH_TIMEOUT = 60.0
_SYNC_TIMEOUT = 30.0
#: INFO memory fields that are buffers, not data (mem_total_replication_buffers holds
#: the backlog and the replicas' output buffers, which share their blocks).
_BUFFERS = ("mem_total_replication_buffers", "mem_clients_normal", "mem_aof_buffer",
            "mem_cluster_links")  # fmt: skip


@dataclass(frozen=True, slots=True)
class PrimaryShare:
    address: str
    #: hash slots this primary owns.
    slots: int
    #: orgs whose partition hashes to one of its slots.
    orgs: int
    #: partitions / slots holding at least one key.
    partitions: int
    data_slots: int
    keys: int
    used_before: int
    used_after: int
    buffers_before: int
    buffers_after: int

    @property
    def memory(self) -> int:
        """``used_memory`` growth over the seeding."""
        return self.used_after - self.used_before

    @property
    def data_memory(self) -> int:
        """``used_memory`` growth without the buffers' growth (:data:`_BUFFERS`)."""
        return self.memory - (self.buffers_after - self.buffers_before)


@dataclass(frozen=True, slots=True)
class SpreadResult:
    tokens: int
    users: int
    orgs: int
    #: partitions the orgs hash to (fewer than ``orgs`` when two orgs share one).
    org_partitions: int
    primaries: list[PrimaryShare]
    events: int
    last_used: int
    seconds: float

    @property
    def keys(self) -> int:
        return sum(p.keys for p in self.primaries)

    def shares(self, what: str) -> list[float]:
        """Each primary's fraction of ``keys``, ``memory`` or ``data_memory``."""
        values = [float(getattr(p, what)) for p in self.primaries]
        total = sum(values)
        return [v / total if total else 0.0 for v in values]

    def within(self, what: str) -> bool:
        return all(abs(s - TARGET) <= TOLERANCE for s in self.shares(what))

    @property
    def keys_ok(self) -> bool:
        return self.within("keys")

    @property
    def memory_ok(self) -> bool:
        return self.within("memory") and self.within("data_memory")


def _slot_owners(client: redis.Redis) -> dict[str, list[tuple[int, int]]]:
    """Primary ``host:port`` → its slot ranges (CLUSTER SLOTS)."""
    owned: dict[str, list[tuple[int, int]]] = {}
    raw: Any = client  # redis-py leaves execute_command untyped
    for entry in raw.execute_command("CLUSTER SLOTS"):
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        owned.setdefault(f"{host}:{int(primary[1])}", []).append((start, end))
    return owned


def _owner(owned: dict[str, list[tuple[int, int]]], slot: int) -> str:
    for address, ranges in owned.items():
        if any(start <= slot <= end for start, end in ranges):
            return address
    raise RuntimeError(f"no primary owns slot {slot}")


def _node(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host, int(port), socket_timeout=10)


def _memory(client: redis.Redis) -> tuple[int, int]:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"]), sum(int(info.get(f, 0)) for f in _BUFFERS)


def _wait_replicas(clients: Sequence[redis.Redis]) -> None:
    """Until every primary's replicas acknowledged its whole replication stream."""
    deadline = time.monotonic() + _SYNC_TIMEOUT
    while True:
        behind = 0
        for client in clients:
            info: dict[str, Any] = client.info("replication")
            offset = int(info.get("master_repl_offset", 0))
            replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
            behind += sum(int(r.get("offset", 0)) < offset for r in replicas)
        if not behind:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas still behind after {_SYNC_TIMEOUT:.0f} s")
        time.sleep(0.1)


async def _seed(url: str, tokens: int, users: int, orgs: int, batch: int) -> tuple[int, int]:
    """Seed the cluster; returns (audit events in the streams, last-used entries stored)."""
    client = redis_client(url, timeout=_BENCH_TIMEOUT)
    try:
        # Load the slot map before the concurrent commits: commands issued while a fresh
        # RedisCluster (redis-py 8.1) initializes can go to the wrong node (MOVED), and the
        # slot-map reload that follows closes connections other commands are using.
        await ready(client)
        store = TokenStore(client, Keyspace(_NAMESPACE))
        people = owners(users, orgs)
        await seed_users(store, people)
        seeded = await seed_tokens(
            store, TokenFormat(), tokens, people, keep_secrets=False, batch=batch, audit=True
        )
        now = time.time()
        stored = 0
        for start in range(0, len(seeded.tokens), batch):
            chunk = seeded.tokens[start : start + batch]
            stored += await store.touch([
                (store.keys_for(t.org_id).partition, t.id,
                 LastUsed(now, "GET", "/items", "127.0.0.1", "patgate-bench"))
                for t in chunk
            ])  # fmt: skip
        raw: Any = client
        streams = {store.keys_for(org).events for _, org in people}
        events = sum([int(n) for n in await asyncio.gather(*(raw.xlen(s) for s in streams))])
        return events, stored
    finally:
        await client.aclose()


def measure_spread(tokens: int = 100_000, orgs: int = 100, *, batch: int = 2000) -> SpreadResult:
    """Seed ``tokens`` tokens in ``orgs`` orgs into a fresh local Cluster and measure."""
    users = max(1, tokens // 10)
    orgs = min(orgs, users)
    org_ids = sorted({org for _, org in owners(users, orgs)})
    keyspace = Keyspace(_NAMESPACE)
    with topology("cluster") as cluster:
        with _node(cluster.url.removeprefix("redis+cluster://").split(",")[0]) as probe:
            owned = _slot_owners(probe)
        nodes = {a: _node(a) for a in owned}
        try:
            before = {a: _memory(c) for a, c in nodes.items()}
            started = time.perf_counter()
            events, stored = asyncio.run(_seed(cluster.url, tokens, users, orgs, batch))
            seconds = time.perf_counter() - started
            _wait_replicas(list(nodes.values()))
            time.sleep(0.2)  # let the AOF buffer drain (written before every event-loop sleep)
            after = {a: _memory(c) for a, c in nodes.items()}
            keys = {a: int(c.dbsize()) for a, c in nodes.items()}
            partitions = dict.fromkeys(owned, 0)
            data_slots: dict[str, set[int]] = {a: set() for a in owned}
            for p in range(PARTITIONS):
                slot = key_slot(keyspace.partition(p).tokens.encode())
                address = _owner(owned, slot)
                node: Any = nodes[address]
                if int(node.execute_command("CLUSTER COUNTKEYSINSLOT", slot)):
                    partitions[address] += 1
                    data_slots[address].add(slot)
            org_counts = dict.fromkeys(owned, 0)
            for org in org_ids:
                org_counts[_owner(owned, key_slot(keyspace.for_org(org).tokens.encode()))] += 1
        finally:
            for c in nodes.values():
                c.close()
    primaries = [
        PrimaryShare(
            address=a, slots=sum(end - start + 1 for start, end in owned[a]),
            orgs=org_counts[a], partitions=partitions[a], data_slots=len(data_slots[a]),
            keys=keys[a], used_before=before[a][0], used_after=after[a][0],
            buffers_before=before[a][1], buffers_after=after[a][1],
        )
        for a in sorted(owned, key=lambda a: min(owned[a]))
    ]  # fmt: skip
    return SpreadResult(
        tokens=tokens, users=users, orgs=orgs,
        org_partitions=len({partition_of_org(o) for o in org_ids}), primaries=primaries,
        events=events, last_used=stored, seconds=seconds,
    )  # fmt: skip


# -- reporting -------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _span(shares: Sequence[float]) -> str:
    return f"{min(shares) * 100:.1f}–{max(shares) * 100:.1f} %"  # noqa: RUF001 (a range)


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.2f} MiB"


_TARGET_TEXT = "33 % ± 10 % each"


def spread_rows(r: SpreadResult) -> list[Row]:
    """The two rows bench/run.py adds to its table."""
    n = len(r.primaries)
    mem, data = r.shares("memory"), r.shares("data_memory")
    return [
        Row(
            f"key spread across {n} primaries", baseline=(
                f"{r.keys:,} keys: {r.tokens:,} tokens, {r.orgs} orgs in "
                f"{r.org_partitions} partitions"
            ),
            value=_span(r.shares("keys")), target=_TARGET_TEXT, passed=r.keys_ok,
        ),
        Row(
            f"memory spread across {n} primaries",
            baseline=f"used_memory +{_mib(sum(p.memory for p in r.primaries))}",
            value=f"{_span(mem)} (without buffers {_span(data)})", target=_TARGET_TEXT,
            passed=r.memory_ok,
        ),
    ]  # fmt: skip


def spread_details(r: SpreadResult) -> list[str]:
    """One line per primary for bench/run.py's details."""
    keys, mem, data = r.shares("keys"), r.shares("memory"), r.shares("data_memory")
    return [
        f"- spread, primary {i + 1} ({p.slots:,} slots): {p.orgs} orgs, "
        f"{p.partitions} partitions in {p.data_slots} slots hold data; {p.keys:,} keys "
        f"({_pct(keys[i])}), used_memory +{_mib(p.memory)} ({_pct(mem[i])}; without "
        f"buffers +{_mib(p.data_memory)}, {_pct(data[i])})"
        for i, p in enumerate(r.primaries)
    ]


def render(r: SpreadResult) -> str:
    """The standalone report: one markdown table, one row per primary, and the verdicts."""
    head = ("primary", "slots owned", "orgs", "partitions with data", "slots with data",
            "keys", "keys %", "used_memory Δ", "memory %", "Δ without buffers",
            "memory % without buffers")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys, mem, data = r.shares("keys"), r.shares("memory"), r.shares("data_memory")
    for i, p in enumerate(r.primaries):
        cells = (f"{i + 1} ({p.address})", f"{p.slots:,}", str(p.orgs), str(p.partitions),
                 str(p.data_slots), f"{p.keys:,}", _pct(keys[i]), _mib(p.memory), _pct(mem[i]),
                 _mib(p.data_memory), _pct(data[i]))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    total = ("total", f"{sum(p.slots for p in r.primaries):,}", str(r.orgs),
             str(sum(p.partitions for p in r.primaries)),
             str(sum(p.data_slots for p in r.primaries)), f"{r.keys:,}", "100 %",
             _mib(sum(p.memory for p in r.primaries)), "100 %",
             _mib(sum(p.data_memory for p in r.primaries)), "100 %")  # fmt: skip
    lines.append("| " + " | ".join(total) + " |")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines += [
        "",
        f"{r.tokens:,} tokens, {r.users:,} users in {r.orgs} orgs ({r.org_partitions} "
        f"partitions), {r.events:,} audit events, {r.last_used:,} last-used entries; "
        f"seeded in {r.seconds:.1f} s.",
        "",
        f"- keys: {_span(keys)} per primary — target {_TARGET_TEXT}: **{verdict(r.keys_ok)}**",
        f"- memory (used_memory Δ): {_span(mem)} per primary — target {_TARGET_TEXT}: "
        f"**{verdict(r.within('memory'))}**",
        f"- memory without buffers: {_span(data)} per primary — target {_TARGET_TEXT}: "
        f"**{verdict(r.within('data_memory'))}**",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2000, help="tokens per seeding commit round")
    a = parser.parse_args(argv)
    result = measure_spread(a.tokens, a.orgs, batch=a.batch)
    print(render(result))
    return 0 if result.keys_ok and result.memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
