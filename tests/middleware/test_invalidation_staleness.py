"""The invalidation link's staleness bound is a setting (issue 9): a subscription whose
packets are silently dropped — no FIN, no RST, the lookups' path still fine — switches the
cache off within ``PATGATE_INVALIDATION_STALENESS`` seconds, so a token revoked in that
window is not answered from the cache any longer than that.

Real Valkey (the session server) behind a small asyncio TCP forwarder on 127.0.0.1 that
can stop forwarding the subscription connection's bytes while keeping it open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from patgate.gateway.settings import Settings
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import InvalidToken
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.runtime import Runtime

from ._tokens import Issued, add_user, issue, make_policy, revoke

pytestmark = pytest.mark.anyio

#: scheduling slack on top of the bound (a shared 2-core machine).
_MARGIN = 0.25


@dataclass
class _Link:
    subscription: bool = False
    cut: bool = False


class _Forwarder:
    """127.0.0.1 TCP → the Valkey Unix socket; ``cut_subscriptions()`` silently drops
    every later byte, both ways, on connections that have sent SUBSCRIBE."""

    def __init__(self, socket_path: str) -> None:
        self._path = socket_path
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    def cut_subscriptions(self) -> int:
        cut = [link for link in self._links if link.subscription]
        for link in cut:
            link.cut = True
        return len(cut)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Forwarder]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self._path)
            self._writers += [writer, up_writer]
            link = _Link()
            self._links.append(link)
            await asyncio.gather(
                self._pump(reader, up_writer, link, client_side=True),
                self._pump(up_reader, writer, link, client_side=False),
                return_exceptions=True,
            )
            up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link, *, client_side: bool
    ) -> None:
        while data := await src.read(65536):
            if client_side and b"SUBSCRIBE" in data:
                link.subscription = True
            if link.cut:
                continue  # black hole: read and dropped, the connection stays open
            dst.write(data)
            await dst.drain()
        dst.close()


def _socket_path(server: EmbeddedValkey) -> str:
    assert server.url is not None
    return server.url.removeprefix("unix://").split("?")[0]


async def _allowed(runtime: Runtime, issued: Issued) -> bool:
    try:
        await runtime.authenticator.authenticate(
            "GET", "/threads/1", [issued.header], {"client": None}
        )
    except InvalidToken:
        return False
    return True


def _hits(runtime: Runtime) -> float:
    return runtime.metrics.registry.get_sample_value("patgate_cache_hits_total") or 0.0


@pytest.mark.parametrize("staleness", [0.4, 1.0])
async def test_a_silently_cut_link_turns_the_cache_off_within_the_bound(
    valkey_server: EmbeddedValkey, namespace: str, staleness: float
) -> None:
    async with _Forwarder(_socket_path(valkey_server)).running() as forwarder:
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{forwarder.port}/0",
            namespace=namespace,
            invalidation_staleness=staleness,
            lastused_interval=60,
        )
        runtime = Runtime(settings, policy=make_policy())
        await runtime.start()
        try:
            assert runtime.subscriber.connected
            await add_user(runtime.store, "u1")
            issued = await issue(runtime.store, runtime.token_format)
            assert await _allowed(runtime, issued)  # miss: fills the cache
            hits = _hits(runtime)
            assert await _allowed(runtime, issued)
            assert _hits(runtime) == hits + 1  # answered from the cache

            assert forwarder.cut_subscriptions() == 1
            cut_at = time.monotonic()
            await revoke(runtime.store, issued)  # its invalidation is lost on the link
            # The window the bound is about: the cache still says yes...
            assert await _allowed(runtime, issued)
            assert _hits(runtime) == hits + 2
            # ...until the unanswered PING turns it off, within the configured bound.
            while runtime.cache.active:
                assert time.monotonic() - cut_at < staleness + _MARGIN + 1, "cache never off"
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - cut_at
            print(f"\nstaleness {staleness}s: cache off {elapsed:.3f}s after the cut")
            assert elapsed <= staleness + _MARGIN
            assert not runtime.subscriber.connected
            # From then on the revoke is seen (Redis answers), never the cached yes.
            assert not await _allowed(runtime, issued)
            # The subscriber reconnects on a fresh (uncut) connection by itself.
            assert await runtime.subscriber.wait_connected(5.0)
            assert not await _allowed(runtime, issued)
        finally:
            await runtime.aclose()


def test_the_bound_is_a_setting_split_into_ping_interval_and_timeout() -> None:
    assert Settings().invalidation_staleness == 1.5
    settings = Settings.from_env(
        {"PATGATE_REDIS_URL": "redis://127.0.0.1:1/0", "PATGATE_INVALIDATION_STALENESS": "0.8"}
    )
    runtime = Runtime(settings)
    subscriber = runtime.subscriber
    assert isinstance(subscriber, InvalidationSubscriber)
    interval, timeout = subscriber._ping_interval, subscriber._ping_timeout
    assert interval + timeout == pytest.approx(0.8)
    assert 0 < interval < timeout
