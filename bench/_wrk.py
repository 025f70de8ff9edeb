"""HTTP load for the benchmarks: ``wrk --latency`` when installed, else a bounded Python loop.

``run_load`` returns req/s and the p50/p99 latencies parsed from wrk's "Latency
Distribution" block. With ``tokens`` it writes a small Lua script that rotates the
``Authorization`` header over a file of secrets, each wrk thread starting at its own
offset (wrk gives every thread its own Lua state). The file and the script live in a
temporary directory that is removed afterwards; secrets are never printed.

Without wrk (``apt-get install wrk``) the fallback is an aiohttp loop with the same number
of connections and a hard deadline; its numbers are lower than wrk's (the Python client
eats CPU the server would otherwise get), so the table says which tool produced them.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["LoadResult", "have_wrk", "load_tool", "parse_wrk", "run_load"]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY_RE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL_RE = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")

# One Lua state per wrk thread: setup() numbers the threads, init() reads the secrets
# and starts each thread at its own offset so the threads do not walk in lockstep.
_ROTATE_LUA = """
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  headers = {}
  for line in io.lines("%(tokens)s") do
    headers[#headers + 1] = "Bearer " .. line
  end
  local n = #headers
  i = (tonumber(tid) or 0) * math.floor(n / %(threads)d)
end
function request()
  i = i %% #headers + 1
  wrk.headers["Authorization"] = headers[i]
  return wrk.format("GET", "%(path)s")
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load run: throughput, latency percentiles (ms) and what went wrong."""

    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.non_2xx == 0 and self.socket_errors == 0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def load_tool(connections: int = 16, threads: int = 2) -> str:
    if have_wrk():
        return f"wrk -t{threads} -c{connections} --latency"
    return f"Python aiohttp loop, {connections} connections (wrk missing: apt-get install wrk)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    """Parse ``wrk --latency`` output; raises ValueError when a number is missing."""
    rps = _RPS_RE.search(output)
    total = _TOTAL_RE.search(output)
    latencies = {m.group(1): _ms(m.group(2), m.group(3)) for m in _LATENCY_RE.finditer(output)}
    if rps is None or total is None or "50" not in latencies or "99" not in latencies:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = _NON2XX_RE.search(output)
    sock = _SOCKET_RE.search(output)
    # wrk counts every timeout as a socket error too; read errors at the very end of a
    # run (connections closed by wrk itself) do not happen with keep-alive servers.
    socket_errors = sum(int(g) for g in sock.groups()) if sock else 0
    return LoadResult(
        tool="wrk",
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_load(
    url: str,
    *,
    duration: float,
    connections: int = 16,
    threads: int = 2,
    headers: Sequence[tuple[str, str]] = (),
    tokens: Sequence[str] = (),
) -> LoadResult:
    """GET ``url`` for ``duration`` seconds (whole seconds for wrk, at least 1).

    ``tokens`` rotates ``Authorization: Bearer <token>`` per request; ``headers`` are
    sent on every request."""
    if have_wrk():
        return _wrk(url, duration, connections, threads, headers, tokens)
    return asyncio.run(_python_load(url, duration, connections, headers, tokens))


def _wrk(
    url: str,
    duration: float,
    connections: int,
    threads: int,
    headers: Sequence[tuple[str, str]],
    tokens: Sequence[str],
) -> LoadResult:
    seconds = max(1, round(duration))
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    args += ["--timeout", "5s"]
    for name, value in headers:
        args += ["-H", f"{name}: {value}"]
    with tempfile.TemporaryDirectory(prefix="patgate-wrk-") as tmp:
        if tokens:
            token_file = Path(tmp) / "tokens.txt"
            token_file.write_text("\n".join(tokens) + "\n")
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            script = Path(tmp) / "rotate.lua"
            script.write_text(
                _ROTATE_LUA % {"tokens": token_file, "threads": threads, "path": path}
            )
            args += ["-s", str(script)]
        args.append(url)
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_wrk(proc.stdout)


async def _python_load(
    url: str,
    duration: float,
    connections: int,
    headers: Sequence[tuple[str, str]],
    tokens: Sequence[str],
) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    bad = 0
    errors = 0
    deadline = time.monotonic() + duration
    base = dict(headers)
    auth = ["Bearer " + t for t in tokens]

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal bad, errors
        i = offset
        while time.monotonic() < deadline:
            hdrs = base
            if auth:
                i = (i + 1) % len(auth)
                hdrs = {**base, "Authorization": auth[i]}
            started = time.perf_counter()
            try:
                async with session.get(url, headers=hdrs) as response:
                    await response.read()
                    if response.status >= 400:
                        bad += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=5)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        step = max(1, len(auth) // connections) if auth else 0
        await asyncio.gather(*(worker(session, n * step) for n in range(connections)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return LoadResult(
        tool="python",
        requests=len(latencies),
        seconds=elapsed,
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        non_2xx=bad,
        socket_errors=errors,
    )
