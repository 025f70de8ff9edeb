"""The sidecar's reverse proxy: a pure ASGI app that forwards to ``Settings.upstream_url``.

Per request: build the target from the raw path and query exactly as received (the auth
middleware in front has already judged the normalized path and denied ambiguous ones),
rewrite headers at the trust boundary (:mod:`gateway.headers`), stream the request body
upstream and the response body back, and answer the upstream transport's failures — the
:class:`~patgate.middleware.errors.UpstreamError` family, whatever client raised them —
with their 502/504 through the one error renderer (:mod:`middleware.responses`).

Websockets are not proxied yet: a websocket handshake is refused (close code 1008, which
uvicorn answers as HTTP 403). The lifespan scope is left to the app assembler.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from starlette.types import Receive, Scope, Send

from patgate.middleware.errors import ConfigError, UpstreamError
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import Identity
from patgate.middleware.responses import ErrorResponses
from patgate.middleware.trust import TrustedProxies
from patgate.middleware.user import identity_of

from .headers import Headers, response_headers, upstream_request_headers
from .settings import Settings
from .upstream import Body, HttpxUpstream, Upstream, UpstreamResponse, create_upstream
from .upstream.http1 import Http1Upstream, UpstreamConnection

__all__ = ["DirectReply", "ProxyApp"]

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_ERROR_KINDS = ("connect", "timeout", "protocol")
_UNSAFE_TARGET = re.compile(rb"[^\x21-\x7e]|#")
_log = logging.getLogger("patgate.gateway")
#: what :meth:`ProxyApp.forward_now` hands back when the request needs a task.
Work = Coroutine[Any, Any, None]


class _ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


class _BodyState:
    """Per-request flags shared with the request-body generator."""

    __slots__ = ("client_gone", "done")

    def __init__(self) -> None:
        self.done = False
        self.client_gone = False


def _request_body(first: bytes, receive: Receive, state: _BodyState) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state.client_gone = True
                raise _ClientGone
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                state.done = True
                return

    return chunks()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    raise _ClientGone


def _target(scope: Scope) -> bytes:
    """Path and query as the client sent them. Only bytes that cannot stand in a request
    target (non-ASCII, controls, space; RFC 3986 §2.1) and ``#`` (it would start a fragment
    on the way out) are percent-encoded; existing ``%XX`` escapes are left alone."""
    raw = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
    query: bytes = scope.get("query_string", b"")
    target: bytes = raw + b"?" + query if query else raw
    if _UNSAFE_TARGET.search(target):
        target = quote(target, safe="/?[]@!$&'()*+,;=:%~").encode("ascii")
    return target


class DirectReply(Protocol):
    """How :meth:`ProxyApp.forward_direct` answers: the fast path's writer on the
    connection (:class:`gateway.fastpath.Reply`), framed as uvicorn would frame it."""

    @property
    def started(self) -> bool:
        """Whether any byte of the response has been written."""

    async def complete(self, status: int, headers: Headers, body: bytes) -> None:
        """The whole response at once."""

    def complete_now(self, status: int, headers: Headers, body: bytes) -> None:
        """:meth:`complete` without awaiting the client's drain (a bounded response)."""

    def spawn(self, work: Work) -> None:
        """Finish this request in a task of the connection (cancelled if the client
        leaves); until then a callback-run exchange answers through ``*_now``."""

    def on_abandon(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` if the client leaves while no task serves the request."""

    def internal_error(self) -> None:
        """A bug: 500 if nothing was written yet, and close the connection."""

    async def start(self, status: int, headers: Headers) -> None:
        """The head of a streamed response."""

    async def chunk(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    def abort(self) -> None:
        """Cut a started response short (the client sees it truncated)."""


class ProxyApp:
    """Forward http requests to ``settings.upstream_url``.

    The upstream client is injectable: ``upstream`` (any :class:`gateway.upstream.Upstream`)
    or ``transport`` (an httpx transport, e.g. ``httpx.MockTransport`` in unit tests);
    by default the pooled :func:`gateway.upstream.create_upstream`. Call :meth:`aclose`
    on shutdown.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        upstream: Upstream | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not settings.upstream_url:
            raise ConfigError("PATGATE_UPSTREAM_URL: the gateway needs an upstream URL")
        if upstream is None and transport is not None:
            timeout = httpx.Timeout(
                settings.upstream_timeout, connect=settings.upstream_connect_timeout
            )
            upstream = HttpxUpstream(settings.upstream_url, transport, timeout=timeout)
        self._upstream = upstream if upstream is not None else create_upstream(settings)
        self._trusted = TrustedProxies(settings.trusted_proxies)
        metrics = metrics if metrics is not None else Metrics()
        hot = metrics.upstream_hot
        self._requests = {c: hot.child(c) for c in (*_STATUS_CLASSES, "error")}
        #: status // 100 → its counter (index 0 unused).
        self._by_class = (self._requests["5xx"], *(self._requests[c] for c in _STATUS_CLASSES))
        self._errors = {k: metrics.upstream_errors.labels(kind=k) for k in _ERROR_KINDS}
        self._seconds = hot.seconds
        self._responses = ErrorResponses()
        #: the pooled HTTP/1.1 client, whose exchanges can run from callbacks.
        self._http1 = self._upstream if isinstance(self._upstream, Http1Upstream) else None

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy(scope, receive, send)
        elif scope["type"] == "websocket":
            # Not proxied yet: refuse the handshake (uvicorn answers 403).
            await send({"type": "websocket.close", "code": 1008, "reason": "not proxied"})

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forward(scope, receive, send, identity_of(scope))

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        identity: Identity | None,
        identity_fields: Headers | None = None,
    ) -> None:
        """Forward one authenticated http request for ``identity`` (``None``: a public
        route); ``identity_fields``: its headers, already built."""
        headers = self._headers(scope, identity, identity_fields)
        # Peek at the first body message: a body that fits in one message (most
        # requests) goes as bytes; only a longer one is streamed through a generator.
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        state = _BodyState()
        content: Body
        body: bytes = first.get("body", b"")
        if first.get("more_body", False):
            content = _request_body(body, receive, state)
        else:
            state.done = True
            content = body or None

        started = time.perf_counter()
        try:
            response = await self._upstream.send(scope["method"], _target(scope), headers, content)
        except (UpstreamError, _ClientGone) as exc:
            self._seconds.observe(time.perf_counter() - started)
            if state.client_gone or not isinstance(exc, UpstreamError):
                return
            self._upstream_failed(exc)
            # The class's fixed text: the exception's own message can hold addresses.
            await self._responses.for_error(exc).send(send)
            return
        self._seconds.observe(time.perf_counter() - started)
        fields = self._relayed_headers(response, scope["method"])
        if isinstance(fields, UpstreamError):
            await response.aclose()
            await self._responses.for_error(fields).send(send)
            return
        self._count(response.status)
        try:
            await self._respond(response, fields, receive, send, watch=state.done)
        except UpstreamError as exc:
            # Headers are out: all we can do is cut the response short, which the client
            # sees as a truncated body rather than a complete wrong one.
            self._errors[exc.kind].inc()
        finally:
            await response.aclose()

    def forward_now(
        self,
        scope: Scope,
        reply: DirectReply,
        identity: Identity | None,
        identity_fields: Headers | None = None,
    ) -> Work | None:
        """Start forwarding a request without a body from callbacks, or hand back the
        :meth:`forward_direct` coroutine that does it in a task.

        The common exchange — an idle keep-alive connection, an answer that arrives
        whole — then costs no task, no future and no timer of its own (issue 16: those
        were ~10 µs of a ~50 µs proxied request): the request goes out now and the
        answer is written to the client from the upstream connection's read callback
        (:class:`_Direct`). Anything else (no idle connection, a streamed or partial
        body, a resend) goes on in a task through ``reply.spawn``, on the same code as
        :meth:`forward_direct`."""
        upstream = self._http1
        headers = self._headers(scope, identity, identity_fields)
        if upstream is None:
            return self.forward_direct(scope, reply, identity, identity_fields, headers=headers)
        direct = _Direct(self, upstream, scope, reply, identity, identity_fields)
        method: str = scope["method"]
        try:
            conn = upstream.start(method, _target(scope), headers, direct.news)
        except UpstreamError as exc:  # a header that would split the request
            self._seconds.observe(time.perf_counter() - direct.started)
            self._upstream_failed(exc)
            return self._answer_error(exc, reply)
        if conn is None:
            return self.forward_direct(scope, reply, identity, identity_fields, headers=headers)
        direct.conn = conn
        reply.on_abandon(direct.abandon)
        return None

    async def _answer_error(self, exc: UpstreamError, reply: DirectReply) -> None:
        prepared = self._responses.for_error(exc)
        await reply.complete(prepared.status, prepared.headers, prepared.body)

    async def forward_direct(
        self,
        scope: Scope,
        reply: DirectReply,
        identity: Identity | None,
        identity_fields: Headers | None = None,
        *,
        headers: Headers | None = None,
        fresh: bool = False,
    ) -> None:
        """:meth:`forward` for a request without a body, answered through the fast
        path's ``reply`` (:mod:`gateway.fastpath`): in one write when the upstream's
        response is already whole. ``headers``: the upstream request's, if built;
        ``fresh``: on a new upstream connection (a resend, see :class:`_Direct`)."""
        if headers is None:
            headers = self._headers(scope, identity, identity_fields)
        started = time.perf_counter()
        method: str = scope["method"]
        response: UpstreamResponse
        try:
            if fresh and self._http1 is not None:
                response = await self._http1.send(method, _target(scope), headers, None, fresh=True)
            else:
                response = await self._upstream.send(method, _target(scope), headers, None)
        except UpstreamError as exc:
            self._seconds.observe(time.perf_counter() - started)
            self._upstream_failed(exc)
            await self._answer_error(exc, reply)
            return
        self._seconds.observe(time.perf_counter() - started)
        fields = self._relayed_headers(response, method)
        if isinstance(fields, UpstreamError):
            await response.aclose()
            await self._answer_error(fields, reply)
            return
        self._count(response.status)
        await self.relay_direct(response, fields, reply)

    async def relay_direct(
        self, response: UpstreamResponse, fields: Headers, reply: DirectReply
    ) -> None:
        """Send an upstream response whose head is in (``fields``: its relayed headers)
        through ``reply``, then release it."""
        try:
            whole = response.ready_body()
            if whole is not None:
                await reply.complete(response.status, fields, whole)
                return
            chunks = response.aiter_raw()
            try:
                if _short(fields):
                    # A short body announced by its length goes out with its head in one
                    # write once it is in, as nginx's proxy buffering does: the head alone
                    # would tell the client nothing it can use before the body anyway.
                    body = b"".join([chunk async for chunk in chunks])
                    await reply.complete(response.status, fields, body)
                    return
                await reply.start(response.status, fields)
                async for chunk in chunks:
                    await reply.chunk(chunk)
                await reply.end()
            finally:
                # Finalized here (also when the client left), not by the garbage collector.
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        except UpstreamError as exc:
            self._errors[exc.kind].inc()
            if not reply.started:
                await self._answer_error(exc, reply)
            else:  # the head is out: cut the response short (see forward)
                reply.abort()
        finally:
            await response.aclose()

    def _headers(
        self, scope: Scope, identity: Identity | None, identity_fields: Headers | None
    ) -> Headers:
        client = scope.get("client")
        peer: str | None = client[0] if client else None
        return upstream_request_headers(
            scope["headers"],
            identity=identity,
            peer=peer,
            trusted=peer in self._trusted,
            scheme=scope.get("scheme", "http"),
            identity_fields=identity_fields,
        )

    def _relayed_headers(self, response: UpstreamResponse, method: str) -> Headers | UpstreamError:
        """The response's headers as relayed to the client, or (counted) the error that
        makes it a 502: a response we cannot relay (:func:`response_headers`)."""
        try:
            return response_headers(response.headers, body=_has_body(method, response.status))
        except UpstreamError as exc:
            self._upstream_failed(exc)
            return exc

    def _upstream_failed(self, exc: UpstreamError) -> None:
        """Count a request the upstream could not answer usably (it gets a 502/504)."""
        self._errors[exc.kind].inc()
        self._requests["error"].inc()

    def _count(self, status: int) -> None:
        status_class = status // 100
        self._by_class[status_class if 1 <= status_class <= 5 else 5].inc()

    async def _respond(
        self,
        response: UpstreamResponse,
        headers: Headers,
        receive: Receive,
        send: Send,
        *,
        watch: bool,
    ) -> None:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        length = next((v for k, v in headers if k == b"content-length"), None)
        chunks = response.aiter_raw()
        try:
            await _relay(chunks, length, receive, send, watch=watch)
        finally:
            # Finalize the generator here rather than leave it to the garbage collector.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()


def _has_body(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body (RFC 9110 §6.4.1)."""
    return method != "HEAD" and status != 204 and status != 304


#: a response body up to this length, announced by Content-Length, is relayed whole.
_WHOLE_LIMIT = 64 * 1024


def _short(fields: Headers) -> bool:
    """Whether ``fields`` announce a body of at most :data:`_WHOLE_LIMIT` bytes."""
    for name, value in fields:
        if name == b"content-length":
            return value.isdigit() and int(value) <= _WHOLE_LIMIT
    return False


async def _relay(
    chunks: AsyncIterator[bytes], length: bytes | None, receive: Receive, send: Send, *, watch: bool
) -> None:
    """Send the body; ``length`` is the response's Content-Length, if any."""
    first = await anext(chunks, None)
    while first == b"":  # empty chunks carry nothing; find out whether more follows
        first = await anext(chunks, None)
    if first is None or (length is not None and length == b"%d" % len(first)):
        # The whole body arrived at once (the common small response): one message.
        await send({"type": "http.response.body", "body": first or b""})
        return
    await send({"type": "http.response.body", "body": first, "more_body": True})
    if not watch:
        await _pump(chunks, send)
        return
    # uvicorn drops sends after a disconnect without telling us, so a long or endless
    # stream is raced against http.disconnect; the upstream response is then closed.
    error: UpstreamError | None = None
    try:
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(_until_disconnect(receive))
            try:
                await _pump(chunks, send)
            except UpstreamError as exc:
                error = exc
            finally:
                watcher.cancel()
    except* _ClientGone:
        pass
    if error is not None:
        raise error


async def _pump(chunks: AsyncIterator[bytes], send: Send) -> None:
    async for chunk in chunks:
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class _Direct:
    """One bodiless request forwarded from callbacks (:meth:`ProxyApp.forward_now`):
    :meth:`news` runs after each read of the upstream's answer.

    ``conn`` is the upstream connection while this exchange holds its pool slot; every
    path gives it back exactly once (:meth:`_release`), or hands it to the response a
    task goes on with."""

    __slots__ = ("_fields", "_identity", "_proxy", "_reply", "_scope", "_upstream", "conn",
                 "started")  # fmt: skip

    def __init__(
        self,
        proxy: ProxyApp,
        upstream: Http1Upstream,
        scope: Scope,
        reply: DirectReply,
        identity: Identity | None,
        identity_fields: Headers | None,
    ) -> None:
        self._proxy = proxy
        self._upstream = upstream
        self._scope = scope
        self._reply = reply
        self._identity = identity
        self._fields = identity_fields
        self.started = time.perf_counter()
        self.conn: UpstreamConnection | None = None

    def news(self) -> None:
        conn = self.conn
        if conn is None or (conn.error is None and not conn.head_done):
            return  # nothing to act on yet (an interim answer, part of the head)
        self._reply.on_abandon(None)
        try:
            self._act(conn)
        except Exception:  # a bug: the client gets a 500, the log the traceback
            _log.exception("Exception forwarding %s from callbacks", self._scope["method"])
            self._release()
            self._reply.internal_error()

    def _release(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            self._upstream.release(conn)

    def _act(self, conn: UpstreamConnection) -> None:
        proxy, upstream, reply = self._proxy, self._upstream, self._reply
        method: str = self._scope["method"]
        error = conn.error
        if error is not None:
            self._release()
            if upstream.retryable(conn, method, error):
                # The pooled connection was closed by the upstream as we sent: send once
                # more, on a new connection (RFC 9112 §9.3.1), as Http1Upstream.send does.
                reply.spawn(
                    proxy.forward_direct(
                        self._scope, reply, self._identity, self._fields, fresh=True
                    )
                )
                return
            proxy._seconds.observe(time.perf_counter() - self.started)
            proxy._upstream_failed(error)
            self._answer_error(error)
            return
        proxy._seconds.observe(time.perf_counter() - self.started)
        response = upstream.response(conn)
        fields = proxy._relayed_headers(response, method)
        if isinstance(fields, UpstreamError):
            self._release()
            self._answer_error(fields)
            return
        proxy._count(response.status)
        whole = response.ready_body()
        if whole is None:  # more to read: streamed, or a body still on its way
            self.conn = None  # the response holds the connection from here on
            reply.spawn(proxy.relay_direct(response, fields, reply))
            # Until that task runs, a client leaving cancels it before its first step
            # (and so before its finally-block): the response is given back here then.
            reply.on_abandon(response.release_now)
            return
        self._release()
        try:
            reply.complete_now(response.status, fields, whole)
        except UpstreamError as exc:  # a header value with a line break (fastpath.Reply)
            proxy._errors[exc.kind].inc()
            self._answer_error(exc)

    def _answer_error(self, exc: UpstreamError) -> None:
        """:meth:`ProxyApp._answer_error` from the callback: its 502/504, written now."""
        prepared = self._proxy._responses.for_error(exc)
        self._reply.complete_now(prepared.status, prepared.headers, prepared.body)

    def abandon(self) -> None:
        """The client left before the answer: stop waiting, close the connection."""
        self._release()
