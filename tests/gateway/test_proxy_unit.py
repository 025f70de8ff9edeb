"""ProxyApp against ``httpx.MockTransport`` and hand-written transports: exactly what the
upstream receives, what the client gets back, and how failures map to 502/504."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx
from starlette.types import Message

from patgate.gateway.proxy import ProxyApp
from patgate.gateway.settings import Settings
from patgate.middleware.errors import ConfigError
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import Identity
from patgate.middleware.user import PatgateCredentials
from patgate.policies.scopes import ScopeSet

UPSTREAM = "http://upstream.test:9000/base"
IDENTITY = Identity(
    token_id="tok_1",
    token_name="ci",
    token_type="service",
    owner_kind="org",
    owner_id="org_7",
    org_id="org_7",
    scopes=frozenset({"b:read", "a:write"}),
    workspaces=None,
    expires_at=None,
)


def _settings(**changes: Any) -> Settings:
    return Settings(upstream_url=UPSTREAM, **changes)


def _scope(
    method: str = "GET",
    raw_path: bytes | None = b"/items",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("203.0.113.7", 40000),
    **extra: Any,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": (raw_path or b"/").decode("latin-1"),
        "query_string": query,
        "headers": headers if headers is not None else [(b"host", b"gw.test")],
        "client": client,
        "server": ("127.0.0.1", 8080),
        **extra,
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    return scope


class _Client:
    """Drives one ASGI call: feeds ``chunks`` as the request body, records every send."""

    def __init__(self, chunks: list[bytes] | None = None, *, disconnect_after: bool = False):
        self.chunks = list(chunks or [b""])
        self.disconnect_after = disconnect_after
        self.sent: list[Message] = []
        self.log: list[str] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            chunk = self.chunks.pop(0)
            self.log.append(f"client sent {chunk!r}")
            more = bool(self.chunks) or self.disconnect_after
            return {"type": "http.request", "body": chunk, "more_body": more}
        if self.disconnect_after:
            return {"type": "http.disconnect"}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def _call(app: ProxyApp, scope: dict[str, Any], client: _Client | None = None) -> _Client:
    client = client or _Client()
    await asyncio.wait_for(app(scope, client.receive, client.send), 5)
    return client


def _mock(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> ProxyApp:
    return ProxyApp(_settings(), transport=httpx.MockTransport(handler), **kw)


@pytest.mark.anyio
async def test_upstream_receives_exact_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, content=b"made")

    scope = _scope(
        method="POST",
        raw_path=b"/v1/items%2Fx/%7Euser;p=1",
        query=b"b=2&a=%20&a=3",
        headers=[
            (b"host", b"gw.test"),
            (b"authorization", b"Bearer pat_secret"),
            (b"content-type", b"application/json"),
            (b"content-length", b"11"),
            (b"connection", b"keep-alive, x-hop"),
            (b"x-hop", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"x-patgate-owner-id", b"admin"),
            (b"x_patgate_scopes", b"*"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"x-request-id", b"r1"),
        ],
    )
    scope["auth"] = PatgateCredentials(ScopeSet.from_scopes(frozenset()), IDENTITY)
    client = await _call(_mock(handler), scope, _Client([b'{"a": true}']))

    assert client.status == 201
    assert client.body == b"made"
    (request,) = seen
    assert request.method == "POST"
    assert request.url.raw_path == b"/base/v1/items%2Fx/%7Euser;p=1?b=2&a=%20&a=3"
    assert request.url.host == "upstream.test"
    assert request.url.port == 9000
    assert request.content == b'{"a": true}'
    assert request.headers.raw == [
        (b"Host", b"upstream.test:9000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"11"),
        (b"x-request-id", b"r1"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"gw.test"),
        (b"x-patgate-token-id", b"tok_1"),
        (b"x-patgate-token-type", b"service"),
        (b"x-patgate-owner-type", b"org"),
        (b"x-patgate-owner-id", b"org_7"),
        (b"x-patgate-org-id", b"org_7"),
        (b"x-patgate-scopes", b"a:write b:read"),
    ]


@pytest.mark.anyio
async def test_public_route_sends_no_identity_and_strips_client_ones() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    headers = [(b"x-patgate-token-id", b"forged"), (b"X-PATGATE-ORG-ID", b"org_1")]
    scope = _scope(headers=headers)
    scope["auth"] = PatgateCredentials(ScopeSet.from_scopes(frozenset()), None)
    await _call(_mock(handler), scope)
    assert not [n for n in seen[0].headers if n.lower().startswith("x-patgate")]


@pytest.mark.parametrize(
    ("scope_changes", "target"),
    [
        ({"raw_path": b"/", "query_string": b""}, b"/base/"),
        ({"raw_path": None, "path": "/caf\u00e9 x"}, b"/base/caf%C3%A9%20x"),
        ({"raw_path": b"/caf\xc3\xa9", "query_string": b"q=a b"}, b"/base/caf%C3%A9?q=a%20b"),
        ({"raw_path": b"/a#b"}, b"/base/a%23b"),
        ({"raw_path": b"/a%2e%2E/b", "query_string": b"x=%zz"}, b"/base/a%2e%2E/b?x=%zz"),
    ],
)
@pytest.mark.anyio
async def test_target_is_forwarded_raw(scope_changes: dict[str, Any], target: bytes) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    scope = _scope()
    for key, value in scope_changes.items():
        if value is None:
            scope.pop(key, None)
        else:
            scope[key] = value
    client = await _call(_mock(handler), scope)
    assert client.status == 204
    assert seen[0].url.raw_path == target


@pytest.mark.anyio
async def test_response_headers_and_body_pass_back() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            headers=[
                (b"Content-Type", b"application/json"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
                (b"Connection", b"close, X-Internal"),
                (b"X-Internal", b"secret"),
                (b"Keep-Alive", b"timeout=5"),
            ],
            content=b'{"missing":1}',
        )

    metrics = Metrics()
    client = await _call(_mock(handler, metrics=metrics), _scope())
    assert client.status == 404
    assert client.headers == [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"13"),
    ]
    assert client.body == b'{"missing":1}'
    # The whole body in one message when Content-Length says it is complete.
    assert client.sent[1:] == [{"type": "http.response.body", "body": b'{"missing":1}'}]
    sample = metrics.registry.get_sample_value
    assert sample("patgate_upstream_requests_total", {"status_class": "4xx"}) == 1
    assert sample("patgate_upstream_seconds_count") == 1


_FAILURES = [
    (httpx.ConnectError, 502, "bad_gateway", "connect"),
    (httpx.ConnectTimeout, 504, "gateway_timeout", "timeout"),
    (httpx.ReadTimeout, 504, "gateway_timeout", "timeout"),
    (httpx.PoolTimeout, 504, "gateway_timeout", "timeout"),
    (httpx.RemoteProtocolError, 502, "bad_gateway", "protocol"),
    (httpx.ReadError, 502, "bad_gateway", "protocol"),
]


@pytest.mark.parametrize(("exc", "status", "error", "kind"), _FAILURES)
@pytest.mark.anyio
async def test_upstream_failures_map_to_gateway_errors(
    exc: type[httpx.TransportError], status: int, error: str, kind: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("upstream 10.1.2.3 password=hunter2", request=request)

    metrics = Metrics()
    client = await _call(_mock(handler, metrics=metrics), _scope())
    assert client.status == status
    body = json.loads(client.body)
    assert body["error"] == error
    assert body["detail"]
    assert b"hunter2" not in client.body
    assert b"10.1.2.3" not in client.body
    assert (b"content-type", b"application/json") in client.headers
    sample = metrics.registry.get_sample_value
    assert sample("patgate_upstream_errors_total", {"kind": kind}) == 1
    assert sample("patgate_upstream_requests_total", {"status_class": "error"}) == 1


class _RecordingTransport(httpx.AsyncBaseTransport):
    """Reads the request body chunk by chunk as a real connection would."""

    def __init__(self, log: list[str], response: httpx.Response | None = None) -> None:
        self.log = log
        self.requests: list[httpx.Request] = []
        self.response = response
        self.chunks: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            self.log.append(f"upstream got {chunk!r}")
            self.chunks.append(chunk)
        return self.response if self.response is not None else httpx.Response(200)


@pytest.mark.anyio
async def test_request_body_is_streamed_in_chunks() -> None:
    client = _Client([b"one-", b"two-", b"", b"three"])
    transport = _RecordingTransport(client.log)
    app = ProxyApp(_settings(), transport=transport)
    scope = _scope(method="PUT", headers=[(b"transfer-encoding", b"chunked")])
    await _call(app, scope, client)
    assert client.status == 200
    assert transport.chunks == [b"one-", b"two-", b"three"]
    # Each chunk reached the upstream before the client produced the next one.
    assert client.log == [
        "client sent b'one-'",
        "upstream got b'one-'",
        "client sent b'two-'",
        "upstream got b'two-'",
        "client sent b''",
        "client sent b'three'",
        "upstream got b'three'",
    ]
    # The client's framing is hop-by-hop; httpx re-frames the stream as chunked.
    assert transport.requests[0].headers.get("transfer-encoding") == "chunked"


@pytest.mark.anyio
async def test_client_disconnect_during_upload_sends_nothing() -> None:
    metrics = Metrics()
    client = _Client([b"partial"], disconnect_after=True)
    transport = _RecordingTransport(client.log)
    app = ProxyApp(_settings(), transport=transport, metrics=metrics)
    await _call(app, _scope(method="POST", headers=[(b"content-length", b"100")]), client)
    assert client.sent == []
    assert transport.chunks == [b"partial"]
    # A client going away is not an upstream failure.
    for kind in ("connect", "timeout", "protocol"):
        assert (
            metrics.registry.get_sample_value("patgate_upstream_errors_total", {"kind": kind}) == 0
        )


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], *, endless: bool = False) -> None:
        self.chunks = chunks
        self.endless = endless
        self.closed = False
        self.yielded = 0
        self.ticking = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.yielded += 1
            yield chunk
        while self.endless:
            await asyncio.sleep(0.01)
            self.yielded += 1
            if self.yielded >= 3:
                self.ticking.set()
            yield b"tick\n"

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_response_body_is_streamed_in_chunks() -> None:
    stream = _Stream([b"a", b"", b"bb", b"ccc"])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream)

    client = await _call(_mock(handler), _scope())
    assert client.sent[1:] == [
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"bb", "more_body": True},
        {"type": "http.response.body", "body": b"ccc", "more_body": True},
        {"type": "http.response.body", "body": b""},
    ]
    assert stream.closed


@pytest.mark.anyio
async def test_client_disconnect_mid_stream_closes_upstream_response() -> None:
    stream = _Stream([b"first"], endless=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    client = _Client()
    task = asyncio.create_task(_call(_mock(handler), _scope(), client))
    await asyncio.wait_for(stream.ticking.wait(), 2)
    client.gone.set()
    await asyncio.wait_for(task, 2)
    assert stream.closed
    assert client.sent[1] == {"type": "http.response.body", "body": b"first", "more_body": True}
    # Never a final message: the response was cut, not completed.
    assert all(m.get("more_body") for m in client.sent[1:])


@pytest.mark.anyio
async def test_upstream_error_mid_stream_cuts_the_response() -> None:
    class _Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"partial"
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Broken())

    metrics = Metrics()
    client = await _call(_mock(handler, metrics=metrics), _scope())
    assert client.status == 200
    assert client.sent[1:] == [
        {"type": "http.response.body", "body": b"partial", "more_body": True}
    ]
    assert (
        metrics.registry.get_sample_value("patgate_upstream_errors_total", {"kind": "protocol"})
        == 1
    )


@pytest.mark.anyio
async def test_head_response_has_empty_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "1234"})

    client = await _call(_mock(handler), _scope(method="HEAD"))
    assert (b"content-length", b"1234") in client.headers
    assert client.sent[1:] == [{"type": "http.response.body", "body": b""}]


@pytest.mark.parametrize(("peer", "trusted_xff"), [("127.0.0.1", True), ("198.51.100.4", False)])
@pytest.mark.anyio
async def test_forwarded_for_honours_trusted_proxies(peer: str, trusted_xff: bool) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    headers = [(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https")]
    await _call(_mock(handler), _scope(headers=headers, client=(peer, 1)))
    xff = seen[0].headers["x-forwarded-for"]
    assert xff == (f"1.2.3.4, {peer}" if trusted_xff else peer)
    assert seen[0].headers["x-forwarded-proto"] == ("https" if trusted_xff else "http")


@pytest.mark.anyio
async def test_websocket_is_refused_and_lifespan_ignored() -> None:
    app = _mock(lambda request: httpx.Response(200))
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    await app({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "not proxied"}]
    sent.clear()
    await app({"type": "lifespan"}, receive, send)
    assert sent == []


@pytest.mark.anyio
async def test_aclose_closes_the_transport() -> None:
    class _Closing(httpx.MockTransport):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    transport = _Closing(lambda request: httpx.Response(200))
    app = ProxyApp(_settings(), transport=transport)
    await app.aclose()
    assert transport.closed


@pytest.mark.parametrize("url", [None, "", "ftp://files.test/"])
def test_upstream_url_is_required(url: str | None) -> None:
    with pytest.raises(ConfigError, match="PATGATE_UPSTREAM_URL"):
        ProxyApp(Settings(upstream_url=url))


@pytest.mark.anyio
async def test_respx_router_as_transport() -> None:
    router = respx.Router(base_url=UPSTREAM, assert_all_called=True)
    route = router.get("/items", params={"page": "2"}).mock(
        return_value=httpx.Response(200, json={"items": []})
    )
    app = ProxyApp(_settings(), transport=httpx.MockTransport(router.async_handler))
    client = await _call(app, _scope(query=b"page=2"))
    assert client.status == 200
    assert json.loads(client.body) == {"items": []}
    assert route.call_count == 1
    assert route.calls.last.request.headers["x-forwarded-for"] == "203.0.113.7"
