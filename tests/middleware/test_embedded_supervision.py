"""``patgate serve`` supervises its embedded ``valkey-server`` (issue 9, item 7).

A real ``patgate serve`` subprocess on the embedded default, a token bootstrapped through
the CLI (which joins the running server), a bounded load through the gateway — then the
valkey-server child is killed (SIGKILL, or SIGTERM) mid-load. Service must come back by
itself: 503s only for a short window and never a 200 for an unknown token, the valid
token answering 200 again within seconds, ``/readyz`` unready then ready, the old token
still there (AOF), the dead child reaped (no zombie), the restart counted and logged.

The supervisor's own states (``restarting (attempt n)``, backoff, no supervision by a
joined process) are tested directly on :class:`EmbeddedValkey` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.tokenformat import TokenFormat

ROOT = Path(__file__).resolve().parents[2]

#: load bounds: at most this many requests per client loop, and this long in all.
_MAX_REQUESTS = 4000
_MAX_SECONDS = 20.0
#: the service must answer 200 again within this long after the kill.
_RECOVERY = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _zombie_or_alive(pid: int) -> bool:
    """True while ``pid`` exists at all — running or a zombie nobody reaped."""
    return Path(f"/proc/{pid}").exists()


def _is_zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _server_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "server.json").read_text())["server_pid"])


@dataclass
class _Serve:
    proc: asyncio.subprocess.Process
    data_dir: Path
    gateway: httpx.AsyncClient
    admin: httpx.AsyncClient
    log: Path
    secret: str = ""
    children: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _serve(tmp_path: Path) -> AsyncIterator[_Serve]:
    data_dir = tmp_path / "data"
    gw_port, admin_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    env = {
        **_env(),
        "PATGATE_LISTEN": f"127.0.0.1:{gw_port}",
        "PATGATE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "PATGATE_LASTUSED_INTERVAL": "60",
        # 503s and retries with one token from one address: not a failure-limit test.
        "PATGATE_AUTH_FAILURE_LIMIT": "0",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "patgate.gateway.cli", "--data-dir", str(data_dir), "serve",
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    timeout = httpx.Timeout(5.0)
    gateway = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gw_port}", timeout=timeout, trust_env=False
    )
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{admin_port}", timeout=timeout, trust_env=False
    )
    served = _Serve(proc, data_dir, gateway, admin, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"patgate serve exited: {log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if (await admin.get("/readyz")).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"patgate serve not ready: {log.read_text()}")
            await asyncio.sleep(0.05)
        served.children.append(_server_pid(data_dir))
        yield served
    finally:
        await gateway.aclose()
        await admin.aclose()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:  # pragma: no cover - only when shutdown hangs
                proc.kill()
                await proc.wait()
        # Every valkey-server this serve process started is gone with it.
        for pid in served.children:
            if _zombie_or_alive(pid) and not _is_zombie(pid):  # pragma: no cover
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"valkey-server {pid} outlived patgate serve")


def _bootstrap(data_dir: Path) -> str:
    """The CLI joins the running embedded server and prints the admin token once."""
    done = subprocess.run(
        [sys.executable, "-m", "patgate.gateway.cli", "--data-dir", str(data_dir), "bootstrap",
         "--org", "acme"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class _Observed:
    valid: list[tuple[float, int]] = field(default_factory=list)
    unknown: list[tuple[float, int]] = field(default_factory=list)
    ready: list[tuple[float, int, dict[str, str]]] = field(default_factory=list)


async def _load(served: _Serve, stop: asyncio.Event, seen: _Observed, start: float) -> None:
    """Bounded load: the valid token, an unknown well-formed one, and /readyz, in turn.

    The unknown token is a fresh one each time, so no negative cache entry answers it:
    every one of them is a Redis lookup, during the outage too."""
    valid_headers = {"Authorization": f"Bearer {served.secret}"}
    fmt = TokenFormat()

    async def status(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> int:
        try:
            return (await client.get(path, headers=headers)).status_code
        except httpx.TransportError:  # pragma: no cover - the gateway itself never goes
            return -1

    for _ in range(_MAX_REQUESTS):
        if stop.is_set() or time.monotonic() - start > _MAX_SECONDS:
            return
        # Each sample is stamped when its answer arrived.
        code = await status(served.gateway, "/x", valid_headers)
        seen.valid.append((time.monotonic(), code))
        unknown_headers = {"Authorization": f"Bearer {fmt.generate()}"}
        code = await status(served.gateway, "/x", unknown_headers)
        seen.unknown.append((time.monotonic(), code))
        response = await served.admin.get("/readyz")
        seen.ready.append((time.monotonic(), response.status_code, response.json()["checks"]))


def _restarts(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("patgate_embedded_restarts_total "):
            return float(line.split()[1])
    raise AssertionError("patgate_embedded_restarts_total not exported")


pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_serve_restarts_a_dead_valkey_server_and_recovers_by_itself(
    tmp_path: Path, sig: signal.Signals
) -> None:
    async with _serve(tmp_path) as served:
        served.secret = _bootstrap(served.data_dir)
        auth = {"Authorization": f"Bearer {served.secret}"}
        assert (await served.gateway.get("/x", headers=auth)).status_code == 200
        seen = _Observed()
        stop = asyncio.Event()
        start = time.monotonic()
        loader = asyncio.create_task(_load(served, stop, seen, start))
        await asyncio.sleep(0.5)  # steady state first
        victim = served.children[0]
        killed_at = time.monotonic()
        os.kill(victim, sig)
        while _server_pid(served.data_dir) == victim:
            assert time.monotonic() - killed_at < _RECOVERY, "valkey-server not restarted"
            await asyncio.sleep(0.005)
        restarted = time.monotonic() - killed_at
        # Recovery: the valid token answers 200 again, with no help.
        recovered_at = None
        while time.monotonic() - killed_at < _RECOVERY + 5:
            after = [(t, s) for t, s in seen.valid if t > killed_at]
            fails = [t for t, s in after if s != 200]
            if fails and any(s == 200 and t > fails[-1] for t, s in after):
                recovered_at = next(t for t, s in after if s == 200 and t > fails[-1])
                break
            if not fails and len(after) > 200:
                break  # so fast that no request even saw the outage
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # some steady state after the recovery too
        stop.set()
        await loader

        after = [(t, s) for t, s in seen.valid if t > killed_at]
        assert after, "no load after the kill"
        outage = [t for t, s in after if s != 200]
        # Only 200 (before/after) and 503 (store down) — never a 401 for the valid token.
        assert {s for _, s in seen.valid} <= {200, 503}, {s for _, s in seen.valid}
        # Never a 200 for the unknown token; 503 only while the store is down.
        assert {s for _, s in seen.unknown} <= {401, 503}, {s for _, s in seen.unknown}
        store_errors = [t for t, s in seen.unknown if s == 503]
        print(
            f"\n{sig.name}: valkey-server restarted {restarted:.3f}s after the kill; "
            f"{len(store_errors)} unknown-token lookups got 503"
            + (f" within {store_errors[-1] - killed_at:.3f}s" if store_errors else "")
        )
        assert all(t - killed_at < _RECOVERY for t in store_errors)
        if outage:
            assert recovered_at is not None, f"no recovery: {served.log.read_text()}"
            assert outage[-1] - killed_at < _RECOVERY
            assert recovered_at - killed_at < _RECOVERY
            print(
                f"{sig.name}: valid token 503s for {outage[-1] - outage[0]:.3f}s "
                f"({len(outage)} requests), 200 again {recovered_at - killed_at:.3f}s "
                "after the kill"
            )
        else:
            print(f"{sig.name}: the valid token never saw the outage (cache, then Redis)")
        assert seen.valid[-1][1] == 200
        assert seen.unknown[-1][1] == 401
        # /readyz: unready during the outage (naming the failing check), ready after.
        unready = [c for t, status, c in seen.ready if t > killed_at and status == 503]
        assert unready, "readiness never reported the outage"
        assert all(c.get("store_process") is not None for _, _, c in seen.ready)
        assert seen.ready[-1][1] == 200
        assert seen.ready[-1][2]["store_process"] == "ok"

        # Reaped, not a zombie; a new child on the same socket and AOF.
        assert not _zombie_or_alive(victim), "the killed valkey-server was not reaped"
        new_pid = _server_pid(served.data_dir)
        served.children.append(new_pid)
        assert new_pid != victim
        assert _zombie_or_alive(new_pid)
        metrics = await served.admin.get("/metrics")
        assert _restarts(metrics.text) == 1
        # The token created before the kill still works (it was on disk: WAITAOF).
        assert (await served.gateway.get("/x", headers=auth)).status_code == 200
    log = served.log.read_text()
    assert f"embedded valkey-server (pid {victim}) exited" in log
    assert "embedded valkey-server restarted" in log


# -- the supervisor itself ---------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    info = path / "server.json"
    if info.exists():  # pragma: no cover - only after a failure
        sock = json.loads(info.read_text())["socket"]
        with contextlib.suppress(redis.RedisError), redis.Redis(unix_socket_path=sock) as c:
            c.shutdown(nosave=True)


def _until(check: object, seconds: float = 10.0) -> float:
    assert callable(check)
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
    return time.monotonic() - start


def test_failed_restarts_report_their_attempt_and_back_off(data_dir: Path) -> None:
    """While the socket path is taken the restart fails: the state says which attempt it
    is, attempts are spaced out, and the server comes back once the path is free."""
    server = EmbeddedValkey(data_dir, min_backoff=0.2, max_backoff=0.4)
    url = server.start()
    restarts: list[float] = []
    server.on_restart(lambda: restarts.append(time.monotonic()))
    server.supervise()
    sock_path = url.removeprefix("unix://").split("?")[0]
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        victim = server.server_pid
        assert victim is not None
        # Take over the socket path (the old server keeps its now unnamed socket), so the
        # restart finds it "already in use" and fails.
        os.unlink(sock_path)
        squatter.bind(sock_path)
        squatter.listen(8)
        os.kill(victim, signal.SIGKILL)
        _until(lambda: server.state == "restarting (attempt 3)")
        assert not _zombie_or_alive(victim)
        assert server.restarts == 0
        squatter.close()
        os.unlink(sock_path)
        _until(lambda: server.state == "ok")
        assert server.restarts == 1
        assert len(restarts) == 1
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.ping()
        assert _server_pid(data_dir) == server.server_pid != victim
    finally:
        squatter.close()
        server.stop()
    assert server.state == "stopped"
    assert not (data_dir / "server.json").exists()


def test_a_joined_process_does_not_supervise(data_dir: Path) -> None:
    owner = EmbeddedValkey(data_dir)
    owner.start()
    try:
        joiner = EmbeddedValkey(data_dir)
        joiner.start()
        joiner.supervise()
        assert joiner._supervisor is None
        assert joiner.state == "stopped"  # it owns no server process
        joiner.stop()
    finally:
        owner.stop()


def test_stop_ends_supervision_without_a_restart(data_dir: Path) -> None:
    server = EmbeddedValkey(data_dir)
    server.start()
    server.supervise()
    pid = server.server_pid
    assert pid is not None
    server.stop()
    assert server.restarts == 0
    assert not _zombie_or_alive(pid)
    assert not (data_dir / "server.json").exists()
