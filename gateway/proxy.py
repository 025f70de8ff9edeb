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
import re
import time
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import quote

import httpx
from starlette.types import Receive, Scope, Send

from patgate.middleware.errors import ConfigError, UpstreamError
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import Identity
from patgate.middleware.responses import ErrorResponses
from patgate.middleware.trust import TrustedProxies

from .headers import Headers, response_headers, upstream_request_headers
from .settings import Settings
from .upstream import Body, HttpxUpstream, Upstream, UpstreamResponse, create_upstream

__all__ = ["DirectReply", "ProxyApp"]

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_ERROR_KINDS = ("connect", "timeout", "protocol")
_UNSAFE_TARGET = re.compile(rb"[^\x21-\x7e]|#")


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

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy(scope, receive, send)
        elif scope["type"] == "websocket":
            # Not proxied yet: refuse the handshake (uvicorn answers 403).
            await send({"type": "websocket.close", "code": 1008, "reason": "not proxied"})

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forward(scope, receive, send, scope.get("patgate.identity"))

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
        try:
            fields = response_headers(response.headers)
        except UpstreamError as exc:  # a response we cannot relay (headers.py): a 502
            await response.aclose()
            self._upstream_failed(exc)
            await self._responses.for_error(exc).send(send)
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

    async def forward_direct(
        self,
        scope: Scope,
        reply: DirectReply,
        identity: Identity | None,
        identity_fields: Headers | None = None,
    ) -> None:
        """:meth:`forward` for a request without a body, answered through the fast
        path's ``reply`` (:mod:`gateway.fastpath`): in one write when the upstream's
        response is already whole."""
        headers = self._headers(scope, identity, identity_fields)
        started = time.perf_counter()
        try:
            response = await self._upstream.send(scope["method"], _target(scope), headers, None)
        except UpstreamError as exc:
            self._seconds.observe(time.perf_counter() - started)
            self._upstream_failed(exc)
            prepared = self._responses.for_error(exc)
            await reply.complete(prepared.status, prepared.headers, prepared.body)
            return
        self._seconds.observe(time.perf_counter() - started)
        try:
            fields = response_headers(response.headers)
        except UpstreamError as exc:  # a response we cannot relay (headers.py): a 502
            await response.aclose()
            self._upstream_failed(exc)
            prepared = self._responses.for_error(exc)
            await reply.complete(prepared.status, prepared.headers, prepared.body)
            return
        self._count(response.status)
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
                prepared = self._responses.for_error(exc)
                await reply.complete(prepared.status, prepared.headers, prepared.body)
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
