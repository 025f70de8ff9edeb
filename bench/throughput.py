"""Throughput rows: several servers measured with the same load, interleaved.

A 2-core VM's throughput drifts by ±10 % from one run to the next, so servers that are
compared are all started first and then measured in alternating order — ``rounds``
rounds of ``duration`` seconds each, the order rotated every round — and each result
aggregates its rounds: req/s = all requests / all seconds, p50/p99 = mean of the rounds'
values. CPU per request is read from ``/proc`` for the processes under test (the
upstream excluded), which is steadier than req/s when the load generator competes for
the same cores.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench._wrk import LoadResult, run_load
from bench.servers import Proc, children, cpu_seconds

__all__ = ["Measured", "Target", "compare"]


@dataclass(frozen=True, slots=True)
class Target:
    """One server to load: its URL and the processes whose CPU counts."""

    name: str
    url: str
    pids: tuple[int, ...]

    @classmethod
    def of(cls, name: str, proc: Proc, path: str, *extra: Proc) -> Target:
        """The processes of ``proc`` and ``extra`` count, with their worker children."""
        pids = [p.pid for p in (proc, *extra)]
        return cls(name, proc.url + path, tuple(pids + [c for p in pids for c in children(p)]))


@dataclass(frozen=True, slots=True)
class Measured:
    name: str
    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    #: CPU µs per request of the processes under test.
    cpu_us: float
    non_2xx: int
    socket_errors: int
    rounds: list[LoadResult] = field(default_factory=list)
    #: CPU cores the load generator (wrk) itself took while loading this target.
    load_cores: float = 0.0

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.non_2xx == 0 and self.socket_errors == 0


def _aggregate(
    target: Target, runs: list[LoadResult], cpu: float, load_cpu: float = 0.0
) -> Measured:
    requests = sum(r.requests for r in runs)
    seconds = sum(r.seconds for r in runs)
    return Measured(
        name=target.name,
        tool=runs[0].tool,
        rps=requests / seconds if seconds else 0.0,
        p50_ms=sum(r.p50_ms for r in runs) / len(runs),
        p99_ms=sum(r.p99_ms for r in runs) / len(runs),
        requests=requests,
        cpu_us=cpu / requests * 1e6 if requests else 0.0,
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
        rounds=runs,
        load_cores=load_cpu / seconds if seconds else 0.0,
    )


def compare(
    targets: Sequence[Target],
    *,
    duration: float,
    rounds: int = 2,
    warmup: float = 1.0,
    headers: Sequence[tuple[str, str]] = (),
    connections: int = 16,
) -> dict[str, Measured]:
    """Warm every target, then measure them interleaved; results by target name."""
    for target in targets if warmup > 0 else ():
        run_load(target.url, duration=warmup, headers=headers, connections=connections)
    runs: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    cpu: dict[str, float] = dict.fromkeys(runs, 0.0)
    load_cpu: dict[str, float] = dict.fromkeys(runs, 0.0)
    order = list(targets)
    for n in range(max(1, rounds)):
        turn = order[n % len(order) :] + order[: n % len(order)]
        for target in turn:
            before = sum(cpu_seconds(pid) for pid in target.pids)
            wrk_before = _children_cpu()
            result = run_load(
                target.url, duration=duration, headers=headers, connections=connections
            )
            load_cpu[target.name] += _children_cpu() - wrk_before
            cpu[target.name] += sum(cpu_seconds(pid) for pid in target.pids) - before
            runs[target.name].append(result)
    return {t.name: _aggregate(t, runs[t.name], cpu[t.name], load_cpu[t.name]) for t in targets}


def _children_cpu() -> float:
    """CPU seconds of this process's finished children: the load generator's runs (the
    servers are children too, but still running, so they do not count here)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
