"""A real webhook receiver on 127.0.0.1, scriptable, for delivery and failure-drill tests.

::

    async with receiver(secret) as rx:          # listening on a fresh loopback port
        rx.fail_next(2, status=500)             # the next two requests get 500, then 200
        ...deliver to rx.url...
        first, second, third = await rx.wait_for(3)  # AssertionError after 5 s
        assert third.verified and third.answer.status == 200

Every request is recorded as a :class:`Delivery` — method, target, headers (names
lower-cased, in order), body, and whether its Standard Webhooks signature verifies
(``standardwebhooks.Webhook(secret).verify``) with the receiver's secret; any other
secret can be tried with :meth:`Delivery.verifies`. A request is recorded as soon as it
has been read, before its answer (so a delayed or dropped one is still seen).

Answers are scripted first in, first out; when the script is empty, the default answer
(200, empty body, unless :meth:`Receiver.set_default`) is used:

=================================== ======================================================
call                                the next ``n`` requests get
=================================== ======================================================
``answer_next(n, Answer(...))``     any status, headers, body, delay, drop or reset
``fail_next(n, status=500)``        that status
``redirect_next(location, n=1)``    a 302 (or ``status``) with ``Location: location``
``delay_next(n, seconds)``          their answer only after ``seconds`` (past a timeout)
``drop_next(n)``                    the connection closed without an answer (FIN)
``reset_next(n)``                   the connection reset without an answer (RST)
``stall_next(n, seconds)``          status and headers at once, the body ``seconds`` later
=================================== ======================================================

The HTTP/1.1 parser is deliberately tiny: one request per connection (every answer says
``Connection: close``), ``Content-Length`` or chunked bodies, reads bounded in size and
time. Delayed handlers are cancelled when the receiver stops, so a test never waits for
them. Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import json
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook

__all__ = ["Answer", "Delivery", "Receiver", "receiver"]

#: a request head or body larger than this is refused (400) and not recorded
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
#: a client that does not finish sending its request within this is disconnected
READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver does with one request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: seconds to wait before answering (or dropping)
    delay: float = 0.0
    #: close the connection without answering (a clean FIN)
    drop: bool = False
    #: reset the connection without answering (SO_LINGER 0: an RST)
    reset: bool = False
    #: seconds between sending the status line and headers and sending the body
    stall_body: float = 0.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request the receiver read."""

    method: str
    target: str
    #: (name lower-cased, value) in the order received
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: time.time() when it had been read
    at: float
    #: the signature verifies with the receiver's secret; None when it has none
    verified: bool | None
    #: what the receiver did with it
    answer: Answer

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (any case), or None."""
        wanted = name.lower()
        found = None
        for key, value in self.headers:
            if key == wanted:
                found = value
        return found

    @property
    def header_map(self) -> dict[str, str]:
        """The headers as a dict (the last value of a repeated name wins)."""
        return dict(self.headers)

    def verifies(self, secret: str) -> bool:
        """Whether ``standardwebhooks.Webhook(secret).verify(body, headers)`` succeeds
        (signature and a timestamp within the package's 5-minute tolerance)."""
        try:
            Webhook(secret).verify(self.body, self.header_map, json_parse=False)
        except Exception:  # WebhookVerificationError, or a malformed header or body
            return False
        return True

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A recording, scriptable HTTP receiver; start it with :func:`receiver`."""

    secret: str | None = None
    #: the path :attr:`url` points at (any path is answered the same way)
    path: str = "/hook"
    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    #: requests that could not be parsed (answered 400, not recorded)
    malformed: int = 0
    _script: deque[Answer] = field(default_factory=deque)
    _default: Answer = field(default_factory=Answer)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return self.url_for(self.path)

    def url_for(self, path: str) -> str:
        """An http URL on this receiver for ``path`` (which starts with "/")."""
        return f"http://127.0.0.1:{self.port}{path}"

    # -- scripting ------------------------------------------------------------------------

    def answer_next(self, n: int, answer: Answer) -> None:
        """The next ``n`` requests (after those already scripted) get ``answer``."""
        self._script.extend([answer] * n)

    def fail_next(self, n: int, *, status: int = 500) -> None:
        self.answer_next(n, Answer(status=status))

    def redirect_next(self, location: str, n: int = 1, *, status: int = 302) -> None:
        self.answer_next(n, Answer(status=status, headers=(("location", location),)))

    def delay_next(self, n: int, seconds: float, *, status: int = 200) -> None:
        self.answer_next(n, Answer(status=status, delay=seconds))

    def drop_next(self, n: int) -> None:
        self.answer_next(n, Answer(drop=True))

    def reset_next(self, n: int) -> None:
        self.answer_next(n, Answer(reset=True))

    def stall_next(self, n: int, seconds: float, *, body: bytes = b"ok") -> None:
        self.answer_next(n, Answer(body=body, stall_body=seconds))

    def set_default(self, answer: Answer) -> None:
        """The answer once the script is used up (initially a plain 200)."""
        self._default = answer

    # -- waiting --------------------------------------------------------------------------

    async def wait_for(self, n: int, *, within: float = 5.0) -> list[Delivery]:
        """The first ``n`` deliveries, once at least ``n`` have arrived; AssertionError
        if they have not within ``within`` seconds."""
        try:
            async with asyncio.timeout(within), self._arrived:
                await self._arrived.wait_for(lambda: len(self.deliveries) >= n)
        except TimeoutError:
            raise AssertionError(
                f"expected {n} deliveries within {within}s, got {len(self.deliveries)}"
            ) from None
        return self.deliveries[:n]

    async def expect_no_more(self, seconds: float = 0.2) -> None:
        """AssertionError if any delivery arrives in the next ``seconds``."""
        before = len(self.deliveries)
        await asyncio.sleep(seconds)
        assert len(self.deliveries) == before, (
            f"{len(self.deliveries) - before} unexpected deliveries"
        )

    # -- serving --------------------------------------------------------------------------

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_one(reader, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass  # the client went away or stalled: nothing to record or answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(READ_TIMEOUT):
            request = await _read_request(reader)
        if request is None:
            self.malformed += 1
            await _write(writer, Answer(status=400))
            return
        method, target, headers, body = request
        answer = self._script.popleft() if self._script else self._default
        delivery = Delivery(
            method=method,
            target=target,
            headers=headers,
            body=body,
            at=time.time(),
            verified=None,
            answer=answer,
        )
        if self.secret is not None:
            delivery = dataclasses.replace(delivery, verified=delivery.verifies(self.secret))
        async with self._arrived:
            self.deliveries.append(delivery)
            self._arrived.notify_all()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if answer.drop:
            return
        await _write(writer, answer)


_Request = tuple[str, str, tuple[tuple[str, str], ...], bytes]


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """One request, or None when it is malformed or too large."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return None
    if len(head) > MAX_HEAD:
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
        return None
    method, target, _ = request_line
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name.lower(), value.strip()))
    fields = dict(headers)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
        if body is None:
            return None
    else:
        try:
            length = int(fields.get("content-length", "0"))
        except ValueError:
            return None
        if not 0 <= length <= MAX_BODY:
            return None
        body = await reader.readexactly(length)
    return method, target, tuple(headers), body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes | None:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            return None
        if size == 0:
            # Trailers, if any, end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            return None
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _write(writer: asyncio.StreamWriter, answer: Answer) -> None:
    try:
        reason = http.HTTPStatus(answer.status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {answer.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in answer.headers]
    lines += [f"content-length: {len(answer.body)}", "connection: close", "", ""]
    with contextlib.suppress(ConnectionError):
        writer.write("\r\n".join(lines).encode("latin-1"))
        if answer.stall_body:
            await writer.drain()
            await asyncio.sleep(answer.stall_body)
        writer.write(answer.body)
        await writer.drain()


@contextlib.asynccontextmanager
async def receiver(secret: str | None = None, *, path: str = "/hook") -> AsyncIterator[Receiver]:
    """A started :class:`Receiver` on a fresh 127.0.0.1 port; stopped (and its delayed
    handlers cancelled) when the block ends."""
    rx = Receiver(secret=secret, path=path)
    await rx.start()
    try:
        yield rx
    finally:
        await rx.stop()
