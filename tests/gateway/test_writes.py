"""CoalescedWrites: what reaches the transport, and when (gateway/writes.py, issue 16).

The unit tests record the transport's calls (what one ``send`` per turn means); the last
test runs a real uvicorn server on loopback with the protocol: a response arrives intact,
and a streamed response's head is not held back past its loop turn."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from patgate.gateway.protocol import limited_protocol
from patgate.gateway.writes import CoalescedWrites
from tests.middleware._servers import serve

pytestmark = pytest.mark.anyio


class _Recorder:
    """The transport calls CoalescedWrites makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, data: Any) -> None:
        self.calls.append(("writelines", list(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _writes(recorder: _Recorder) -> CoalescedWrites:
    return CoalescedWrites(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_head_and_body_of_one_turn_leave_in_one_write() -> None:
    recorder = _Recorder()
    writes = _writes(recorder)
    writes.write(b"HEAD")
    assert recorder.calls == []  # held until the body or the end of the turn
    assert writes.get_write_buffer_size() == 7 + 4
    writes.write(b"BODY")
    assert recorder.calls == [("write", b"HEADBODY")]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert recorder.calls == [("write", b"HEADBODY")]


async def test_a_lone_write_goes_out_when_the_turn_ends() -> None:
    recorder = _Recorder()
    writes = _writes(recorder)
    writes.write(b"HEAD")
    await asyncio.sleep(0)
    assert recorder.calls == [("write", b"HEAD")]
    writes.write(b"")  # nothing to hold
    await asyncio.sleep(0)
    assert recorder.calls == [("write", b"HEAD")]


async def test_a_big_second_write_is_not_copied() -> None:
    recorder = _Recorder()
    writes = _writes(recorder)
    big = b"x" * (64 * 1024)
    writes.write(b"HEAD")
    writes.write(big)
    assert recorder.calls == [("writelines", [b"HEAD", big])]


async def test_close_eof_and_write_now_flush_first_in_order() -> None:
    recorder = _Recorder()
    writes = _writes(recorder)
    writes.write(b"A")
    writes.write_now(b"B")
    writes.write(b"C")
    writes.write_eof()
    writes.write(b"D")
    writes.close()
    assert recorder.calls == [
        ("write", b"AB"),
        ("write", b"C"),
        ("write_eof", None),
        ("write", b"D"),
        ("close", None),
    ]
    assert writes.is_closing()
    assert writes.get_extra_info("peername") == "info:peername"


async def test_nothing_is_written_to_a_transport_already_closing() -> None:
    recorder = _Recorder()
    writes = _writes(recorder)
    writes.write(b"late")
    recorder.closing = True  # the peer went away before the turn ended
    await asyncio.sleep(0)
    assert recorder.calls == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})
        return
    body = b'{"ok":true}'
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _exchange(port: int, path: str) -> list[tuple[float, bytes]]:
    """(seconds since sending, bytes) of each read until the response is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sent = time.monotonic()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        reads: list[tuple[float, bytes]] = []
        while chunk := sock.recv(65536):
            reads.append((time.monotonic() - sent, chunk))
        return reads


async def test_through_uvicorn_the_whole_response_arrives_at_once_and_a_stream_is_not_held() -> (
    None
):
    async with serve(_app, http=limited_protocol(), lifespan="off") as port:
        whole = await asyncio.to_thread(_exchange, port, "/whole")
        stream = await asyncio.to_thread(_exchange, port, "/stream")
    data = b"".join(chunk for _, chunk in whole)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b'\r\n\r\n{"ok":true}')
    assert whole[0][1] == data  # head and body in the first read
    # The streamed response's head left in its own turn, well before the body.
    assert stream[0][1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"late" not in stream[0][1]
    assert stream[0][0] < 0.8
    assert b"".join(chunk for _, chunk in stream).endswith(b"4\r\nlate\r\n0\r\n\r\n")
