"""Valid-token throughput while another client sends 1,000 bad tokens/s (issue 12).

    python bench/attack.py                 # ~20 s: 3 interleaved rounds of 3 s each way
    python bench/attack.py --rate 2000 --duration 5

One ``patgate_app`` server (bench/apps.py: the middleware around a Starlette app) is
loaded by the valid client (wrk, or the Python fallback, with the seeded token) in
alternating rounds: *quiet* rounds alone, and *attacked* rounds while an attacker sends
well-formed, never-issued secrets paced at ``rate`` requests per second. Both talk to
127.0.0.1; the server trusts 127.0.0.1 as a proxy (``PATGATE_TRUSTED_PROXIES``) and the
attacker sends ``X-Forwarded-For: 203.0.113.7``, so it is a client of its own while the
valid client (no header) is 127.0.0.1. The attacker's first
``PATGATE_AUTH_FAILURE_LIMIT`` failures in a window are 401s (each a cache miss and one
Redis lookup); then it is blocked and answered 429 without Redis until the window passes.

The attacker is bounded: at most ``rate * (duration + 2)`` requests and ``duration + 2``
seconds per round, and it stops by itself (it is also told to stop when the round's load
ends). It runs in a thread of this process with its own event loop and a few keep-alive
connections; wrk and the server run in their own processes. Server CPU per valid request
is measured from ``/proc`` as in bench/throughput.py (in attacked rounds it includes the
server's work on the attack: that is the cost the valid traffic pays).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench._wrk import LoadResult, load_tool, run_load
from bench.env import BenchEnv, bench_env
from bench.servers import Proc, cpu_seconds, uvicorn_server
from bench.throughput import Measured, Target, _aggregate
from patgate.gateway.settings import Settings
from patgate.middleware.config import DataPlaneConfig
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["ATTACKER_IP", "AttackResult", "Attacker", "attack_throughput", "main", "render"]

ATTACKER_IP = "203.0.113.7"
_PATH = "/items"
#: keep-alive connections the attacker spreads its paced requests over.
_ATTACK_CONNECTIONS = 8
#: seconds an attacker may run past the round's load before it stops by itself.
_GRACE = 2.0


@dataclass
class AttackCounts:
    """What the attacker sent and what it got back, over all attacked rounds."""

    sent: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    #: requests that started more than 50 ms after their slot (the pacing fell behind).
    late: int = 0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def add(self, other: AttackCounts) -> None:
        self.sent += other.sent
        self.seconds += other.seconds
        self.statuses.update(other.statuses)
        self.errors += other.errors
        self.late += other.late


class Attacker:
    """Bad tokens at a fixed pace from its own thread, bounded in count and time.

    Slot ``i`` is due at ``start + i / rate``; each of a few keep-alive connections takes
    the next slot, waits for it, sends and reads the answer (raw HTTP/1.1 over asyncio
    streams with the requests built beforehand: the pacing loop must stay cheap on a
    machine whose cores it shares with the server and wrk). Stops at ``max_requests``,
    at ``seconds``, or when :meth:`stop` is called, whichever comes first."""

    def __init__(self, url: str, *, rate: float, seconds: float, ip: str = ATTACKER_IP) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.rate = rate
        self.seconds = seconds
        self.max_requests = max(1, int(rate * seconds))
        self.ip = ip
        self.counts = AttackCounts()
        self.running = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bench-attacker", daemon=True)
        fmt = TokenFormat()
        # Never issued and each distinct (no negative-cache hits), built beforehand.
        self._requests = [
            (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
             f"Authorization: Bearer {fmt.generate()}\r\nX-Forwarded-For: {ip}\r\n"
             "User-Agent: bench-attacker\r\n\r\n").encode()
            for _ in range(min(self.max_requests, 20_000))
        ]  # fmt: skip

    def start(self) -> None:
        """Start, and return once the first request is on its way (bounded wait)."""
        self._thread.start()
        self.running.wait(10)

    def stop(self) -> AttackCounts:
        self._stop.set()
        self._thread.join(self.seconds + 30)
        return self.counts

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> int:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        return status

    async def _run(self) -> None:
        counts = self.counts
        started = time.monotonic()
        end = started + self.seconds
        next_slot = 0
        requests = self._requests

        async def worker() -> None:
            nonlocal next_slot
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                while not self._stop.is_set():
                    slot = next_slot
                    if slot >= self.max_requests:
                        return
                    next_slot += 1
                    due = started + slot / self.rate
                    now = time.monotonic()
                    if due >= end:
                        return
                    if due > now:
                        await asyncio.sleep(due - now)
                    elif now - due > 0.05:
                        counts.late += 1
                    if self._stop.is_set():
                        return
                    counts.sent += 1
                    self.running.set()
                    try:
                        status = await asyncio.wait_for(
                            self._exchange(reader, writer, requests[slot % len(requests)]), 5
                        )
                    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                        counts.errors += 1
                        writer.close()
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                        continue
                    counts.statuses[status] += 1
            finally:
                writer.close()

        try:
            await asyncio.gather(*(worker() for _ in range(_ATTACK_CONNECTIONS)))
        finally:
            counts.seconds = time.monotonic() - started
            self.running.set()


@dataclass(frozen=True, slots=True)
class AttackResult:
    quiet: Measured
    attacked: Measured
    attack: AttackCounts
    rate: float
    limit: int
    window: float

    @property
    def ratio(self) -> float:
        return self.attacked.rps / self.quiet.rps if self.quiet.rps else 0.0


def _server_env(env: BenchEnv, limit: int | None, window: float | None) -> dict[str, str]:
    """The server's environment: trusted proxy 127.0.0.1 and the failure limit — always
    set here (patgate's defaults unless given), whatever ``env.extra_env`` says (bench/
    run.py lifts the limit for its other rows)."""
    defaults = DataPlaneConfig()
    limit = defaults.auth_failure_limit if limit is None else limit
    window = defaults.auth_failure_window if window is None else window
    return env.patgate_env(
        PATGATE_TRUSTED_PROXIES="127.0.0.1",
        PATGATE_AUTH_FAILURE_LIMIT=str(limit),
        PATGATE_AUTH_FAILURE_WINDOW=f"{window:g}",
    )


def _settings_of(env: Mapping[str, str]) -> tuple[int, float]:
    settings = Settings.from_env(env)
    return settings.auth_failure_limit, settings.auth_failure_window


def attack_throughput(
    env: BenchEnv,
    *,
    duration: float = 3.0,
    rounds: int = 3,
    warmup: float = 1.0,
    rate: float = 1000.0,
    limit: int | None = None,
    window: float | None = None,
    connections: int = 16,
) -> AttackResult:
    """Quiet and attacked rounds against one ``patgate_app``, interleaved."""
    server_env = _server_env(env, limit, window)
    limit_, window_ = _settings_of(server_env)
    headers = [("Authorization", "Bearer " + env.token)]
    with uvicorn_server("patgate_app", server_env) as pg:
        target = Target.of("patgate", pg, _PATH)
        if warmup > 0:
            run_load(target.url, duration=warmup, headers=headers, connections=connections)
        runs: dict[str, list[LoadResult]] = {"quiet": [], "attacked": []}
        cpu = {"quiet": 0.0, "attacked": 0.0}
        attack = AttackCounts()
        for n in range(max(1, rounds)):
            for kind in ("quiet", "attacked") if n % 2 == 0 else ("attacked", "quiet"):
                result, used, counts = _round(pg, target, kind == "attacked", duration, rate,
                                              headers, connections)  # fmt: skip
                runs[kind].append(result)
                cpu[kind] += used
                if counts is not None:
                    attack.add(counts)
        quiet = _aggregate(Target("quiet", target.url, target.pids), runs["quiet"], cpu["quiet"])
        attacked = _aggregate(
            Target("attacked", target.url, target.pids), runs["attacked"], cpu["attacked"]
        )
    return AttackResult(quiet, attacked, attack, rate, limit_, window_)


def _round(
    pg: Proc,
    target: Target,
    attacked: bool,
    duration: float,
    rate: float,
    headers: list[tuple[str, str]],
    connections: int,
) -> tuple[LoadResult, float, AttackCounts | None]:
    attacker = None
    if attacked:
        attacker = Attacker(pg.url + _PATH, rate=rate, seconds=duration + _GRACE)
        attacker.start()
        time.sleep(0.1)  # the attack is under way before the measured load begins
    before = cpu_seconds(pg.pid)
    try:
        result = run_load(target.url, duration=duration, headers=headers, connections=connections)
    finally:
        used = cpu_seconds(pg.pid) - before
        counts = attacker.stop() if attacker is not None else None
    return result, used, counts


def render(r: AttackResult) -> str:
    a = r.attack
    lines = [
        f"valid-token throughput, patgate middleware app, while another client sends "
        f"{r.rate:,.0f} bad tokens/s (limit {r.limit} failures per {r.window:g} s):",
        "",
        "| run | valid req/s | p50 | p99 | server CPU µs / valid request | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in (("without attacker", r.quiet), ("with attacker", r.attacked)):
        lines.append(f"| {name} | {m.rps:,.0f} | {m.p50_ms:.2f} ms | {m.p99_ms:.2f} ms | "
                     f"{m.cpu_us:.0f} | {m.non_2xx + m.socket_errors} |")  # fmt: skip
    others = {s: n for s, n in sorted(a.statuses.items()) if s not in (401, 429)}
    lines += [
        "",
        f"ratio with/without attacker: {r.ratio:.3f}x (same run, {len(r.quiet.rounds)} "
        f"interleaved rounds each)",
        f"attacker: {a.sent:,} requests in {a.seconds:.1f} s ({a.rate:,.0f}/s achieved, "
        f"{a.late:,} sent late): 401 {a.statuses.get(401, 0):,} times, "
        f"429 {a.statuses.get(429, 0):,} times"
        + (f", other {others}" if others else "")
        + (f", {a.errors:,} errors" if a.errors else ""),
        f"load: {load_tool()}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="bad tokens per second")
    parser.add_argument(
        "--limit", type=int, default=None, help="PATGATE_AUTH_FAILURE_LIMIT (default: patgate's)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="PATGATE_AUTH_FAILURE_WINDOW (default: patgate's)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    with bench_env(many=1, revocable=1) as env:
        r = attack_throughput(env, duration=a.duration, rounds=a.rounds, warmup=a.warmup,
                              rate=a.rate, limit=a.limit, window=a.window)  # fmt: skip
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
