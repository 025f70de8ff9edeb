"""Smoke test of bench/: every measurement runs end to end with tiny bounds.

No timing assertions — a loaded CI machine may be slow — only that each measurement
returns sane numbers: requests were served without errors, a cache miss is one round
trip, revoked tokens are refused by the other gateway (on the embedded store, Sentinel
and Cluster), memory, spread and last-used counts add up. ``bench/run.py`` itself is
exercised through ``measure()`` + ``report()``; the Sentinel/Cluster part skips, saying
why, when the valkey-server binary cannot run those topologies.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from bench._wrk import _python_load, parse_wrk
from bench.attack import Attacker, attack_throughput
from bench.attack import main as attack_main
from bench.env import bench_env
from bench.nginx import find_nginx
from bench.report import BEGIN, END, update_doc
from bench.run import measure, parse_args, report, rows
from bench.servers import uvicorn_server
from bench.traefik import find_traefik

_WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000/items
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.70ms    1.13ms  21.37ms   94.05%
    Req/Sec     4.74k   312.03     5.18k    85.00%
  Latency Distribution
     50%    1.53ms
     75%    1.71ms
     90%    2.10ms
     99%  850.00us
  9431 requests in 1.00s, 1.47MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   9412.35
Transfer/sec:      1.47MB
"""


def test_parse_wrk_latency_distribution() -> None:
    result = parse_wrk(_WRK_OUTPUT)
    assert (result.requests, result.rps, result.non_2xx) == (9431, 9412.35, 3)
    assert result.p50_ms == pytest.approx(1.53)
    assert result.p99_ms == pytest.approx(0.85)
    assert not result.ok
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("wrk: connection refused")


def test_update_doc_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    update_doc(doc, "first table")
    doc.write_text("# Performance\n\nhand-written intro\n\n" + doc.read_text().split("\n", 2)[2]
                   + "\nhand-written analysis\n")  # fmt: skip
    update_doc(doc, "second table")
    text = doc.read_text()
    assert "second table" in text
    assert "first table" not in text
    assert text.index("hand-written intro") < text.index(BEGIN) < text.index(END)
    assert text.rstrip().endswith("hand-written analysis")


@pytest.mark.slow
def test_python_load_fallback_serves_requests() -> None:
    with bench_env(many=1, revocable=1) as env, uvicorn_server("bare_app", {}) as bare:
        result = asyncio.run(_python_load(bare.url + "/items", 0.5, 4, (), [env.token]))
    assert result.tool == "python"
    assert result.ok
    assert result.requests > 0
    assert 0 < result.p50_ms <= result.p99_ms


@pytest.mark.slow
def test_attacker_is_paced_and_stops_by_itself() -> None:
    with uvicorn_server("bare_app", {}) as bare:
        attacker = Attacker(bare.url + "/items", rate=100, seconds=1.0)
        started = time.monotonic()
        attacker.start()
        attacker._thread.join(10)  # not told to stop: it ends by itself
        elapsed = time.monotonic() - started
        assert not attacker._thread.is_alive()
    counts = attacker.counts
    assert counts.sent <= attacker.max_requests == 100
    assert counts.sent >= 80  # paced at 100/s for a second
    assert counts.statuses == {200: counts.sent}
    assert counts.errors == 0
    assert elapsed < 3


@pytest.mark.slow
def test_attack_bench_counts_401_until_blocked_then_429(capsys: pytest.CaptureFixture[str]) -> None:
    with bench_env(many=1, revocable=1) as env:
        r = attack_throughput(env, duration=1, rounds=1, warmup=0, rate=200, limit=5, window=30)
    assert (r.limit, r.window) == (5, 30.0)
    assert r.quiet.ok
    assert r.attacked.ok
    assert r.quiet.rps > 0
    assert r.attacked.rps > 0
    statuses = r.attack.statuses
    assert set(statuses) == {401, 429}
    # The process blocks on its own count at the 5th failure; a few requests already in
    # flight on the attacker's 8 connections may still be answered 401.
    assert 5 <= statuses[401] <= 5 + 8
    assert statuses[401] + statuses[429] == r.attack.sent <= 200 * 3
    assert r.quiet.cpu_us > 0
    assert r.attacked.cpu_us > 0

    assert attack_main(["--duration", "1", "--rounds", "1", "--warmup", "0", "--rate", "200",
                        "--limit", "5"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| without attacker |" in out
    assert "| with attacker |" in out
    assert "401 " in out
    assert "429 " in out
    assert "ratio with/without attacker" in out


@pytest.mark.slow
def test_every_measurement_runs_with_tiny_bounds(tmp_path: Path) -> None:
    args = parse_args([
        "--duration", "1", "--rounds", "1", "--warmup", "0", "--iterations", "2000",
        "--revocations", "2", "--memory-tokens", "1000", "--lastused-tokens", "20",
        "--lastused-interval", "0.3", "--doc", str(tmp_path / "perf.md"),
        "--spread-tokens", "1000", "--spread-orgs", "10",
    ])  # fmt: skip
    r = measure(args)

    assert r.cpu is not None
    assert r.cpu.iterations >= 2000
    assert 0 < r.cpu.us_per_decision < math.inf
    assert set(r.cpu.steps) >= {"route", "credentials", "digest", "cache get", "decide"}
    assert r.trips is not None
    assert r.trips.round_trips == 1
    assert r.trips.server_commands.get("evalsha") == 1

    expected = {"direct", "gateway"} | ({"nginx", "authreq"} if find_nginx() else set())
    if find_nginx() and find_traefik():
        expected.add("traefik")  # ForwardAuth to the same authz as nginx's auth_request
    assert set(r.middleware) == {"bare", "patgate", "floor", "naive"}
    assert set(r.gateway) == expected
    # The workers rows (issue 16): 1 against 2, and how many cores the load took.
    for part in ("middleware", "gateway"):
        assert set(r.workers[part]) == {"1", "2"}
        assert all(m.ok and m.load_cores > 0 for m in r.workers[part].values())
    for measured in (*r.middleware.values(), *r.gateway.values()):
        assert measured.ok, measured
        assert measured.rps > 0
        assert 0 < measured.p50_ms <= measured.p99_ms
    assert set(r.insitu) == {"middleware", "gateway"}

    # The attack row: a paced, bounded attacker, 401s until it is blocked, then 429s.
    assert r.attack is not None
    assert r.attack.quiet.ok, r.attack.quiet
    assert r.attack.attacked.ok, r.attack.attacked
    assert r.attack.rate == 1000
    assert 0 < r.attack.attack.sent <= 1000 * (1 + 2)
    assert set(r.attack.attack.statuses) <= {401, 429}
    assert r.attack.attack.statuses[401] >= 1
    assert r.attack.attack.statuses[429] >= 1

    assert r.revocation is not None
    assert r.revocation.rounds == 2
    assert r.revocation.missed == 0
    assert all(x >= 0 for x in r.revocation.latencies)

    assert r.memory is not None
    assert r.memory.tokens == 1000
    assert r.memory.used_after > r.memory.used_before
    assert sum(b for b, _ in r.memory.breakdown.values()) > 0

    assert [lu.tokens for lu in r.lastused] == [10, 20]
    for lu in r.lastused:
        assert lu.requests > 0
        assert lu.flushes > 0
        assert 0 < lu.max_per_flush <= lu.tokens
        assert lu.ok

    table = rows(r)
    assert {row.name for row in table} >= {"bare Starlette app", "cache-miss Redis round trips"}
    assert any("bad tokens/s" in row.name for row in table)
    text = report(r, args)
    assert "| row | req/s | p50 | p99 |" in text
    assert "Machine:" in text
    if find_nginx() is None:
        assert any("nginx is not installed" in note for note in r.notes)

    # The Sentinel and Cluster rows (real local topologies, bench/topologies.py).
    if r.unsupported:
        assert any("rows are missing" in note for note in r.notes)
        pytest.skip(f"valkey-server cannot run these topologies: {r.unsupported}")
    assert set(r.topology_revocation) == {"sentinel", "cluster"}
    for rev in r.topology_revocation.values():
        assert rev.rounds == 2
        assert rev.missed == 0
        assert rev.startup > 0
        assert all(x >= 0 for x in rev.latencies)
    assert r.spread is not None
    spread = r.spread
    assert (spread.tokens, spread.orgs, spread.users) == (1000, 10, 100)
    assert len(spread.primaries) == 3
    assert sum(p.slots for p in spread.primaries) == 16384
    assert sum(p.orgs for p in spread.primaries) == 10
    assert spread.events == spread.last_used == 1000
    assert spread.keys > 0
    for what in ("keys", "memory"):
        assert sum(spread.shares(what)) == pytest.approx(1.0)
    names = {row.name for row in table}
    assert "key spread across 3 primaries" in names
    assert "memory spread across 3 primaries" in names
    assert {n for n in names if n.startswith("revocation → 2nd gateway process, ")} == {
        "revocation → 2nd gateway process, Sentinel (p50/p99, 2 revocations)",
        "revocation → 2nd gateway process, Cluster (p50/p99, 2 revocations)",
    }


def test_a_ratio_within_its_noise_neither_passes_nor_fails() -> None:
    """Issue 16: a ratio row within the run-to-run noise of its target says so."""
    from bench._wrk import LoadResult
    from bench.run import _noise, _ratio_row, _verdict
    from bench.throughput import Measured

    def measured(name: str, *rps: float) -> Measured:
        rounds = [LoadResult("wrk", int(r), 1.0, r, 1.0, 2.0) for r in rps]
        return Measured(name, "wrk", sum(rps) / len(rps), 1.0, 2.0, int(sum(rps)), 40.0, 0, 0,
                        rounds)  # fmt: skip

    base = measured("bare", 1000, 1000, 1000)
    steady = measured("patgate", 950, 950, 950)
    shaky = measured("patgate", 850, 950, 1000)
    assert _noise(steady, base) == 0
    assert _noise(shaky, base) == pytest.approx(0.075)
    assert _verdict(0.95, 0.90, 0.0, True) is True
    assert _verdict(0.85, 0.90, 0.0, True) is False
    assert _verdict(0.88, 0.90, 0.05, True) is None
    assert _verdict(0.99, 0.90, 0.5, False) is False
    row = _ratio_row("patgate", shaky, base, 0.90)
    assert row.passed is None
    assert "within noise" in row.value
    assert "CPU 40 vs 40 µs/req" in row.value
    assert _ratio_row("patgate", steady, base, 0.90).passed is True
