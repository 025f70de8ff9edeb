"""Failover drills on Sentinel and on Cluster (issue 11), through patgate's public
surfaces only: the ``patgate`` CLI, two ``patgate serve`` processes in proxy mode, HTTP on
127.0.0.1.

Each drill starts its own topology (tests/_topologies.py, with a fast failure detector:
Sentinel ``down-after-milliseconds`` 1000, Cluster ``cluster-node-timeout`` 1000) because
it kills part of it. A bounded load (:class:`tests.gateway._drills.Load`) of valid,
revoked and unknown tokens runs through both gateways while:

* **failover** — the primary holding the data is SIGKILLed. No revoked or unknown token
  ever gets a 200; valid tokens get 200 or 503, and every 503 lies between the kill and
  the promotion (the moment the sentinels, or the cluster, first name a new primary)
  plus :data:`RECOVERY`; after that bound every answer of both gateways is right and
  both are ready again, without a restart. A token created before the kill still
  validates after the promotion. A revoke issued right after the promotion, and another
  once both gateways' caches are back on, reaches both gateways within :data:`TARGET`
  of the CLI's completion (asserted with :data:`MARGIN` on top, as test_workers.py does;
  a revoke slower than TARGET is named in the report). The load is held off while a
  revoke is timed, and the revoked token then joins the load's revoked ones.
* **reshard** (Cluster) — the slot holding the data moves to another primary key by key
  (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) under the load; a revoke after the move
  reaches both gateways as fast, and valid tokens keep working.

A drill gathers every failure (:class:`Findings`) and prints its numbers before it fails,
so one run tells the whole story.

Every process is started here and stopped by its handle; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _topologies
from tests.gateway._drills import (
    Cli,
    Gateway,
    Load,
    RevokeWatch,
    gateways,
    unknown_secret,
    watch_revoke,
)
from tests.middleware._servers import ok_upstream, serve

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(120)]

#: SPEC: a revoke is visible in every gateway process within 50 ms. One revoke is one
#: sample, timed by polls whose own round trip a loaded 2-CPU box can stretch: as in
#: test_workers.py the assertion allows MARGIN on top, and the report flags any revoke
#: slower than TARGET.
TARGET, MARGIN = 0.050, 0.100
#: issue 11: service is back by itself within the promotion time plus 2 s.
RECOVERY = 2.0
#: the fast failure detectors the drills run with.
#: (A 500 ms down-after made the sentinels fail the *new* primary over too on a loaded
#: 2-CPU box: a second failover, which is not this drill.)
SENTINEL = {"down_after_ms": 1000, "failover_timeout_ms": 3000}
CLUSTER = {"node_timeout_ms": 1000}
#: bounded waits, in seconds.
_PROMOTION, _SETTLE = 20.0, 1.5


@pytest.fixture
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_topologies.Topology]:
    """A topology of the test's own (the drill kills part of it), started in this thread:
    the nodes die with the thread that started them (PR_SET_PDEATHSIG)."""
    kind = request.param
    try:
        if kind == "sentinel":
            topo = _topologies.start_sentinel(tmp_path / "sentinel", **SENTINEL)
        else:
            topo = _topologies.start_cluster(tmp_path / "cluster", **CLUSTER)
    except _topologies.Unsupported as exc:
        pytest.skip(f"{kind}: {exc}")
    try:
        if kind == "sentinel":
            _topologies.wait_sentinels_ready(topo)
        yield topo
    finally:
        topo.stop()


def _is_cluster(topo: _topologies.Topology) -> bool:
    return not topo.sentinel_ports


def _victim(topo: _topologies.Topology) -> tuple[int, set[int], dict[int, int]]:
    """The primary to kill, the slots of its keys (Cluster), and keys per primary.

    Sentinel: the primary. Cluster: the primary holding most of the keys (SCAN on each
    node, CLUSTER KEYSLOT of each key), so the tokens' data is on the node that dies."""
    if not _is_cluster(topo):
        primary = _topologies.sentinel_primary(topo)
        assert primary is not None
        return primary, set(), {}
    found = _topologies.keys_by_node(topo)
    counts = {port: len(keys) for port, keys in found.items()}
    victim = max(counts, key=lambda p: counts[p])
    assert counts[victim] > 0, counts
    return victim, set(found[victim].values()), counts


def _promoted(topo: _topologies.Topology, victim: int, slots: set[int]) -> int | None:
    """The new primary once the topology names one (None before): Sentinel, a sentinel
    as redis-py's client asks; Cluster, a live node's slot map gives every slot of the
    victim's to another live primary."""
    if not _is_cluster(topo):
        primary = _topologies.sentinel_primary(topo)
        if primary is None or primary == victim or _topologies.role(primary) != "master":
            return None
        return primary
    for port, proc in zip(topo.ports, topo.procs, strict=True):
        if proc.poll() is not None:
            continue
        with contextlib.suppress(Exception):
            owners = {_topologies.slot_owner(port, slot) for slot in slots}
            if len(owners) == 1:
                (owner,) = owners
                if owner is not None and owner != victim and _topologies.role(owner) == "master":
                    return owner
    return None


async def _wait_promotion(
    topo: _topologies.Topology, victim: int, slots: set[int]
) -> tuple[float, int]:
    deadline = time.monotonic() + _PROMOTION
    while True:
        checked = time.monotonic()
        primary = await asyncio.to_thread(_promoted, topo, victim, slots)
        if primary is not None:
            # The last check that still saw no new primary ended before `checked`.
            return checked, primary
        assert time.monotonic() < deadline, "no new primary within the bound"
        await asyncio.sleep(0.01)


async def _tokens(cli: Cli, count: int, tag: str) -> list[tuple[str, str]]:
    return list(await asyncio.gather(*(cli.create(f"{tag}{i}") for i in range(count))))


async def _warm(gws: list[Gateway], allowed: list[str], refused: list[str]) -> None:
    for gw in gws:
        for secret in allowed:
            assert await gw.status(secret) == 200, gw.text()
        for secret in refused:
            assert await gw.status(secret) == 401


async def _cached_everywhere(load: Load, gws: list[Gateway], secret: str) -> bool:
    """Whether ``secret`` is now answered from each gateway's cache (with the load held
    off, one more request adds exactly one cache hit)."""
    async with load.paused():
        for gw in gws:
            assert await gw.status(secret) == 200
            before = await gw.cache_hits()
            assert await gw.status(secret) == 200
            if await gw.cache_hits() != before + 1:
                return False
    return True


async def _ready_everywhere(gws: list[Gateway], until: float) -> float | None:
    """When every gateway's /readyz answered 200 (``time.monotonic()``), or None if not
    by ``until``."""
    while True:
        statuses = await asyncio.gather(*(gw.ready() for gw in gws))
        if all(s == 200 for s in statuses):
            return time.monotonic()
        if time.monotonic() > until:
            return None
        await asyncio.sleep(0.02)


class Findings:
    """What a drill found wrong, gathered so one run reports every failure (and its
    numbers) instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.numbers: list[str] = []

    def check(self, ok: object, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return bool(ok)

    def note(self, line: str) -> None:
        self.numbers.append(line)

    def revoke(self, watch: RevokeWatch, what: str) -> None:
        if not self.check(watch.code == 0, f"{what}: the CLI failed ({watch.code}): {watch.err}"):
            return
        latencies = []
        for n, (lat, unavailable, after) in enumerate(
            zip(watch.latency, watch.unavailable, watch.after, strict=True)
        ):
            if unavailable:
                self.note(f"{what}: gateway {n} answered {unavailable} before its first 401")
            if not self.check(lat is not None, f"{what}: gateway {n} never answered 401"):
                continue
            assert lat is not None
            latencies.append(lat)
            self.check(200 not in after, f"{what}: gateway {n} accepted it again: {after}")
            trace = [(round(a * 1e3, 1), round(b * 1e3, 1), c) for a, b, c in watch.trace[n]]
            near = [t for t in trace if -300 < t[1] < 300]
            self.check(
                lat <= TARGET + MARGIN,
                f"{what}: gateway {n} answered 401 {lat * 1e3:.1f} ms after the CLI's revoke "
                f"(> {(TARGET + MARGIN) * 1e3:.0f} ms); polls (sent ms, received ms, status): "
                f"{near}",
            )
            if lat > TARGET:
                self.note(
                    f"{what}: gateway {n} over the {TARGET * 1e3:.0f} ms target; polls (sent "
                    f"ms, received ms, status) around the CLI's completion: {near}"
                )
        self.note(f"{what}: {_ms(latencies)} per gateway ({watch.polls} polls)")

    def load(self, load: Load, window: tuple[float, float], what: str) -> None:
        """Every answer of the load is right; 503s only inside ``window`` (received)."""
        samples = load.samples
        assert samples, "the load sent nothing"
        transport = [s for s in samples if s.status == 0]
        self.check(not transport, f"{len(transport)} requests got no HTTP answer")
        leaked = [s for s in samples if s.kind != "valid" and s.status == 200]
        self.check(not leaked, f"{len(leaked)} revoked/unknown requests got a 200: {leaked[:3]}")
        allowed = {
            (kind, status)
            for kind in ("valid", "revoked", "unknown", "fresh")
            for status in ((200, 503) if kind == "valid" else (401, 503))
        }
        odd = {(s.kind, s.status) for s in samples} - allowed
        self.check(not odd, f"unexpected answers: {sorted(odd)}")
        unavailable = [s.received - window[0] for s in samples if s.status == 503]
        if unavailable:
            self.check(
                min(unavailable) >= 0 and max(unavailable) <= window[1] - window[0],
                f"503s from {min(unavailable):.3f} s to {max(unavailable):.3f} s after the "
                f"{what}, outside [0, {window[1] - window[0]:.3f}] s",
            )
            self.note(
                f"503s {min(unavailable):.3f} s to {max(unavailable):.3f} s after the {what} "
                f"({len(unavailable)} answers)"
            )
        else:
            self.note("no 503")
        counts: dict[str, int] = {}
        for s in samples:
            key = f"{s.kind}:{s.status}"
            counts[key] = counts.get(key, 0) + 1
        self.note(f"answers: {counts}")

    def recovered(self, load: Load, gws: list[Gateway], since: float, shown: str | None) -> None:
        """From ``since`` on, every valid token gets 200 on every gateway and /readyz is 200."""
        for n in range(len(gws)):
            late = [s for s in load.samples if s.gateway == n and s.sent >= since]
            if not self.check(late, f"gateway {n}: no traffic after the recovery bound"):
                continue
            statuses = {s.status for s in late if s.kind == "valid"}
            self.check(statuses == {200}, f"gateway {n}: valid tokens got {statuses} after it")
            if shown is not None:
                # Never anything but 200 once recovered. That it is asked at all after the
                # bound is the drill's own direct request (the load's mix may not pick one
                # token in time on a busy machine: it failed so with no wrong answer).
                seen = [s.status for s in late if s.secret == shown]
                self.check(
                    set(seen) <= {200},
                    f"gateway {n}: the token shown before the kill got {sorted(set(seen))}",
                )
            unready = [t for g, t, status in load.readiness if g == n and status != 200]
            if unready:
                self.note(
                    f"gateway {n}: /readyz 503 last seen {max(unready) - since:+.3f} s from the "
                    "recovery bound"
                )
            self.check(
                not unready or max(unready) <= since,
                f"gateway {n}: /readyz not 200 until {max(unready or [0]) - since:+.3f} s "
                "past the recovery bound",
            )

    def report(self, title: str) -> None:
        print(f"\n{title}\n  " + "\n  ".join(self.numbers))
        assert not self.problems, "\n".join(self.problems)


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v * 1000:.1f}" for v in values) + " ms"


async def _watch(cli: Cli, gws: list[Gateway], token: tuple[str, str], load: Load) -> RevokeWatch:
    """:func:`watch_revoke` with the load held off (on a 2-CPU box the load's requests
    would slow the polls that time the revoke), then the token joins the load's revoked
    ones: from then on it must never get a 200 again (a lost revoke would)."""
    token_id, secret = token
    async with load.paused():
        watch = await watch_revoke(cli, gws, token_id, secret)
    if watch.code == 0:
        load.revoked.append(secret)
    return watch


async def _revoke_when_possible(
    cli: Cli, gws: list[Gateway], token: tuple[str, str], load: Load, until: float
) -> RevokeWatch:
    """The revoke, issued at once; a CLI that finds the store unavailable (exit 3) may
    try again until ``until`` (the recovery bound), no later."""
    while True:
        watch = await _watch(cli, gws, token, load)
        if watch.code != 3 or time.monotonic() > until:
            return watch


async def _prepare(cli: Cli, watched: int) -> tuple[list[tuple[str, str]], ...]:
    """Valid, revoked and ``watched`` (valid, to be revoked during the drill) tokens."""
    await cli.setup()
    valid = await _tokens(cli, 4, "valid")
    revoked = await _tokens(cli, 3, "revoked")
    later = await _tokens(cli, watched, "watched")
    for token_id, _ in revoked:
        assert (await cli.revoke(token_id)).code == 0
    return valid, revoked, later


async def _readiness_detail(gws: list[Gateway]) -> str:
    answers = [await gw.readyz() for gw in gws]
    return "; ".join(f"gateway {n}: {a}" for n, a in enumerate(answers))


@pytest.mark.parametrize("topology", ["sentinel", "cluster"], indirect=True)
async def test_failover_drill(topology: _topologies.Topology, tmp_path: Path) -> None:
    kind = "cluster" if _is_cluster(topology) else "sentinel"
    found = Findings()
    cli = Cli(topology.url, "drill" + uuid.uuid4().hex[:8], tmp_path)
    valid, revoked, (first, second) = await _prepare(cli, 2)
    unknown = [unknown_secret() for _ in range(3)]
    async with (
        serve(ok_upstream, lifespan="off") as upstream,
        gateways(tmp_path, 2, upstream, topology.url, cli.namespace) as gws,
    ):
        await _warm(gws, [s for _, s in [*valid, first, second]], [s for _, s in revoked] + unknown)
        load = Load(gws, [s for _, s in valid], [s for _, s in revoked], unknown, max_seconds=40)
        runner = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(1.0)
            # Shown (printed by the CLI) before the kill: must survive the failover.
            _, shown = await cli.create("shown-before-kill")
            load.valid.append(shown)
            victim, slots, spread = await asyncio.to_thread(_victim, topology)
            killed_at = await asyncio.to_thread(_topologies.kill_node, topology, victim)
            promoted_at, primary = await _wait_promotion(topology, victim, slots)
            recovered = promoted_at + RECOVERY
            found.note(
                f"keys per primary {spread or '-'}; killed {victim}, new primary {primary}; "
                f"promotion detected {promoted_at - killed_at:.3f} s after the kill"
            )

            # Right after the promotion, whatever state the caches are in.
            found.revoke(
                await _revoke_when_possible(cli, gws, first, load, recovered),
                "revoke right after the promotion",
            )

            # Once both gateways are ready again (subscription back, caches on).
            ready_at = await _ready_everywhere(gws, recovered + 1.0)
            if found.check(
                ready_at is not None,
                f"/readyz not 200 on both gateways {recovered + 1.0 - killed_at:.1f} s after "
                f"the kill: {await _readiness_detail(gws)}",
            ):
                assert ready_at is not None
                if found.check(
                    await _cached_everywhere(load, gws, second[1]),
                    "caches not on again once /readyz is 200",
                ):
                    found.revoke(await _watch(cli, gws, second, load), "revoke with both caches on")

            # Keep the load going past the recovery bound (and its last pause), then stop.
            await asyncio.sleep(max(_SETTLE, recovered + _SETTLE - time.monotonic()))
            for n, gw in enumerate(gws):
                status = await gw.status(shown)
                found.check(
                    status == 200, f"gateway {n}: the token shown before the kill: {status}"
                )
        finally:
            load.stop()
            await runner
        for n, gw in enumerate(gws):
            found.check(gw.proc.returncode is None, f"gateway {n} exited:\n{gw.text()}")
    now = await asyncio.to_thread(_promoted, topology, victim, slots)
    if now != primary:
        found.note(f"a second failover: the primary is now {now}, no longer {primary}")
    found.load(load, (killed_at, recovered), "kill")
    found.recovered(load, gws, recovered, shown)
    found.report(f"{kind} failover drill")


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
async def test_reshard_drill(topology: _topologies.Topology, tmp_path: Path) -> None:
    found = Findings()
    cli = Cli(topology.url, "drill" + uuid.uuid4().hex[:8], tmp_path)
    valid, revoked, (watched,) = await _prepare(cli, 1)
    unknown = [unknown_secret() for _ in range(3)]
    async with (
        serve(ok_upstream, lifespan="off") as upstream,
        gateways(tmp_path, 2, upstream, topology.url, cli.namespace) as gws,
    ):
        await _warm(gws, [s for _, s in [*valid, watched]], [s for _, s in revoked] + unknown)
        before = await asyncio.to_thread(_topologies.keys_by_node, topology)
        slots = {slot for keys in before.values() for slot in keys.values()}
        counts = {port: len(keys) for port, keys in before.items()}
        load = Load(gws, [s for _, s in valid], [s for _, s in revoked], unknown, max_seconds=40)
        runner = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(1.0)
            began = time.monotonic()
            moves = []
            for slot in sorted(slots):
                owner = _topologies.slot_owner(topology.ports[0], slot)
                target = min((p for p in counts if p != owner), key=lambda p: counts[p])
                # One key at a time, 50 ms apart: the load meets the slot half moved.
                await asyncio.to_thread(_topologies.reshard, topology, slot, target, pause=0.05)
                moves.append(f"slot {slot}: {owner} -> {target}")
            moved = time.monotonic()

            def everyone_agrees() -> bool:
                for slot in slots:
                    owners = {_topologies.slot_owner(p, slot) for p in topology.ports}
                    if len(owners) != 1:
                        return False
                return True

            while not await asyncio.to_thread(everyone_agrees):
                assert time.monotonic() < moved + 5.0, "the nodes disagree on the moved slot"
                await asyncio.sleep(0.02)
            found.note(
                f"keys per primary {counts}; {'; '.join(moves)} in {moved - began:.3f} s "
                f"(one key per 50 ms)"
            )
            after = await asyncio.to_thread(_topologies.keys_by_node, topology)
            found.check(
                sum(len(k) for k in after.values()) >= sum(counts.values()),
                f"keys lost in the move: {counts} -> { {p: len(k) for p, k in after.items()} }",
            )
            ready_at = await _ready_everywhere(gws, moved + RECOVERY)
            found.check(
                ready_at is not None,
                f"/readyz not 200 after the move: {await _readiness_detail(gws)}",
            )
            if found.check(
                await _cached_everywhere(load, gws, watched[1]), "the token is not cached"
            ):
                found.revoke(await _watch(cli, gws, watched, load), "revoke after the reshard")
            await asyncio.sleep(_SETTLE)
        finally:
            load.stop()
            await runner
    found.load(load, (began, moved + 1.0), "move's start")
    # The slot's last SETSLOT ends every subscriber's session (the old owner's
    # sunsubscribe): /readyz is 503 until they resubscribe — the same bound as a
    # failover's recovery, counted from the end of the move.
    found.recovered(load, gws, moved + RECOVERY, None)
    found.report("cluster reshard drill")
