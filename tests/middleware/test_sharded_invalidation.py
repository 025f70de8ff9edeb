"""Sharded invalidation on a real Cluster (issue 11).

* Each process subscribes every partition's channel with ``SSUBSCRIBE`` on the primary
  that owns its slot — none with classic ``SUBSCRIBE`` — and ``COMMIT`` publishes with
  ``SPUBLISH`` on the partition it wrote.
* Moving a partition's slot to another primary during traffic (resharding) ends the
  subscriber's session (the old owner's ``sunsubscribe``); it resubscribes on the new
  owner, flushes, and the next revoke in that partition still arrives.

A private 3 + 3 Cluster (``tests._topologies.start_cluster``): the reshard must not move
slots under the session's shared cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from patgate.middleware.cache import TokenCache
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.keys import Keyspace
from patgate.middleware.metrics import Metrics
from patgate.middleware.runtime import redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests import _topologies
from tests.middleware._tokens import add_user, issue, revoke

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_topologies.Topology]:
    try:
        topology = _topologies.start_cluster(tmp_path_factory.mktemp("sharded"))
    except _topologies.Unsupported as exc:
        pytest.skip(f"valkey-server cannot run a cluster here: {exc}")
    try:
        yield topology
    finally:
        topology.stop()


def _node(port: int) -> redis.Redis:
    return redis.Redis("127.0.0.1", port, socket_timeout=5.0)


def _owner_port(ports: list[int], slot: int) -> int:
    """The port of the primary that owns ``slot`` now."""
    owner = _topologies.slot_owner(ports[0], slot)
    assert owner is not None, f"slot {slot} not covered"
    return owner


def _count(reply: Any) -> int:
    """The subscriber count of a one-channel (SHARD)NUMSUB reply, flat or as pairs."""
    if isinstance(reply, dict):
        return int(next(iter(reply.values())))
    flat = [x for pair in reply for x in (pair if isinstance(pair, (list, tuple)) else [pair])]
    return int(flat[1])


async def _until(check: Any, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_shard_channels_on_their_owners_and_a_reshard_during_traffic(
    cluster: _topologies.Topology, namespace: str
) -> None:
    keyspace = Keyspace(namespace)
    client = redis_client(cluster.url, timeout=5.0)
    sub_client = redis_client(cluster.url, retries=0, timeout=5.0)
    metrics = Metrics()
    cache: TokenCache[str] = TokenCache(64, 60.0, 2.0, metrics)
    subscriber = InvalidationSubscriber(
        sub_client, keyspace.channels, cache, metrics, ping_interval=0.2, ping_timeout=1.0
    )
    store = TokenStore(client, keyspace)
    fmt = TokenFormat()
    try:
        await subscriber.start(wait=10.0)
        assert subscriber.connected
        assert await store.sharded()

        # Every channel is a shard subscription on the primary owning its slot.
        home = keyspace.for_org("o1")
        slot = int(redis.crc.key_slot(home.channel.encode()))
        owner = _owner_port(cluster.ports, slot)
        with _node(owner) as node:
            assert _count(node.execute_command("PUBSUB SHARDNUMSUB", home.channel)) == 1
            assert _count(node.execute_command("PUBSUB NUMSUB", home.channel)) == 0
            assert node.execute_command("PUBSUB SHARDCHANNELS", "*" + namespace + "*")

        # A revoke drops the cached entry, through SPUBLISH on the partition's channel.
        await add_user(store)
        issued = await issue(store, fmt)
        cache.put(issued.digest, "v", "o1/u1", cache.epoch, time.monotonic())
        await revoke(store, issued)
        await _until(lambda: cache.get(issued.digest, time.monotonic()) is None, "the revoke")

        # Reshard the partition's slot to another primary while commits keep coming.
        primaries = cluster.ports[:3]
        target = next(p for p in primaries if p != owner)
        connects = subscriber.connects
        stop = asyncio.Event()

        async def traffic() -> int:
            n = 0
            while not stop.is_set() and n < 200:
                await issue(store, fmt)
                n += 1
                await asyncio.sleep(0.005)
            return n

        load = asyncio.create_task(traffic())
        await asyncio.to_thread(_topologies.reshard, cluster, slot, target, batch=100)
        await _until(lambda: subscriber.connects > connects, "the resubscription", 15.0)
        await _until(lambda: subscriber.connected, "the new session", 15.0)
        stop.set()
        assert await load > 0
        assert _owner_port(cluster.ports, slot) == target

        # After the move: the channel's subscription is on the new owner, and a revoke
        # in the moved partition reaches the subscriber.
        with _node(target) as node:
            assert _count(node.execute_command("PUBSUB SHARDNUMSUB", home.channel)) == 1
        again = await issue(store, fmt)
        cache.put(again.digest, "v", "o1/u1", cache.epoch, time.monotonic())
        await revoke(store, again)
        await _until(lambda: cache.get(again.digest, time.monotonic()) is None, "a revoke")
    finally:
        await subscriber.aclose()
        await client.aclose()
        await sub_client.aclose()
