"""Durability (issue 11): a secret is shown only after its write is fsynced to the
primary's AOF and — where the primary has a replica — to a replica's AOF too
(``WAITAOF 1 1`` on the connection that ran the COMMIT). So the token is already on a
replica when ``create`` returns, and a failover right after cannot lose it.

Real Sentinel (1 primary, 2 replicas) and Cluster (3 + 3) topologies; on standalone,
asking for a replica that does not exist fails the write with 503 instead of showing a
secret that one crash could lose.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from patgate.gateway.lifecycle import Actor, Directory, TokenService
from patgate.gateway.lifecycle.tokens import Owner
from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import StoreUnavailable
from patgate.middleware.keys import Keyspace
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests._topologies import ALL_BACKENDS
from tests.middleware._tokens import MEMBER_SCOPES

#: the topologies with replicas (the last test runs on the session's standalone server).
BACKENDS = [b for b in ALL_BACKENDS if getattr(b, "values", (b,))[0] != "standalone"]

pytestmark = pytest.mark.anyio


async def _world(store: TokenStore) -> TokenService:
    system = Actor.system()
    directory = Directory(store, default_org="acme")
    await directory.put_org(system, "acme", {"name": "Acme", "member_scopes": MEMBER_SCOPES})
    await directory.put_user(system, "alice", {"org_id": "acme", "email": "a@acme.io"})
    return TokenService(store, TokenFormat())


async def _replica_of(client: StoreClient, key: str) -> aioredis.Redis:
    """A direct client to a replica of the primary that holds ``key``."""
    raw: Any = client
    target: dict[str, Any] = {}
    if hasattr(client, "get_node_from_key"):
        target = {"target_nodes": raw.get_node_from_key(key)}
    info = await raw.info("replication", **target)
    assert int(info["connected_slaves"]) >= 1, info
    replica = info["slave0"]
    return aioredis.Redis(host=replica["ip"], port=int(replica["port"]))


async def test_a_created_token_is_on_a_replica_when_its_secret_is_shown(
    store: TokenStore, backend: str
) -> None:
    service = await _world(store)
    for n in range(5):
        token, _ = await service.create(
            Actor.system(), name=f"t{n}", owner=Owner("user", "alice", "acme")
        )
        replica = await _replica_of(store.client, store.keys_for("acme").tokens)
        try:
            if backend == "cluster":
                await replica.execute_command("READONLY")
            # No wait, no retry: WAITAOF 1 1 returned only once a replica had it.
            assert await replica.hget(store.keys_for("acme").tokens, token.id) is not None
        finally:
            await replica.aclose()


async def test_a_missing_replica_fails_the_write_instead_of_showing_a_secret(
    valkey_url: str, namespace: str
) -> None:
    client = aioredis.from_url(valkey_url)
    try:
        await _world(TokenStore(client, Keyspace(namespace)))
        strict = TokenStore(client, Keyspace(namespace), durable_timeout_ms=100, durable_replicas=1)
        service = TokenService(strict, TokenFormat())
        with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
            await service.create(Actor.system(), name="t", owner=Owner("user", "alice", "acme"))
        # Any other write waits for the replica too (WAIT), and says what happened.
        with pytest.raises(StoreUnavailable, match="on the primary, but 0 of 1 replica"):
            await Directory(strict, default_org="acme").put_user(
                Actor.system(), "bob", {"org_id": "acme", "email": "b@acme.io"}
            )
    finally:
        await client.aclose()
