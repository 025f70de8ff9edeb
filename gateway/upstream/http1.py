"""The production upstream client: a keep-alive pool of HTTP/1.1 connections.

Connections are asyncio protocols parsed by httptools (llhttp, the parser uvicorn already
uses). Failures are raised as the project's own :class:`~patgate.middleware.errors.UpstreamError`
family (``OSError`` wrapped at the socket with ``raise ... from exc``), as every client of
:mod:`.base` does, so :class:`gateway.proxy.ProxyApp` classifies them alike; the package
docstring explains the choice and ``docs/proxy.md`` has the measurements.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import cast

import httptools

from patgate.middleware.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

from .base import KEEPALIVE, Body, RawHeaders, origin_of

__all__ = ["Http1Upstream", "UpstreamConnection"]

#: RFC 9110 §9.2.2: safe to send again when a reused connection died before answering.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
_RESPONSE_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_FRAMING_LENGTHS = frozenset(len(name) for name in _RESPONSE_FRAMING)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: response bytes buffered for a slow client before we stop reading from the upstream.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


def _expire(waiter: asyncio.Future[None], error: UpstreamTimeout) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class _Connection(asyncio.Protocol):
    """One upstream HTTP/1.1 connection, one exchange at a time (no pipelining).

    llhttp (via httptools) parses the response; its callbacks fill ``status``, ``headers``
    and ``chunks`` and wake the one task waiting on this connection, or — for an
    exchange run from callbacks (:meth:`Http1Upstream.start`) — its ``listener``, once
    per read, after the whole read is parsed.

    Read timeouts use one lazily re-armed timer per connection rather than a timer per
    wait (``call_later`` + ``cancel`` cost ~1.8 µs a request, issue 16): each wait only
    moves ``_deadline``; the timer, when it fires early, re-arms itself for the rest.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.usable = True  # False once closed, lost or out of sync
        self.reusable = True  # False when the current exchange may not be followed by another
        self.idle_since = 0.0
        self.in_use = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.error: UpstreamError | None = None
        self.silent = True  # no response byte seen in this exchange
        self.chunks: deque[bytes] = deque()
        self._parser = httptools.HttpResponseParser(self)
        self._after_head = False
        self._buffered = 0
        self._reading_paused = False
        self._head_request = False
        self._interim = False
        self._until_close = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        #: called after each read (and on close or timeout) while an exchange is run
        #: from callbacks instead of by a waiting task.
        self.listener: Callable[[], None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_use or self.complete:
            # Bytes nobody asked for: this connection's framing can no longer be trusted.
            self.close()
            return
        self.silent = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamProtocolError("upstream sent an invalid response"))
        if self.error is not None:
            self.close()
        listener = self.listener
        if listener is not None:
            listener()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self.in_use and not self.complete:
            if self.head_done and self._until_close:
                self.complete = True  # body delimited by the close (RFC 9112 §6.3 item 8)
            elif self.silent:
                self._fail(UpstreamProtocolError("upstream closed without a response"))
            else:
                self._fail(UpstreamProtocolError("upstream closed mid-response"))
        self._wake()
        self._disarm()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        listener = self.listener
        if listener is not None:
            listener()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- llhttp callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:  # a second message nobody asked for (HTTP/1.1 has no push)
            self.usable = False
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:  # we never ask to switch protocols
                self._fail(UpstreamProtocolError("unexpected protocol switch"))
                return
            # An interim response (RFC 9110 §15.2, e.g. 103 Early Hints): not relayed.
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.head_done = True
        if self._head_request or status in (204, 304):
            self.complete = True  # never a body (RFC 9110 §9.3.2, §15.3.5, §15.4.5)
        else:
            # RFC 9112 §6.3: the body runs until the upstream closes when the response
            # has neither Content-Length nor Transfer-Encoding (item 8), or when its
            # Transfer-Encoding does not end in chunked (item 4; e.g. ``gzip``: llhttp
            # then reads to the end of the connection, which is ours to recognise).
            framed = False
            for name, value in self.headers:
                if len(name) in _FRAMING_LENGTHS and (lname := name.lower()) in _RESPONSE_FRAMING:
                    if lname == b"content-length":
                        framed = True
                    else:  # the last coding of the last Transfer-Encoding line decides
                        framed = value.rpartition(b",")[2].strip().lower() == b"chunked"
            self._until_close = not framed
            if not framed:
                self.reusable = False
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # e.g. a body after a HEAD answer: out of sync from here on
            self.usable = False
            return
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # --- used by Http1Upstream ------------------------------------------------------------

    def begin(self, *, head_request: bool) -> None:
        """Start an exchange. llhttp parses one keep-alive message after another, except
        after a HEAD answer, which leaves it expecting the body its length announced: a
        fresh parser then."""
        self.in_use = True
        if self._after_head:
            self._parser = httptools.HttpResponseParser(self)
        self._after_head = head_request
        self.status = 0
        self.headers = []
        self.head_done = self.complete = self._interim = self._until_close = False
        self.error = None
        self.silent = self.reusable = True
        self.chunks.clear()
        self._buffered = 0
        self._head_request = head_request
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _LOW_WATER and self._transport:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    def write(self, data: bytes) -> None:
        if self._transport is not None and self.usable:
            self._transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        if self._transport is not None and self.usable:
            self._transport.writelines(data)

    async def drain(self, within: float) -> None:
        if not self._write_paused or not self.usable:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        handle = self._loop.call_later(
            within, _expire, waiter, UpstreamTimeout("upstream write timed out")
        )
        try:
            await waiter
        finally:
            handle.cancel()
            self._drain_waiter = None

    async def wait(self, within: float) -> None:
        """Until the parser has news (head, body, end, error) or ``within`` seconds pass;
        then :attr:`error` is an :class:`UpstreamTimeout`."""
        waiter = self._waiter = self._loop.create_future()
        self.arm(within)
        try:
            await waiter
        finally:
            self._waiter = None

    def arm(self, within: float) -> None:
        """Time out the read in progress ``within`` seconds from now (see the class)."""
        deadline = self._deadline = self._loop.time() + within
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if (waiter is None or waiter.done()) and self.listener is None:
            # Nobody is reading, or the reader was woken by news this very loop turn
            # (I/O runs before timers): the next wait arms it again.
            return
        if self._loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._fail(UpstreamTimeout("upstream read timed out"))
        listener = self.listener
        if listener is not None:
            listener()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def alive(self) -> bool:
        transport = self._transport
        return self.usable and transport is not None and not transport.is_closing()

    def close(self) -> None:
        self.usable = False
        self._disarm()
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.usable = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


#: the connection :meth:`Http1Upstream.start` hands out, for the proxy's annotations.
UpstreamConnection = _Connection


async def _open_connection(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None, within: float
) -> _Connection:
    loop = asyncio.get_running_loop()
    connect = loop.create_connection(
        _Connection, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
    )
    try:
        _, conn = await asyncio.wait_for(connect, within)
    except TimeoutError:
        raise UpstreamTimeout("upstream connect timed out") from None
    except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
        raise UpstreamConnectError("upstream connect failed") from exc
    return conn


class _Http1Response:
    __slots__ = ("_conn", "_released", "_upstream", "headers", "status")

    def __init__(self, conn: _Connection, upstream: Http1Upstream) -> None:
        self._conn = conn
        self._upstream = upstream
        self._released = False
        self.status = conn.status
        self.headers: RawHeaders = conn.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn, timeout = self._conn, self._upstream.timeout
        while True:
            while conn.chunks:
                yield conn.take()
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return
            await conn.wait(timeout)

    def ready_body(self) -> bytes | None:
        """The whole body when it has already arrived (bounded by the read pause's high
        water mark), else ``None``."""
        conn = self._conn
        if not conn.complete or conn.error is not None:
            return None
        chunks = conn.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        while chunks:
            conn.take()
        return body

    async def aclose(self) -> None:
        self.release_now()

    def release_now(self) -> None:
        """:meth:`aclose` without awaiting; a second call does nothing."""
        if not self._released:
            self._released = True
            self._upstream.release(self._conn)


class Http1Upstream:
    """A pool of up to ``pool_size`` keep-alive HTTP/1.1 connections to one origin.

    Requests are re-framed here: a bytes body gets ``Content-Length``; a streamed one keeps
    the client's ``Content-Length`` (and must match it) or is sent chunked. Nothing else is
    added: no ``User-Agent``, no ``Accept-Encoding``, no cookies, no redirects.
    Timeouts: ``connect_timeout`` for TCP (and TLS) setup; ``timeout`` for a pool slot, the
    response head, each body chunk and each write that waits on a full socket buffer.
    ``ssl_context`` (for ``https``; :func:`.tls.upstream_ssl_context`) defaults to the
    system store.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        pool_size: int = 256,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        origin = origin_of(base_url)
        self._host = origin.host
        self._port = origin.port
        https = origin.scheme == "https"
        self._ssl = (ssl_context or ssl.create_default_context()) if https else None
        self._host_header = origin.netloc.encode("idna")
        self._prefix = origin.prefix.encode("ascii")
        self.timeout = timeout
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        #: connection slots free now, and the requests waiting for one (first come, first
        #: served): asyncio.Semaphore's locked() scans its waiters twice per acquire.
        self._free = pool_size
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._idle: list[_Connection] = []
        self._closed = False

    async def send(
        self, method: str, target: bytes, headers: RawHeaders, body: Body, *, fresh: bool = False
    ) -> _Http1Response:
        """Send a request and return its response once the head is in. ``fresh``: on a
        new connection (the resend of an exchange :meth:`start` began)."""
        head, declared = self._head(method, target, headers, body)
        streamed = body is not None and not isinstance(body, bytes)
        for attempt in (1, 2):
            conn, reused = await self._acquire(fresh=fresh)
            try:
                conn.begin(head_request=method == "HEAD")
                if isinstance(body, bytes):
                    conn.writelines((head, body))
                elif body is None:
                    conn.write(head)
                else:
                    conn.write(head)
                    await self._write_stream(conn, body, declared)
                await conn.drain(self.timeout)
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self.timeout)
            except UpstreamError as exc:
                self.release(conn)
                # RFC 9112 §9.3.1: a reused connection may have been closed by the upstream
                # just as we sent; an idempotent request that got no byte back is resent once.
                retry = reused and not streamed and self.retryable(conn, method, exc)
                if attempt == 1 and retry:
                    continue
                raise
            except BaseException:
                self.release(conn)
                raise
            return _Http1Response(conn, self)
        raise AssertionError("unreachable")  # pragma: no cover

    def start(
        self, method: str, target: bytes, headers: RawHeaders, listener: Callable[[], None]
    ) -> _Connection | None:
        r"""Send a bodiless request on an idle keep-alive connection without awaiting, or
        return ``None`` (nothing sent) when :meth:`send` must do it: no live idle
        connection, no free slot, or others queued for one.

        The exchange then runs from callbacks (issue 16: no task, future or timer per
        request): ``listener`` is called after each read of the answer, on the close and
        on the read timeout; the caller inspects the connection (``error``,
        ``head_done``, ``complete``), takes it over with :meth:`response` once the head
        is in, and :meth:`release`\ s it in every case. Raises
        :class:`UpstreamProtocolError` for a header that would split the request."""
        if self._closed or self._free <= 0 or self._waiting:
            return None
        idle = self._idle
        if not idle:
            return None
        head, _ = self._head(method, target, headers, None)
        now = idle[-1]._loop.time()
        while idle:
            conn = idle.pop()
            if conn.alive() and now - conn.idle_since < self._keepalive:
                self._free -= 1
                conn.begin(head_request=method == "HEAD")
                conn.listener = listener
                conn.arm(self.timeout)
                conn.write(head)
                return conn
            conn.close()
        return None

    def response(self, conn: _Connection) -> _Http1Response:
        """The response of an exchange begun by :meth:`start`, once ``conn.head_done``;
        its reads are awaited from here on (the listener is dropped)."""
        conn.listener = None
        return _Http1Response(conn, self)

    @staticmethod
    def retryable(conn: _Connection, method: str, error: UpstreamError) -> bool:
        """Whether an exchange that failed on a reused connection may be sent again on a
        new one: RFC 9112 §9.3.1, the upstream closed the connection just as we sent, for
        an idempotent request that got no byte back. Not after a read timeout: that
        upstream is slow, not gone, and a resend would double both its load and the
        client's wait for the 504."""
        return conn.silent and method in _IDEMPOTENT and not isinstance(error, UpstreamTimeout)

    def _head(
        self, method: str, target: bytes, headers: RawHeaders, body: Body
    ) -> tuple[bytes, int | None]:
        """Request line and header block; the declared length of a streamed body."""
        parts = [method.encode("ascii"), b" ", self._prefix, target, b" HTTP/1.1\r\nhost: "]
        parts += (self._host_header, b"\r\n")
        lines = 2  # the CRLFs written here: request line, host, each field, the blank line
        declared: int | None = None
        for name, value in headers:
            # Framing is ours alone, whatever the case of the name (RFC 9110 §5.1): the
            # client's Content-Length/Transfer-Encoding never go up beside the one we add
            # (RFC 9112 §6.3 item 3, §11.2: a message framed twice is a smuggling vector).
            if (lname := name.lower()) in _FRAMING:
                if lname == b"content-length" and value.strip().isdigit():
                    declared = int(value)
                continue
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        if isinstance(body, bytes):
            parts.append(b"content-length: %d\r\n" % len(body))
            lines += 1
        elif body is None:
            if method in _BODY_METHODS:  # RFC 9110 §8.6: say "no content" explicitly
                parts.append(b"content-length: 0\r\n")
                lines += 1
        elif declared is not None:
            parts.append(b"content-length: %d\r\n" % declared)
            lines += 1
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Any CR, LF or NUL beyond the line ends written above came from a field: it would
        # let a value start a header or a request of its own (RFC 9110 §5.5). Counting
        # over the whole head is three C scans instead of three per field.
        lines += 1
        if head.count(b"\r") != lines or head.count(b"\n") != lines or b"\0" in head:
            raise UpstreamProtocolError("header value with a line break")
        return head, declared

    async def _write_stream(
        self, conn: _Connection, body: AsyncIterator[bytes], declared: int | None
    ) -> None:
        sent = 0
        async for chunk in body:
            if conn.head_done or conn.error is not None:
                # The upstream answered (or failed) before taking the whole body: stop, and
                # never reuse a connection whose request was cut short.
                conn.reusable = False
                return
            if not chunk:
                continue
            sent += len(chunk)
            if declared is None:
                conn.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent > declared:
                raise UpstreamProtocolError("request body longer than its Content-Length")
            else:
                conn.write(chunk)
            await conn.drain(self.timeout)
        if declared is None:
            conn.write(b"0\r\n\r\n")
        elif sent != declared:
            raise UpstreamProtocolError("request body shorter than its Content-Length")

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        if self._closed:
            raise UpstreamConnectError("the upstream pool is closed")
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            await self._wait_for_slot()
        now = asyncio.get_running_loop().time()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.alive() and now - conn.idle_since < self._keepalive:
                return conn, True
            conn.close()
        try:
            conn = await _open_connection(
                self._host, self._port, ssl_context=self._ssl, within=self._connect_timeout
            )
        except BaseException:
            self._release_slot()
            raise
        return conn, False

    async def _wait_for_slot(self) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        handle = loop.call_later(
            self.timeout, _expire, waiter, UpstreamTimeout("no upstream connection free in time")
        )
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slot()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()  # still queued: _release_slot skips it
            raise
        finally:
            handle.cancel()

    def _release_slot(self) -> None:
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        self._free += 1

    def release(self, conn: _Connection) -> None:
        """Pool ``conn`` when its exchange completed cleanly; otherwise close it."""
        conn.listener = None
        if conn.reusable and conn.complete and conn.alive() and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()
        self._release_slot()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
