"""Servers under test, each in its own subprocess on 127.0.0.1, started and stopped here.

Every ASGI server is ``python -m uvicorn --factory bench.apps:<name>`` with uvloop,
httptools, one worker and no access log; configuration travels in environment variables
(``PATGATE_*`` for patgate's own settings, ``BENCH_*`` for the bench apps). A server is
ready when ``GET /healthz`` answers 200 (a public route in the bench policy), which for
patgate apps also means the runtime started: uvicorn finishes the lifespan startup
before it accepts connections.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GATEWAY_SERVER",
    "ROOT",
    "Proc",
    "children",
    "cpu_seconds",
    "free_port",
    "patgate_gateway",
    "process",
    "uvicorn_server",
    "wait_http",
]

ROOT = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Proc:
    """A running server: where it listens and which process to profile."""

    name: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> tuple[int, ...]:
    """The direct children of ``pid`` (uvicorn's workers under its supervisor)."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found = " ".join((t / "children").read_text() for t in tasks)
    except OSError:
        return ()
    return tuple(int(p) for p in found.split())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux /proc; 0.0 elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``GET path`` until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} not ready within {timeout:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _wait_workers(
    proc: subprocess.Popen[bytes], workers: int, port: int, ready_path: str, name: str
) -> None:
    """With ``workers`` > 1, until the supervisor ``proc`` has that many children and
    each has had time to answer ``ready_path`` on ``port``."""
    if workers <= 1:
        return
    deadline = time.monotonic() + _START_TIMEOUT
    while len(children(proc.pid)) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {workers} workers did not start")
        time.sleep(0.05)
    # Each worker answers once it is up; give the last one a moment after its fork.
    time.sleep(1.0)
    for _ in range(workers * 4):
        wait_http(port, ready_path, proc, _START_TIMEOUT)


#: how :func:`uvicorn_server` runs ``gateway_app`` as ``patgate gateway`` runs its
#: listener: the gateway's protocol (limits and fast path), no uvicorn proxy-headers
#: middleware (patgate decides whom to trust), no Date header of its own.
GATEWAY_SERVER: dict[str, Any] = {
    "http": "bench.apps:GatewayBenchProtocol",
    "proxy_headers": False,
    "date_header": False,
}


@contextlib.contextmanager
def uvicorn_server(
    factory: str,
    env: Mapping[str, str],
    *,
    ready_path: str = "/healthz",
    workers: int = 1,
    http: str = "httptools",
    proxy_headers: bool = True,
    date_header: bool = True,
) -> Iterator[Proc]:
    """Run ``bench.apps:<factory>`` under uvicorn until the block ends (``workers`` > 1:
    uvicorn's supervisor and that many worker processes, sharing the port)."""
    port = free_port()
    args = [
        sys.executable, "-m", "uvicorn", "--factory", f"bench.apps:{factory}",
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", http, "--ws", "none",
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
        "--lifespan", "on", "--no-server-header",
        *(() if proxy_headers else ("--no-proxy-headers",)),
        *(() if date_header else ("--no-date-header",)),
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(env), stdin=subprocess.DEVNULL)
    try:
        wait_http(port, ready_path, proc, _START_TIMEOUT)
        _wait_workers(proc, workers, port, ready_path, factory)
        yield Proc(factory, port, proc.pid)
    finally:
        _stop(proc)


@contextlib.contextmanager
def patgate_gateway(
    env: Mapping[str, str], upstream: str, policy: Path, *, workers: int = 1
) -> Iterator[Proc]:
    """``patgate gateway --workers N`` itself (``PATGATE_WORKERS``: the parent binds, N
    pre-forked workers serve; gateway/workers.py) on free loopback ports, until the
    block ends. Ready once every worker has started and the admin listener answers."""
    port, admin = free_port(), free_port()
    args = [
        sys.executable, "-m", "patgate", "gateway", "--policy", str(policy),
        "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}", "--workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(env), stdin=subprocess.DEVNULL)
    try:
        wait_http(admin, "/healthz", proc, _START_TIMEOUT)
        _wait_workers(proc, workers, admin, "/healthz", "patgate gateway")
        yield Proc(f"patgate gateway --workers {workers}", port, proc.pid)
    finally:
        _stop(proc)


@contextlib.contextmanager
def process(
    name: str,
    args: list[str],
    port: int,
    *,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[Proc]:
    """Run any server command (nginx, traefik) that listens on ``port`` until the block
    ends; ``log``: where its output goes (a peer that logs every request cut short when
    the load stops would flood the bench's own output)."""
    out = None if log is None else log.open("wb")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=_env(env or {}), stdin=subprocess.DEVNULL, stdout=out, stderr=out
    )
    if out is not None:
        out.close()  # the child holds its own descriptor
    try:
        wait_http(port, ready_path, proc, _START_TIMEOUT)
        yield Proc(name, port, proc.pid)
    finally:
        _stop(proc)
