"""Instructions per request of each server, counted by valgrind: deterministic.

On a shared 2-core VM req/s and even CPU µs per request move with the neighbours; the
number of user-space instructions a server executes per request barely does (±1.5 %).
Each server (the same ``bench.apps`` factories and uvicorn options as ``bench/run.py``)
runs under ``valgrind --tool=cachegrind --cache-sim=no`` twice, answering ``--small`` and
then ``--large`` requests over one keep-alive connection, one at a time, after a warm-up
(concurrent connections batch in the event loop differently from run to run, ±10 %); the
difference of the two totals over the difference of the counts is the cost of one
request, start-up and shutdown cancelling out. Issue 16 used it to find where the
gateway's and the middleware's time goes (docs/performance.md).

    python bench/instructions.py [--only gateway,patgate] [--small 300] [--large 1300]

Needs ``valgrind`` (``apt-get install valgrind``). Everything on 127.0.0.1; every load is
a fixed number of requests with a timeout; about 40 s per server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from bench.env import BenchEnv, bench_env
from bench.servers import GATEWAY_SERVER, ROOT, Proc, free_port, uvicorn_server, wait_http

__all__ = ["SERVERS", "instructions_per_request", "main"]

#: name → (bench.apps factory, uvicorn --http, whether it is the gateway behind the upstream).
SERVERS: dict[str, tuple[str, str, bool]] = {
    "bare": ("bare_app", "httptools", False),
    "floor": ("floor_app", "httptools", False),
    "patgate": ("patgate_app", "httptools", False),
    "upstream": ("upstream_app", "httptools", False),
    "gateway": ("gateway_app", str(GATEWAY_SERVER["http"]), True),
}
_START_TIMEOUT = 300.0  # Python's start-up under valgrind takes a while
_LOAD_TIMEOUT = 600.0
_CONNECTIONS = 1
_WARMUP = 64


async def _load(port: int, requests: int, token: str) -> None:
    """``requests`` GETs of /items over keep-alive connections; every answer must be 200."""
    per = max(1, requests // _CONNECTIONS)
    head = (
        f"GET /items HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(per):
                writer.write(head)
                await writer.drain()
                answer = await reader.readuntil(b"\r\n\r\n")
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {answer[:40]!r}")
                length = re.search(rb"(?i)content-length: *(\d+)", answer)
                if length is None:
                    raise RuntimeError("answer without Content-Length")
                await reader.readexactly(int(length.group(1)))
        finally:
            writer.close()

    async with asyncio.timeout(_LOAD_TIMEOUT):
        await asyncio.gather(*(one() for _ in range(_CONNECTIONS)))


def _env(env: BenchEnv, upstream: Proc | None) -> dict[str, str]:
    extra = {"BENCH_FLOOR_TOKEN": env.token}
    if upstream is not None:
        extra["PATGATE_UPSTREAM_URL"] = upstream.url
    return {**os.environ, **env.patgate_env(**extra), "PYTHONPATH": str(ROOT)}


def _counted(name: str, env: BenchEnv, upstream: Proc | None, requests: int) -> int:
    """Total instructions of one server run answering ``requests`` requests."""
    factory, http, _ = SERVERS[name]
    port = free_port()
    args = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "uvicorn", "--factory", f"bench.apps:{factory}",
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", http,
        "--ws", "none", "--no-access-log", "--log-level", "warning", "--lifespan", "on",
        "--no-server-header",
    ]  # fmt: skip
    if http != "httptools":  # the gateway, run as `patgate gateway` runs it
        args += ["--no-proxy-headers", "--no-date-header"]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=_env(env, upstream), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_http(port, "/healthz", proc, _START_TIMEOUT)
        asyncio.run(_load(port, _WARMUP, env.token))
        asyncio.run(_load(port, requests, env.token))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=_START_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    found = re.search(r"I\s+refs:\s+([\d,]+)", err.decode(errors="replace"))
    if found is None:
        raise RuntimeError(f"{name}: valgrind printed no instruction count")
    return int(found.group(1).replace(",", ""))


@contextlib.contextmanager
def _upstream_for(name: str) -> Iterator[Proc | None]:
    if SERVERS[name][2]:
        with uvicorn_server("upstream_app", {}) as upstream:
            yield upstream
    else:
        yield None


def instructions_per_request(name: str, env: BenchEnv, *, small: int, large: int) -> float:
    """Instructions the ``name`` server executes per request (see the module docstring)."""
    with _upstream_for(name) as upstream:
        low = _counted(name, env, upstream, small)
        high = _counted(name, env, upstream, large)
    per = _CONNECTIONS  # the loads are whole multiples of the connections
    return (high - low) / ((large // per - small // per) * per)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default=",".join(SERVERS), help="comma-separated servers")
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    a = parser.parse_args(argv)
    names = [n for n in a.only.split(",") if n]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        parser.error(f"unknown servers: {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    if a.large <= a.small:
        parser.error("--large must be more than --small")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    with bench_env(many=10, revocable=1, users=10) as env:
        print("| server | instructions per request |")
        print("|---|---:|")
        for name in names:
            started = time.monotonic()
            per = instructions_per_request(name, env, small=a.small, large=a.large)
            took = time.monotonic() - started
            print(f"| {name} | {per:,.0f} |", flush=True)
            print(f"  ({name}: {took:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
