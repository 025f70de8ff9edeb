"""Redis operation timeouts are settings (issue 9): a black-holed store — it accepts the
TCP connection and never answers — gets a 503 within about ``PATGATE_REDIS_TIMEOUT``
(1 s by default), not after redis-py's retries; durable writes still wait out WAITAOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from patgate.gateway.cli_context import connect_store
from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.config import DataPlaneConfig
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import StoreUnavailable
from patgate.middleware.records import Org
from patgate.middleware.runtime import DURABLE_TIMEOUT_MS, Runtime, write_timeout
from patgate.middleware.store import Plan, TokenStore
from patgate.middleware.tokenformat import TokenFormat

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _black_hole() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts, reads and never replies."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def _ok(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _timed_lookup(runtime: Runtime) -> float:
    """One cache-missing lookup through the Authenticator; it must fail as unavailable."""
    secret = TokenFormat().generate()  # well formed, so it costs a Redis lookup
    headers = [(b"authorization", f"Bearer {secret}".encode())]
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await runtime.authenticator.authenticate("GET", "/x", headers, {"client": None})
    return time.monotonic() - start


async def test_black_holed_store_answers_503_within_the_default_timeout() -> None:
    async with _black_hole() as port:
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0")
        assert settings.redis_timeout == 1.0
        app = PatgateMiddleware(Starlette(routes=[Route("/x", _ok)]), settings=settings)
        assert app.runtime is not None
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                for _ in range(2):  # a fresh connection, then a pooled one
                    start = time.monotonic()
                    secret = TokenFormat().generate()
                    response = await client.get("/x", headers={"Authorization": f"Bearer {secret}"})
                    elapsed = time.monotonic() - start
                    assert response.status_code == 503
                    # One timeout, not one per retry (before: 5 s twice, about 10 s).
                    assert 0.9 <= elapsed < 1.5, elapsed
        finally:
            await app.runtime.aclose()


@pytest.mark.parametrize("seconds", [0.2, 0.6])
async def test_the_setting_bounds_the_wait(seconds: float) -> None:
    timeout = seconds
    async with _black_hole() as port:
        runtime = Runtime(Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=timeout))
        try:
            elapsed = await _timed_lookup(runtime)
            assert timeout * 0.9 <= elapsed < timeout + 0.4, elapsed
            start = time.monotonic()
            checks = await runtime.ready()
            assert checks["redis"].startswith("ping failed")
            assert time.monotonic() - start < timeout + 0.4
        finally:
            await runtime.aclose()


def test_timeouts_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"PATGATE_REDIS_TIMEOUT": "0.25", "PATGATE_REDIS_CONNECT_TIMEOUT": "0.1"}
    )
    assert (settings.redis_timeout, settings.redis_connect_timeout) == (0.25, 0.1)
    runtime = Runtime(settings.evolve(redis_url="redis://127.0.0.1:1/0"))
    kwargs = runtime.redis.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.1)
    # The management client waits longer than WAITAOF may hold a durable write.
    write_kwargs = runtime.store.client.connection_pool.connection_kwargs
    assert write_kwargs["socket_timeout"] == write_timeout(settings)
    assert write_timeout(settings) > DURABLE_TIMEOUT_MS / 1000


async def test_management_writes_outlast_a_short_data_plane_timeout(
    valkey_url: str, namespace: str, redis_client: aioredis.Redis
) -> None:
    """A durable write may be held by the server for up to WAITAOF's 2 s — far longer
    than a 50 ms data-plane timeout. Writes held 300 ms (CLIENT PAUSE WRITE stands in for
    a slow fsync) fail on the data plane's client but complete on the management store."""
    settings = Settings(redis_url=valkey_url, namespace=namespace, redis_timeout=0.05)
    runtime = Runtime(settings)

    def plan(store: TokenStore, org_id: str) -> Plan:
        now = time.time()
        p = store.plan(org_id)
        p.put_org(None, Org(org_id, org_id, created_at=now, updated_at=now))
        return p

    try:
        await runtime.store.ping()
        await runtime.data_store.ping()
        await redis_client.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # type: ignore[no-untyped-call]
        with pytest.raises(StoreUnavailable):
            await runtime.data_store.commit(plan(runtime.data_store, "fast"))
        await redis_client.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # type: ignore[no-untyped-call]
        start = time.monotonic()
        await runtime.store.commit(plan(runtime.store, "durable"), durable=True)
        assert time.monotonic() - start > settings.redis_timeout
        assert await runtime.store.get_org("durable") is not None
    finally:
        with contextlib.suppress(Exception):
            await redis_client.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        await runtime.aclose()


async def test_the_cli_uses_the_same_factory(valkey_url: str) -> None:
    settings = Settings(redis_timeout=0.05, redis_connect_timeout=0.2)
    client, _store = connect_store(settings, valkey_url)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == write_timeout(settings)
        assert kwargs["socket_connect_timeout"] == 0.2
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_a_stopped_store_answers_503_within_one_timeout_every_time(
    tmp_path: Path,
) -> None:
    """Issue 9: after a first timeout the pooled connection is dropped and the next
    lookup reconnects, whose handshake waited out a second socket timeout (~2 s). With one
    deadline per lookup every request against a paused (SIGSTOP) server gets its 503
    within about ``redis_timeout``."""
    server = EmbeddedValkey(tmp_path / "data")
    url = server.start()
    pid = json.loads((tmp_path / "data" / "server.json").read_text())["server_pid"]
    runtime: Runtime[DataPlaneConfig] = Runtime(
        DataPlaneConfig(redis_url=url, namespace="stopped", redis_timeout=0.4)
    )
    secret = runtime.token_format.generate()  # well formed, unknown: a cache miss
    os.kill(pid, signal.SIGSTOP)
    try:
        took = []
        for _ in range(4):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await runtime.authenticator.resolve(secret)
            took.append(time.monotonic() - started)
        assert max(took) < 0.4 * 1.5, took
    finally:
        os.kill(pid, signal.SIGCONT)
        await runtime.aclose()
        server.stop()
