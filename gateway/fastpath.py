"""The gateway listener's fast path: a request without a body, served on the protocol.

Issue 16. Measured with valgrind (instructions per request, deterministic): a bare
httptools protocol answering a request costs ~6,000 instructions; uvicorn answering it
through a trivial ASGI app ~95,000 — its request cycle, an ``asyncio.Event``, the ASGI
scope and messages, ``send`` serializing headers with two regexes a field, two writes, a
wrapper coroutine. The proxy paid all of that on top of its own work. Most API requests
(GET, HEAD, DELETE, OPTIONS, ...) carry no body, so for exactly those:

* :class:`GatewayProtocol` (uvicorn's httptools protocol with the request-head limits of
  :mod:`gateway.protocol`) serves a request that declares no body (no
  ``Content-Length``, ``Transfer-Encoding`` or ``Expect``, no upgrade, nothing ahead of
  it on the connection) itself: one task runs :meth:`GatewayApp.direct`, which
  authenticates, forwards and answers through a :class:`Reply` — status line, headers
  and body in one ``send`` when the upstream's answer is already whole, a streamed relay
  with flow control otherwise.
* Everything else — a request body, an upgrade, a pipelined request behind another —
  takes uvicorn's ASGI path to the same :class:`GatewayApp`, so both paths share the
  authenticator, the header rules (:mod:`gateway.headers`), the upstream client, the
  metrics and the error renderer.

uvicorn still owns the connection: while a fast request is in flight, an
:class:`Exchange` stands in as its request cycle, so pipelined requests queue behind it
in order (RFC 9112 §9.3.2), graceful shutdown waits for it and ends keep-alive, and a
disconnect cancels its task (which closes the upstream connection it held).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import unquote

import httptools
from starlette.types import Receive, Scope, Send

from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.auth import Authenticator, Lookup
from patgate.middleware.errors import AuthError, StoreUnavailable, UpstreamProtocolError

from .headers import Headers, resolved_identity_headers
from .protocol import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_URL_BYTES,
    PatgateHttpToolsProtocol,
)
from .proxy import ProxyApp, Work

__all__ = ["Exchange", "GatewayApp", "GatewayProtocol", "Reply", "gateway_protocol"]

_log = logging.getLogger("patgate.gateway")

#: request fields that announce a body (RFC 9112 §6.1-6.3) or an interim answer
#: (RFC 9110 §10.1.1): such requests take the ASGI path.
_BODY_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"expect"})
_NO_BODY_STATUS = frozenset({204, 304})


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {status: _status_line(status) for status in range(200, 600)}
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class _NoEvent:
    """What uvicorn's protocol ``set()``s on a cycle's message event: nobody waits here."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class Exchange:
    """One fast request, standing in for uvicorn's request cycle: the attributes uvicorn's
    protocol reads and writes on ``self.cycle`` (in flight, disconnected, keep-alive)."""

    __slots__ = ("abandon", "disconnected", "keep_alive", "more_body", "response_complete", "task")

    message_event: ClassVar[_NoEvent] = _NO_EVENT
    body = b""  # uvicorn appends to cycle.body only for requests with a body

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False
        self.more_body = False
        self.task: asyncio.Task[None] | None = None
        #: what gives back the upstream connection if the client leaves: while callbacks
        #: run the exchange, and while a task handed one is yet to start.
        self.abandon: Callable[[], None] | None = None


class Reply:
    """How :meth:`GatewayApp.direct` answers a fast request: writes on the connection,
    framed as uvicorn's ``send`` would frame them."""

    __slots__ = ("_chunked", "_exchange", "_head_request", "_http10", "_protocol", "started")

    def __init__(
        self, protocol: GatewayProtocol, exchange: Exchange, *, head_request: bool, http10: bool
    ) -> None:
        self._protocol = protocol
        self._exchange = exchange
        self._head_request = head_request
        self._http10 = http10
        self._chunked = False
        self.started = False

    @property
    def disconnected(self) -> bool:
        return self._exchange.disconnected

    def _head(self, status: int, headers: Headers, length: int | None) -> bytes:
        """Status line and header block. ``length``: the body's, when known and no
        ``Content-Length`` came with ``headers``; ``None`` for a streamed one."""
        parts = [_STATUS_LINES.get(status) or _status_line(status)]
        # uvicorn's own (Server, Date) when configured; the gateway turns both off.
        default = self._protocol.server_state.default_headers
        for name, value in default:
            parts += (name, b": ", value, b"\r\n")
        framed = False
        for name, value in headers:
            if name == b"content-length":
                framed = True
            parts += (name, b": ", value, b"\r\n")
        lines = len(default) + len(headers) + 2  # status line, fields, the blank line
        if not framed and not self._head_request and status not in _NO_BODY_STATUS:
            if length is not None:
                # A chunked upstream body that arrived whole goes with its length.
                parts.append(b"content-length: %d\r\n" % length)
                lines += 1
            elif not self._http10:
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
                lines += 1
            # else: HTTP/1.0 has no chunked coding (RFC 9112 §6.1): the close ends the
            # body (its connection is never kept alive).
        if not self._exchange.keep_alive:
            parts.append(b"connection: close\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # llhttp refuses line breaks in a parsed field; a field from any other client must
        # not split the response either (RFC 9110 §5.5). One count over the whole head.
        if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
            raise UpstreamProtocolError("upstream header value with a line break")
        return head

    async def complete(self, status: int, headers: Headers, body: bytes) -> None:
        """The whole response at once; ``headers`` without hop-by-hop fields."""
        await self._write(self._whole(status, headers, body))
        self._finish()

    def complete_now(self, status: int, headers: Headers, body: bytes) -> None:
        """:meth:`complete` from a callback: no wait for a slow client's drain. Only
        taken for a request dispatched while the client was reading (the protocol
        checks), so at most this one bounded response is queued past the high-water
        mark; a response that has to stream always goes through a task."""
        data = self._whole(status, headers, body)
        if not self._exchange.disconnected and not self._protocol.transport.is_closing():
            self.started = True
            self._protocol.transport.write(data)
        self._finish()

    def _whole(self, status: int, headers: Headers, body: bytes) -> bytes:
        head = self._head(status, headers, len(body))
        if self._head_request or status in _NO_BODY_STATUS or not body:
            return head
        return head + body

    def spawn(self, work: Work) -> None:
        """Go on serving this request in a task of its own (see ``DirectReply``)."""
        self._exchange.abandon = None
        self._protocol.serve(work, self, self._exchange)

    def on_abandon(self, callback: Callable[[], None] | None) -> None:
        self._exchange.abandon = callback

    def internal_error(self) -> None:
        """A bug: the client gets a 500 if nothing was written yet, then the close."""
        transport = self._protocol.transport
        if not self.started and not transport.is_closing():
            transport.write(_INTERNAL_ERROR)
        self._exchange.response_complete = True
        transport.close()

    async def start(self, status: int, headers: Headers) -> None:
        """The head of a streamed response (chunked unless it has a length)."""
        await self._write(self._head(status, headers, None))

    async def chunk(self, data: bytes) -> None:
        if data and not self._head_request:
            await self._write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    async def end(self) -> None:
        if self._chunked and not self._head_request:
            await self._write(b"0\r\n\r\n")
        self._finish()

    async def _write(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.flow.write_paused and not self._exchange.disconnected:
            await protocol.flow.drain()  # back-pressure from a slow client
        if self._exchange.disconnected or protocol.transport.is_closing():
            return
        self.started = True
        protocol.transport.write(data)

    def abort(self) -> None:
        """End a response whose head is out but whose body cannot be finished: close the
        connection, so the client sees it cut short rather than complete and wrong."""
        self._exchange.response_complete = True
        self._protocol.transport.close()

    def _finish(self) -> None:
        exchange = self._exchange
        if exchange.response_complete:
            return
        exchange.response_complete = True
        protocol = self._protocol
        if not exchange.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()


class GatewayApp:
    """The gateway listener's app: authenticate and forward in one coroutine.

    ``__call__`` is the ASGI path (websockets go through :class:`PatgateMiddleware` and
    are refused by the proxy); :meth:`direct` is the fast path's."""

    def __init__(self, proxy: ProxyApp, authenticator: Authenticator) -> None:
        self._proxy = proxy
        self._authenticator = authenticator
        self._responses = authenticator.responses
        self._other = PatgateMiddleware(proxy, authenticator)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        method = scope["method"]
        try:
            resolved = await self._authenticator.authenticate(method, path, scope["headers"], scope)
        except (AuthError, StoreUnavailable) as exc:
            await self._responses.for_error(exc).send(send)
            return
        identity = None if resolved is None else resolved.identity
        fields = resolved_identity_headers(resolved)
        await self._proxy.forward(scope, receive, send, identity, fields)

    def direct_now(self, scope: Scope, reply: Reply, *, callbacks: bool = True) -> Work | None:
        """Serve a bodiless request (``scope``: type, method, raw_path, query_string,
        headers, client, scheme) through ``reply``: decided now when its token is
        cached, and forwarded from callbacks (``callbacks``: whether it may be,
        :meth:`ProxyApp.forward_now`); or the coroutine that serves it in a task."""
        authenticator = self._authenticator
        method: str = scope["method"]
        headers = scope["headers"]
        try:
            decided = authenticator.authenticate_now(
                method, scope["raw_path"].decode("latin-1"), headers, scope
            )
        except (AuthError, StoreUnavailable) as exc:
            return self._refuse(exc, reply)
        if isinstance(decided, Lookup):
            return self._looked_up(decided, scope, reply)
        identity = None if decided is None else decided.identity
        fields = resolved_identity_headers(decided)
        if not callbacks:
            return self._proxy.forward_direct(scope, reply, identity, fields)
        return self._proxy.forward_now(scope, reply, identity, fields)

    async def _refuse(self, exc: AuthError | StoreUnavailable, reply: Reply) -> None:
        prepared = self._responses.for_error(exc)
        await reply.complete(prepared.status, prepared.headers, prepared.body)

    async def _looked_up(self, lookup: Lookup, scope: Scope, reply: Reply) -> None:
        """A token the cache did not hold: the store's answer, then the forward."""
        try:
            resolved = await self._authenticator.finish(
                lookup, scope["method"], scope["headers"], scope
            )
        except (AuthError, StoreUnavailable) as exc:
            await self._refuse(exc, reply)
            return
        await self._proxy.forward_direct(
            scope, reply, resolved.identity, resolved_identity_headers(resolved)
        )


class GatewayProtocol(PatgateHttpToolsProtocol):
    """:class:`PatgateHttpToolsProtocol` serving bodiless requests itself through
    :attr:`gateway` (see the module docstring); without one, it is the plain protocol."""

    gateway: ClassVar[GatewayApp | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bodied = False
        self._fast: Exchange | None = None

    def fast_path(self, raw_path: bytes) -> GatewayApp | None:
        """The app serving this bodiless request on the fast path, or ``None`` for the
        ASGI path (a subclass may keep some paths on it)."""
        return self.gateway

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._bodied = False

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if self.headers[-1][0] in _BODY_FIELDS:
            self._bodied = True

    def on_message_complete(self) -> None:
        fast: object = self._fast
        if fast is not None and self.cycle is fast:
            return  # a fast request: nothing waits for its (empty) body
        super().on_message_complete()

    def _dispatch(self) -> None:
        cycle = self.cycle
        parser = self.parser
        if (
            self._bodied
            or (cycle is not None and not cycle.response_complete)
            or parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            super()._dispatch()
            return
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        gateway = self.fast_path(raw_path)
        if gateway is None:
            super()._dispatch()
            return
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        exchange = Exchange(version != "1.0" and parser.should_keep_alive())
        scope: Any = self.scope
        scope["method"] = method
        scope["http_version"] = version
        scope["raw_path"] = raw_path
        path = raw_path.decode("ascii")  # as uvicorn does: a non-ASCII target is a 400
        scope["path"] = unquote(path) if "%" in path else path
        scope["query_string"] = url.query or b""
        reply = Reply(self, exchange, head_request=method == "HEAD", http10=version == "1.0")
        self.cycle = exchange  # type: ignore[assignment]
        self._fast = exchange
        try:
            # From callbacks only while the client reads what we write (Reply.complete_now).
            work = gateway.direct_now(scope, reply, callbacks=not self.flow.write_paused)
        except Exception:  # a bug: the client gets a 500, the log the traceback
            _log.exception("Exception serving %s on the fast path", method)
            reply.internal_error()
            return
        if work is not None:
            self.serve(work, reply, exchange)

    def serve(self, work: Work, reply: Reply, exchange: Exchange) -> None:
        """Run ``work`` for the fast request ``exchange`` as a task of this connection
        (cancelled if the client leaves)."""
        task = self.loop.create_task(self._serve(work, reply))
        exchange.task = task
        task.add_done_callback(self.tasks.discard)
        # A task cancelled before its first step never awaited ``work``: close it
        # (a no-op for a finished coroutine), so nothing warns it was never awaited.
        task.add_done_callback(lambda _: work.close())
        self.tasks.add(task)

    async def _serve(self, work: Work, reply: Reply) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: the client gets a 500, the log the traceback
            _log.exception("Exception serving a request on the fast path")
            reply.internal_error()

    def connection_lost(self, exc: Exception | None) -> None:
        fast = self._fast
        super().connection_lost(exc)
        if fast is not None and not fast.response_complete:
            # Nobody is left to answer: stop waiting on the upstream (the task's
            # finally-blocks close the upstream connection it held; a callback-run
            # exchange closes it in its abandon hook).
            fast.disconnected = True
            if fast.task is not None:
                fast.task.cancel()
            if fast.abandon is not None:
                fast.abandon()

    def shutdown(self) -> None:
        fast = self._fast
        if fast is not None and not fast.response_complete:
            fast.keep_alive = False  # answer it, then close (as uvicorn does its cycles)
            return
        super().shutdown()


def gateway_protocol(
    gateway: GatewayApp | None = None,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
) -> type[GatewayProtocol]:
    """The gateway listener's protocol class for ``uvicorn.Config(http=...)``, serving
    bodiless requests through ``gateway``; with the limits of
    :func:`gateway.protocol.limited_protocol`."""
    attrs = {
        "gateway": gateway,
        "max_header_bytes": max_header_bytes,
        "max_headers": max_headers,
        "max_url_bytes": max_url_bytes,
    }
    return type("GatewayProtocol", (GatewayProtocol,), attrs)
