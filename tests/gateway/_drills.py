"""Pieces of the failover drills (tests/gateway/test_failover_drills.py), built on
patgate's public surfaces only: the ``patgate`` CLI and ``patgate serve`` as
subprocesses, and HTTP to 127.0.0.1.

* :class:`Cli` runs ``python -m patgate --json …`` against one store URL and namespace.
* :func:`gateways` starts ``patgate serve`` processes (proxy mode, an upstream given) and
  stops exactly those.
* :class:`Load` sends a bounded mix of valid, revoked and unknown tokens through every
  gateway (bounded in requests *and* seconds; it also stops when told) and keeps every
  answer with its send and receive times; it polls each gateway's ``/readyz`` too.
* :func:`watch_revoke` revokes a token through the CLI while polling every gateway with
  it, and measures when each one first answers 401, from the CLI's own completion.
* :func:`unknown_secret`: a well-formed secret (the README's format: ``pat_`` + 30
  base62 characters + their 6-character base62 CRC32) that was never issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import sys
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "Cli",
    "Gateway",
    "Load",
    "RevokeWatch",
    "Sample",
    "gateways",
    "unknown_secret",
    "watch_revoke",
]

_ROOT = Path(__file__).resolve().parents[2]
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: bounded waits, in seconds.
_READY, _EXIT, _CLI = 30.0, 20.0, 30.0


def unknown_secret(prefix: str = "pat") -> str:
    """A secret that passes the format and checksum check but was never issued, so only
    the store can say it is unknown."""
    head = f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(30))
    value = zlib.crc32(head.encode())
    check = []
    for _ in range(6):
        value, rem = divmod(value, 62)
        check.append(_ALPHABET[rem])
    return head + "".join(reversed(check))


def _lower_priority() -> None:
    os.nice(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any PATGATE_ setting of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {**env, "PYTHONPATH": str(_ROOT), **extra}


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    #: ``time.monotonic()`` when the process printed its result (the operation had
    #: returned) — for a command printing nothing, when it exited.
    done: float

    def json(self) -> Any:
        assert self.code == 0, (self.code, self.out, self.err)
        return json.loads(self.out)


@dataclass
class Cli:
    """``patgate --redis-url URL --namespace NS --json …`` as a subprocess."""

    url: str
    namespace: str
    cwd: Path

    async def run(self, *argv: str) -> CliResult:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "patgate", "--redis-url", self.url,
            "--namespace", self.namespace, "--json", *argv,
            cwd=self.cwd, env=clean_env(PATGATE_DEFAULT_ORG="acme", PYTHONUNBUFFERED="1"),
            # Behind the gateways for the CPU (a 2-CPU box runs all of it): its imports
            # must not slow the very polls that time it. Timing starts at its output.
            preexec_fn=_lower_priority,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(_CLI):
                # The JSON result is one line, printed once the operation returned.
                first = await proc.stdout.readline()
                done = time.monotonic()
                rest, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if not first:
            done = time.monotonic()
        return CliResult(code, (first + rest).decode(), err.decode(), done)

    async def ok(self, *argv: str) -> Any:
        result = await self.run(*argv)
        assert result.code == 0, (argv, result.code, result.out, result.err)
        return result.json()

    async def setup(self) -> None:
        """Org ``acme`` whose members may grant ``threads:read``, and its user alice."""
        await self.ok("bootstrap", "--org", "acme")
        await self.ok("orgs", "put", "acme", "--member-scope", "threads:read")
        await self.ok("users", "put", "alice", "--org", "acme", "--email", "alice@acme.io")

    async def create(self, name: str) -> tuple[str, str]:
        """A new token of alice's; returns (id, secret)."""
        created = await self.ok(
            "tokens", "create", "--user", "alice", "--org", "acme", "--name", name,
            "--scope", "threads:read", "--expiration", "7d",
        )  # fmt: skip
        return str(created["id"]), str(created["token"])

    async def revoke(self, token_id: str) -> CliResult:
        return await self.run("tokens", "revoke", token_id)


@dataclass
class Gateway:
    """One ``patgate serve`` process and a client for each of its listeners."""

    proc: asyncio.subprocess.Process
    log: Path
    port: int
    admin: int
    http: httpx.AsyncClient = field(init=False)
    admin_http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", timeout=5, trust_env=False, limits=limits
        )
        self.admin_http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.admin}", timeout=5, trust_env=False
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def status(self, secret: str, path: str = "/drill") -> int:
        """The gateway's answer for ``secret``; 0 when it gave none (a transport error)."""
        try:
            return (
                await self.http.get(path, headers={"Authorization": f"Bearer {secret}"})
            ).status_code
        except httpx.TransportError:
            return 0

    async def ready(self) -> int:
        return (await self.readyz())[0]

    async def readyz(self) -> tuple[int, str]:
        """/readyz's status and body (0 and the error when the admin listener did not answer)."""
        try:
            response = await self.admin_http.get("/readyz")
        except httpx.TransportError as exc:
            return 0, repr(exc)
        return response.status_code, response.text

    async def cache_hits(self) -> float:
        text = (await self.admin_http.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith("patgate_cache_hits_total "):
                return float(line.split()[1])
        return 0.0

    async def wait_ready(self, limit: float = _READY) -> None:
        deadline = time.monotonic() + limit
        while await self.ready() != 200:
            if self.proc.returncode is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready after {limit:.0f} s:\n{self.text()}")
            await asyncio.sleep(0.05)

    async def aclose(self) -> int | None:
        await self.http.aclose()
        await self.admin_http.aclose()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), _EXIT)
            except TimeoutError:  # pragma: no cover - only when shutdown hangs
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


@contextlib.asynccontextmanager
async def gateways(
    tmp: Path, count: int, upstream: int, url: str, namespace: str
) -> AsyncIterator[list[Gateway]]:
    """``count`` ``patgate serve`` processes on ``url`` in front of ``upstream``."""
    started: list[Gateway] = []
    env = clean_env(
        PATGATE_REDIS_URL=url,
        PATGATE_NAMESPACE=namespace,
        PATGATE_CACHE_TTL="60",  # only an invalidation evicts a cached token
        PATGATE_LOG_LEVEL="info",
        # The drills poll with revoked tokens from 127.0.0.1 on purpose: no 429s for it
        # (the failed-authentication limit has tests of its own).
        PATGATE_AUTH_FAILURE_LIMIT="0",
    )
    try:
        for n in range(count):
            port, admin = free_port(), free_port()
            log = tmp / f"gateway-{n}.log"
            data = tmp / f"gateway-{n}"
            data.mkdir()
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "patgate", "--data-dir", str(data), "serve",
                    "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                    "--upstream", f"http://127.0.0.1:{upstream}",
                    cwd=data, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            started.append(Gateway(proc, log, port, admin))
        for gw in started:
            await gw.wait_ready()
        yield started
    finally:
        for gw in started:
            await gw.aclose()


@dataclass(frozen=True, slots=True)
class Sample:
    gateway: int
    #: valid, revoked, unknown (a fixed set) or fresh (a new unknown secret each time)
    kind: str
    secret: str
    sent: float
    received: float
    status: int


@dataclass
class Load:
    """A bounded mix of tokens through every gateway, ``per_gateway`` senders each."""

    gws: Sequence[Gateway]
    valid: list[str]
    revoked: list[str]
    unknown: list[str]
    max_requests: int = 40_000
    max_seconds: float = 25.0
    per_gateway: int = 2
    #: seconds each sender waits between requests (keeps a 2-CPU box responsive).
    pace: float = 0.002
    samples: list[Sample] = field(default_factory=list)
    #: (gateway, time, /readyz status), every ``ready_every`` seconds.
    readiness: list[tuple[int, float, int]] = field(default_factory=list)
    ready_every: float = 0.05
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _going: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: int = 0

    def __post_init__(self) -> None:
        self._going.set()

    def stop(self) -> None:
        self._stop.set()
        self._going.set()

    @contextlib.asynccontextmanager
    async def paused(self, limit: float = 10.0) -> AsyncIterator[None]:
        """No request of the load in flight inside the block (it may still hold off the
        load's bounds: its clock keeps running)."""
        self._going.clear()
        try:
            deadline = time.monotonic() + limit
            while self._in_flight:
                assert time.monotonic() < deadline, "the load's requests did not finish"
                await asyncio.sleep(0.005)
            yield
        finally:
            if not self._stop.is_set():
                self._going.set()

    async def run(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        senders = [
            self._send(i, gw, n) for i, gw in enumerate(self.gws) for n in range(self.per_gateway)
        ]
        probes = [self._probe(i, gw) for i, gw in enumerate(self.gws)]
        await asyncio.gather(*senders, *probes)

    def _done(self) -> bool:
        return (
            self._stop.is_set()
            or len(self.samples) >= self.max_requests
            or time.monotonic() >= self._deadline
        )

    async def _send(self, index: int, gw: Gateway, offset: int) -> None:
        kinds = itertools.cycle(["valid", "revoked", "valid", "unknown", "valid", "fresh"])
        for _ in range(offset):
            next(kinds)
        n = offset
        while not self._done():
            kind = next(kinds)
            n += 1
            if kind == "fresh":
                secret = unknown_secret()
            else:
                pool = {"valid": self.valid, "revoked": self.revoked, "unknown": self.unknown}
                secret = pool[kind][n % len(pool[kind])]
            await self._going.wait()
            if self._done():
                return
            self._in_flight += 1
            try:
                sent = time.monotonic()
                status = await gw.status(secret)
                self.samples.append(Sample(index, kind, secret, sent, time.monotonic(), status))
            finally:
                self._in_flight -= 1
            await asyncio.sleep(self.pace)

    async def _probe(self, index: int, gw: Gateway) -> None:
        # /readyz never touches the token cache: it keeps running while the load is paused.
        while not self._done():
            status = await gw.ready()
            self.readiness.append((index, time.monotonic(), status))
            await asyncio.sleep(self.ready_every)


@dataclass
class RevokeWatch:
    #: when the CLI printed the revoked token (its revoke had returned).
    done: float
    code: int
    err: str
    #: per gateway: seconds from ``done`` to its first 401 (None: never refused);
    #: negative when a gateway refused before the CLI had printed.
    latency: list[float | None]
    #: per gateway: the answers neither 200 nor 401 before its first 401 — a 503 while
    #: the store fails over, which the CLI may outlast by retrying: it is no acceptance,
    #: and not the revoke's effect either (so it does not end the revoke's latency).
    unavailable: list[list[int]]
    #: per gateway: every status after its first 401 (must not contain 200).
    after: list[list[int]]
    polls: list[int]
    #: per gateway: (sent, received, status) of every poll, times relative to ``done``.
    trace: list[list[tuple[float, float, int]]]


async def watch_revoke(
    cli: Cli, gws: Sequence[Gateway], token_id: str, secret: str, *, limit: float = 5.0
) -> RevokeWatch:
    """Poll every gateway with ``secret`` while ``patgate tokens revoke`` runs, until
    each gateway answered 401 (and 0.2 s more) or ``limit`` seconds after the CLI printed."""
    refused: list[float | None] = [None] * len(gws)
    unavailable: list[list[int]] = [[] for _ in gws]
    after: list[list[int]] = [[] for _ in gws]
    polls = [0] * len(gws)
    trace: list[list[tuple[float, float, int]]] = [[] for _ in gws]
    result: CliResult | None = None

    async def poll(i: int, gw: Gateway) -> None:
        while True:
            sent = time.monotonic()
            status = await gw.status(secret)
            received = time.monotonic()
            trace[i].append((sent, received, status))
            polls[i] += 1
            if refused[i] is not None:
                after[i].append(status)
            elif status == 401:
                refused[i] = received
            elif status != 200:
                # Before the revoke has taken effect a 200 is right and a 503 is the
                # store failing over (issue 16's CI run: ten 503s, then 200s until the
                # CLI's retried commit landed, then 401s). Only a 401 is the refusal.
                unavailable[i].append(status)
            if result is not None:
                first = refused[i]
                if first is not None and received - max(first, result.done) > 0.2:
                    return
                if received - result.done > limit:
                    return

    async def revoke() -> None:
        nonlocal result
        result = await cli.revoke(token_id)

    pollers = [asyncio.create_task(poll(i, gw)) for i, gw in enumerate(gws)]
    try:
        await revoke()
        assert result is not None
        if result.code != 0:
            for task in pollers:
                task.cancel()
        else:
            await asyncio.gather(*pollers)
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    assert result is not None
    latency = [None if r is None else r - result.done for r in refused]
    relative = [[(a - result.done, b - result.done, c) for a, b, c in t] for t in trace]
    return RevokeWatch(
        result.done, result.code, result.err, latency, unavailable, after, polls, relative
    )
