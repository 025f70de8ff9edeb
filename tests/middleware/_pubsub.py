"""Listening to a partition's invalidation channel the way the subscriber does (issue 11):
sharded pub/sub, ``SSUBSCRIBE`` and ``smessage``, on any backend.

A standalone or Sentinel client's ``PubSub`` reads shard messages with ``get_message``;
a Cluster client's ``ClusterPubSub`` routes ``SSUBSCRIBE`` to the channel's primary and
reads them with ``get_sharded_message``."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterPubSub

from patgate.middleware.connect import StoreClient


class ShardListener:
    """One pubsub subscribed with ``SSUBSCRIBE`` to some shard channels."""

    def __init__(self, client: StoreClient) -> None:
        self.pubsub: Any = client.pubsub()

    async def ssubscribe(self, *channels: str) -> None:
        await self.pubsub.ssubscribe(*channels)

    async def get(
        self, *, ignore_subscribe_messages: bool = False, seconds: float = 1.0
    ) -> dict[str, Any] | None:
        """The next message or confirmation, waiting up to ``seconds``; None if none came."""
        message: dict[str, Any] | None
        if isinstance(self.pubsub, ClusterPubSub):
            message = await self.pubsub.get_sharded_message(
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=seconds
            )
        else:
            message = await self.pubsub.get_message(
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=seconds
            )
        return message

    async def aclose(self) -> None:
        await self.pubsub.aclose()
