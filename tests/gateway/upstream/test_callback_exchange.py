"""``ProxyApp.forward_now`` (issue 16): who holds the upstream pool slot, step by step.

A real loopback upstream and the real ``Http1Upstream`` pool; the client side is a
recording ``DirectReply``, so the moments the listener protocol cannot reach on demand
can be set up exactly. One is a task handed a half-read response and cancelled before
its first step: the client left in the same loop turn. The pool has one slot, so a slot
that was never given back shows up as the next request timing out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from patgate.gateway.headers import Headers
from patgate.gateway.proxy import ProxyApp, Work
from patgate.gateway.settings import Settings

from ._loopback import read_request, serving

pytestmark = pytest.mark.anyio

_WAIT = 2.0


class _Recorder:
    """A ``DirectReply`` that records what it is asked to do."""

    def __init__(self) -> None:
        self.started = False
        self.answers: list[tuple[int, bytes]] = []
        self.spawned: list[Work] = []
        self.abandon: Callable[[], None] | None = None
        #: set when an answer is written or work handed to a task.
        self.news = asyncio.Event()

    async def complete(self, status: int, headers: Headers, body: bytes) -> None:
        self.answers.append((status, body))

    def complete_now(self, status: int, headers: Headers, body: bytes) -> None:
        self.answers.append((status, body))
        self.news.set()

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True

    async def chunk(self, data: bytes) -> None:
        pass

    async def end(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def spawn(self, work: Work) -> None:
        self.spawned.append(work)
        self.news.set()

    def on_abandon(self, callback: Callable[[], None] | None) -> None:
        self.abandon = callback

    def internal_error(self) -> None:
        self.answers.append((500, b""))


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gw.test")],
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
    }


async def _handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``ok`` on keep-alive; ``/part``: the head and half the body, then nothing."""
    while True:
        request = await read_request(reader)
        if b" /part " in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf-")
            await writer.drain()
            await reader.read()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


def _one_slot_proxy(port: int) -> ProxyApp:
    """A proxy to ``port`` with one pool slot; a request that waits for it times out."""
    return ProxyApp(
        Settings(
            upstream_url=f"http://127.0.0.1:{port}", upstream_pool_size=1, upstream_timeout=1.0
        )
    )


async def _warm(proxy: ProxyApp) -> None:
    warm = _Recorder()
    await proxy.forward_direct(_scope("/warm"), warm, None)
    assert warm.answers == [(200, b"ok")]


async def test_a_whole_answer_is_written_from_the_callback_and_the_slot_returned() -> None:
    async with serving(_handler) as server:
        proxy = _one_slot_proxy(server.port)
        try:
            await _warm(proxy)
            for _ in range(3):  # one slot: each exchange must give it back
                reply = _Recorder()
                assert proxy.forward_now(_scope("/again"), reply, None) is None
                await asyncio.wait_for(reply.news.wait(), _WAIT)
                assert reply.answers == [(200, b"ok")]
                assert reply.spawned == []
                assert reply.abandon is None  # nothing left to give back if the client leaves
        finally:
            await proxy.aclose()
    assert server.connections == 1


async def test_a_handed_over_response_is_released_if_its_task_never_starts() -> None:
    async with serving(_handler) as server:
        proxy = _one_slot_proxy(server.port)
        try:
            await _warm(proxy)
            reply = _Recorder()
            assert proxy.forward_now(_scope("/part"), reply, None) is None
            # The head is in but not the body: the rest goes to a task (relay_direct),
            # and until it runs the response is the abandon hook's to give back.
            await asyncio.wait_for(reply.news.wait(), _WAIT)
            assert len(reply.spawned) == 1
            assert reply.answers == []
            abandon = reply.abandon
            assert abandon is not None
            # The client leaves in the same loop turn: the task is cancelled before its
            # first step (fastpath.GatewayProtocol.connection_lost), so only the hook runs.
            abandon()
            reply.spawned[0].close()
            abandon()  # a second call changes nothing (the slot is given back once)
            # The one slot is free again: a request does not wait for it (and time out).
            after = _Recorder()
            await proxy.forward_direct(_scope("/after"), after, None)
            assert after.answers == [(200, b"ok")]
        finally:
            await proxy.aclose()
    assert server.connections == 2  # the half-read connection was closed, not pooled


async def test_a_client_leaving_before_the_answer_closes_the_connection_and_frees_the_slot() -> (
    None
):
    async with serving(_handler) as server:
        proxy = _one_slot_proxy(server.port)
        try:
            await _warm(proxy)
            reply = _Recorder()
            assert proxy.forward_now(_scope("/part"), reply, None) is None
            abandon = reply.abandon
            assert abandon is not None
            abandon()  # before any byte of the answer came back
            await asyncio.sleep(0.05)  # the answer arrives: nobody listens any more
            assert reply.answers == []
            assert reply.spawned == []
            after = _Recorder()
            await proxy.forward_direct(_scope("/after"), after, None)
            assert after.answers == [(200, b"ok")]
        finally:
            await proxy.aclose()
    assert server.connections == 2
