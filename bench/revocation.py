"""Revocation propagation: how long until *another* gateway process refuses a revoked token.

Two gateway processes (``bench.apps:gateway_app``: ``create_gateway_app`` in front of the
bench upstream) share the store. For each of ``rounds`` pre-seeded tokens:

1. warm both gateways with the token; check gateway B answered the second request from
   its cache (its hit counter moved), so what follows measures invalidation, not a miss;
2. revoke it through the service layer in this process
   (``TokenService.revoke(Actor.system(), id)``: read, ``COMMIT`` with CAS, audit event
   and ``PUBLISH t <digest>``), timing the call;
3. poll gateway B over one persistent connection until it answers 401 (bounded by
   ``timeout`` and ``max_polls``).

Latency = time of B's first 401 minus the moment the revoke call returned (what a caller of
the management API could observe); the commit's own duration is reported beside it.
Gateway A gets one request afterwards, which must be a 401 too.

:func:`topology_revocation` runs the same measurement on a real Sentinel or Cluster
topology (bench/topologies.py): both gateway processes get ``PATGATE_REDIS_URL`` = the
topology's URL, and the tokens are spread over ``orgs`` orgs, so on a Cluster the revokes
go through every primary's sharded channels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.apps import STATS_PATH
from bench.env import seeded_env
from bench.servers import GATEWAY_SERVER, Proc, uvicorn_server
from bench.topologies import Kind, topology
from patgate.gateway.lifecycle import Actor, TokenService
from patgate.middleware.connect import ready
from patgate.middleware.keys import Keyspace
from patgate.middleware.records import Token
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["RevocationResult", "percentile", "revocation_latency", "topology_revocation"]

#: the one client factory (issue 10), with room for the benchmark's bulk operations.
_BENCH_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class RevocationResult:
    rounds: int
    #: seconds from the revoke call's return to B's first 401, one per round.
    latencies: list[float]
    #: seconds the revoke call itself took.
    commits: list[float]
    #: rounds whose very first poll already got 401.
    first_poll: int
    #: rounds in which B still answered 200 when the bounds ran out.
    missed: int
    #: seconds the topology took to start (Sentinel/Cluster rows; 0 on the shared store).
    startup: float = 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (so p99 of 200 samples is the 198th, not the worst)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _hits(session: aiohttp.ClientSession, proc: Proc) -> float:
    async with session.get(proc.url + STATS_PATH) as response:
        return float((await response.json())["hits"])


async def _get(session: aiohttp.ClientSession, url: str, secret: str) -> int:
    async with session.get(url, headers={"Authorization": "Bearer " + secret}) as response:
        await response.read()
        return response.status


async def _poll(
    session: aiohttp.ClientSession,
    url: str,
    secret: str,
    since: float,
    poll_timeout: float,
    max_polls: int,
) -> int:
    """GET until 401 or the bounds (count, and seconds after ``since``) run out."""
    status = await _get(session, url, secret)
    polls = 1
    while status != 401 and polls < max_polls and time.perf_counter() - since < poll_timeout:
        polls += 1
        status = await _get(session, url, secret)
    return status


async def _run(
    redis_url: str,
    namespace: str,
    a: Proc,
    b: Proc,
    tokens: Sequence[Token],
    secrets: Sequence[str],
    poll_timeout: float,
    max_polls: int,
) -> RevocationResult:
    client = redis_client(redis_url, timeout=_BENCH_TIMEOUT)
    await ready(client)
    service = TokenService(TokenStore(client, Keyspace(namespace)), TokenFormat())
    actor = Actor.system(user_agent="patgate-bench")
    latencies: list[float] = []
    commits: list[float] = []
    first_poll = missed = 0
    connector = aiohttp.TCPConnector(limit=4)
    session_timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=session_timeout) as session:
        url_a, url_b = a.url + "/items", b.url + "/items"
        try:
            for token, secret in zip(tokens, secrets, strict=True):
                for url in (url_a, url_b):
                    if (fresh := await _get(session, url, secret)) != 200:
                        raise RuntimeError(
                            f"a fresh token was refused before its revocation ({fresh})"
                        )
                hits = await _hits(session, b)
                if await _get(session, url_b, secret) != 200 or await _hits(session, b) <= hits:
                    raise RuntimeError("gateway B did not answer from its cache")
                started = time.perf_counter()
                await service.revoke(actor, token.id)
                committed = time.perf_counter()
                commits.append(committed - started)
                polls = 0
                status = 200
                while polls < max_polls and time.perf_counter() - committed < poll_timeout:
                    polls += 1
                    status = await _get(session, url_b, secret)
                    if status == 401:
                        break
                latencies.append(time.perf_counter() - committed)
                first_poll += polls == 1 and status == 401
                if status != 401:
                    missed += 1
                else:
                    # A learns of the revocation from its own subscription, a moment
                    # apart from B: it gets the same bound, and must meet it.
                    late = await _poll(session, url_a, secret, committed, poll_timeout, max_polls)
                    if late != 401:
                        raise RuntimeError(f"gateway A answered a revoked token with {late}")
        finally:
            await client.aclose()
    return RevocationResult(len(latencies), latencies, commits, first_poll, missed)


def revocation_latency(
    redis_url: str,
    namespace: str,
    a: Proc,
    b: Proc,
    tokens: Sequence[Token],
    secrets: Sequence[str],
    *,
    timeout: float = 1.0,
    max_polls: int = 5000,
) -> RevocationResult:
    """Revoke each token once (tokens must be fresh and active) and time B's refusal."""
    return asyncio.run(_run(redis_url, namespace, a, b, tokens, secrets, timeout, max_polls))


def topology_revocation(
    kind: Kind,
    rounds: int,
    *,
    users: int = 300,
    orgs: int = 30,
    timeout: float = 1.0,
    max_polls: int = 5000,
    extra_env: Mapping[str, str] | None = None,
) -> RevocationResult:
    """Start a ``kind`` topology, seed ``rounds`` tokens over ``orgs`` orgs, start the
    upstream and two gateway processes on it, and time each revoke reaching the second.
    Raises :class:`bench.topologies.Unsupported` when the binary cannot run ``kind``."""
    with topology(kind) as topo, tempfile.TemporaryDirectory(prefix="patgate-bench-") as tmp:
        env = seeded_env(topo.url, Path(tmp), many=0, revocable=rounds, users=users,
                         orgs=orgs, extra_env=extra_env)  # fmt: skip
        with uvicorn_server("upstream_app", {}) as up:
            ge = env.patgate_env(PATGATE_UPSTREAM_URL=up.url)
            with (
                uvicorn_server("gateway_app", ge, **GATEWAY_SERVER) as a,
                uvicorn_server("gateway_app", ge, **GATEWAY_SERVER) as b,
            ):
                result = revocation_latency(
                    topo.url, env.namespace, a, b, env.revocable, env.revocable_secrets,
                    timeout=timeout, max_polls=max_polls,
                )  # fmt: skip
    return dataclasses.replace(result, startup=topo.startup)
