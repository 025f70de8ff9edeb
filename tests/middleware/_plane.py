"""One process's data plane over the session's real Valkey, for the rotation tests
(issue 12): an :class:`Authenticator` with a real cache, a real invalidation subscriber
and a last-used recorder (flushed by the test), over a store that counts its lookups.

The clock is the test's (``Authenticator(clock=...)``): grace periods and expiry follow
it; the cache's own TTL follows the monotonic clock, so a warm entry stays warm while the
test moves its clock past a grace period."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from patgate.middleware.auth import Authenticator, Resolved
from patgate.middleware.cache import TokenCache
from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import AuthError, StoreUnavailable
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.keys import Keyspace
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.metrics import Metrics
from patgate.middleware.runtime import redis_client as make_client
from patgate.middleware.store import Buried, Found, TokenStore
from patgate.middleware.tokenformat import TokenFormat

from ._tokens import make_policy

__all__ = ["Answer", "CountingStore", "Plane", "data_plane", "until"]

#: the test policy's route that needs ``threads:read`` (tests/middleware/_tokens.py).
PATH = "/threads/1"


class CountingStore(TokenStore):
    """The real store, counting lookups (one lookup = one script call, one round trip)."""

    def __init__(self, client: StoreClient, keys: Keyspace) -> None:
        super().__init__(client, keys)
        self.lookups = 0

    async def lookup(
        self, digest: bytes, partition: int, previous: bytes | None = None
    ) -> Found | Buried | None:
        self.lookups += 1
        return await super().lookup(digest, partition, previous)


@dataclass(frozen=True)
class Answer:
    """One request's outcome: 200 and the Resolved, or the error response's parts."""

    status: int
    error: str | None = None
    description: str | None = None
    challenge: str | None = None
    resolved: Resolved | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Plane:
    store: CountingStore
    fmt: TokenFormat
    cache: TokenCache[Resolved]
    metrics: Metrics
    recorder: LastUsedRecorder
    subscriber: InvalidationSubscriber
    auth: Authenticator

    async def call(
        self,
        secret: str,
        *,
        method: str = "GET",
        path: str = PATH,
        ip: str = "198.51.100.9",
        user_agent: str | None = None,
    ) -> Answer:
        headers = [(b"authorization", b"Bearer " + secret.encode())]
        if user_agent is not None:
            headers.append((b"user-agent", user_agent.encode()))
        try:
            resolved = await self.auth.authenticate(method, path, headers, {"client": (ip, 1)})
        except (AuthError, StoreUnavailable) as exc:
            prepared = self.auth.responses.for_error(exc)
            body = json.loads(prepared.body)
            challenge = dict(prepared.headers).get(b"www-authenticate", b"").decode()
            return Answer(prepared.status, body.get("error"), body.get("detail"), challenge)
        return Answer(200, resolved=resolved)

    def cached(self, secret: str) -> bool:
        """Whether this process holds a positive cache entry for ``secret``."""
        slot = self.cache.get(self.fmt.digest(secret), time.monotonic())
        return slot is not None and slot.value is not None

    def decisions(self, reason: str) -> float:
        outcome = "allow" if reason in ("ok", "public") else "deny"
        labels = {"outcome": outcome, "reason": reason}
        return self.metrics.registry.get_sample_value("patgate_decisions_total", labels) or 0.0

    def reindexed(self) -> float:
        value = self.metrics.registry.get_sample_value("patgate_pepper_reindexed_total")
        return value or 0.0

    async def barrier(self, org_id: str = "acme") -> None:
        """Wait until this process has applied every invalidation committed so far in
        ``org_id``'s partition: a marker entry is cached, its invalidation committed
        last, and the channel delivers in order — so once the marker is gone, so is
        whatever an earlier commit invalidated (and nothing dropped later surprises a
        test that just warmed the cache)."""
        marker = secrets.token_bytes(32)
        assert self.cache.put_negative(marker, self.cache.epoch, time.monotonic())
        plan = self.store.plan(org_id)
        plan.invalidate_token(marker)
        await self.store.commit(plan)
        await until(
            lambda: self.cache.get(marker, time.monotonic()) is None, "the barrier invalidation"
        )

    async def settle(self) -> None:
        """Wait for this process's pepper re-index writes in flight, and for their
        invalidations to reach this process."""
        await self.auth.aclose()
        await self.barrier()


async def until(condition: Callable[[], Any], what: str, *, seconds: float = 5.0) -> None:
    """Poll ``condition`` (sync or async) until it is true; bounded."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def data_plane(
    store: TokenStore,
    fmt: TokenFormat,
    clock: Callable[[], float],
    store_url: str,
) -> AsyncIterator[Plane]:
    """A started data plane on ``store``'s server and namespace, with format ``fmt``."""
    metrics = Metrics()
    counting = CountingStore(store.client, store.keyspace)
    cache: TokenCache[Resolved] = TokenCache(100, 300.0, 60.0, metrics)
    recorder = LastUsedRecorder(counting, metrics, interval=3600)
    sub_client = make_client(store_url, retries=0)
    subscriber = InvalidationSubscriber(sub_client, store.keyspace.channels, cache, metrics)
    auth = Authenticator(counting, cache, fmt, make_policy(), metrics, recorder, clock=clock)
    await subscriber.start(wait=5.0)
    assert subscriber.connected
    await until(lambda: cache.active, "the cache to be active")
    try:
        yield Plane(counting, fmt, cache, metrics, recorder, subscriber, auth)
    finally:
        await auth.aclose()
        await subscriber.aclose()
        await sub_client.aclose()
