"""The gateway listener's fast path (gateway/fastpath.py, issue 16) end to end.

The real gateway app (:func:`create_gateway_app` on a :class:`Runtime` with the suite's
Valkey) runs under its production protocol (``gateway_protocol(gateway_core(app))``, no
Date or Server header, as ``gateway.server._config`` does) against real loopback
upstreams: a raw ASGI app under uvicorn, and raw asyncio servers where the framing
matters. Clients are httpx for ordinary requests and raw sockets where the bytes do
(pipelining, HTTP/1.0, exact framing). Where a behaviour is compared, the same app also
runs under plain httptools (the ASGI path for every request).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from patgate.gateway.app import create_gateway_app, gateway_core
from patgate.gateway.fastpath import GatewayApp, gateway_protocol
from patgate.gateway.proxy import ProxyApp
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from patgate.policies.engine import Policy, parse_policy
from tests.gateway.upstream._loopback import Handler, Server, serving
from tests.middleware._servers import free_port, serve
from tests.middleware._tokens import POLICY_TOML, Issued, add_user, issue, revoke

pytestmark = pytest.mark.anyio

#: the data-plane routes, plus DELETE on a thread and public raw-framing cases.
_POLICY_TOML = (
    POLICY_TOML
    + """
[[rules]]
name = "threads-delete"
methods = ["DELETE"]
path = "/threads/{id}"
scopes = ["threads:delete"]

[[rules]]
name = "raw"
methods = ["GET", "POST"]
path = "/raw/{case}"
public = true
"""
)

#: bound on every wait for a byte, so a hang fails the test instead of the suite.
_WAIT = 2.0


def _policy() -> Policy:
    return parse_policy(_POLICY_TOML, "fastpath-policy.toml")


# --- the upstreams ------------------------------------------------------------------------


@dataclass
class _Seen:
    method: str
    path: str
    headers: dict[str, str]
    port: int  # the upstream connection's client port: one per gateway→upstream connection


@dataclass
class _Upstream:
    """A raw ASGI upstream recording each request. ``/threads/204`` and ``/threads/304``
    answer with that status and no body; everything else 200 with a JSON echo."""

    seen: list[_Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append(_Seen(scope["method"], scope["path"], headers, scope["client"][1]))
        last = scope["path"].rsplit("/", 1)[-1]
        if last in ("204", "304"):
            fields = [(b"etag", b'"v1"'), (b"x-upstream", b"yes")]
            await send({"type": "http.response.start", "status": int(last), "headers": fields})
            await send({"type": "http.response.body", "body": b""})
            return
        payload = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body": body.decode(),
        }
        data = json.dumps(payload).encode()
        fields = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(data)),
            (b"x-upstream", b"yes"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": data})


async def _request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _target(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


# --- the gateway --------------------------------------------------------------------------


@dataclass
class _Gateway:
    port: int  # the fast-path listener
    runtime: Runtime[Settings]
    proxy: ProxyApp
    core: GatewayApp
    asgi_port: int = 0  # the same app under plain httptools (``compare=True``)

    async def token(self, scopes: tuple[str, ...] = ("threads:read",)) -> Issued:
        await add_user(self.runtime.store, "u1")
        return await issue(self.runtime.store, self.runtime.token_format, scopes=scopes)

    def client(self, port: int | None = None) -> httpx.AsyncClient:
        base = f"http://127.0.0.1:{port or self.port}"
        return httpx.AsyncClient(base_url=base, trust_env=False, timeout=_WAIT)


@contextlib.asynccontextmanager
async def _gateway(
    settings: Settings,
    upstream_port: int,
    *,
    compare: bool = False,
    ws: Any = "none",
    **changes: Any,
) -> AsyncIterator[_Gateway]:
    runtime = Runtime(
        settings.evolve(
            upstream_url=f"http://127.0.0.1:{upstream_port}", lastused_interval=60, **changes
        ),
        policy=_policy(),
    )
    proxy = ProxyApp(runtime.settings, metrics=runtime.metrics)
    app = create_gateway_app(runtime, proxy)
    core = gateway_core(app)
    assert core is not None
    async with contextlib.AsyncExitStack() as stack:
        # As gateway.server._config serves the proxied listener.
        port = await stack.enter_async_context(
            serve(
                app,
                http=gateway_protocol(core),
                ws=ws,
                date_header=False,
                server_header=False,
            )
        )
        gateway = _Gateway(port, runtime, proxy, core)
        if compare:
            gateway.asgi_port = await stack.enter_async_context(
                serve(app, ws=ws, date_header=False, server_header=False)
            )
        yield gateway


@contextlib.asynccontextmanager
async def _asgi_stack(
    settings: Settings, *, compare: bool = False, **changes: Any
) -> AsyncIterator[tuple[_Gateway, _Upstream]]:
    upstream = _Upstream()
    async with (
        serve(upstream, lifespan="off") as up_port,
        _gateway(settings, up_port, compare=compare, **changes) as gateway,
    ):
        yield gateway, upstream


@contextlib.asynccontextmanager
async def _raw_stack(
    settings: Settings, handler: Handler, **changes: Any
) -> AsyncIterator[tuple[_Gateway, Server]]:
    async with serving(handler) as server, _gateway(settings, server.port, **changes) as gateway:
        yield gateway, server


# --- raw HTTP/1.1 on the client side ------------------------------------------------------


_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class _Response:
    status: int
    head: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, in wire order
    body: bytes
    chunks: list[bytes]  # the chunks of a chunked body, as framed on the wire

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


def _request(
    method: str,
    target: str,
    *,
    token: Issued | None = None,
    headers: tuple[bytes, ...] = (),
    version: bytes = b"HTTP/1.1",
    body: bytes | None = None,
) -> bytes:
    lines = [method.encode() + b" " + target.encode() + b" " + version, b"Host: gw"]
    if token is not None:
        lines.append(b"Authorization: Bearer " + token.secret.encode())
    lines += headers
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def _read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> _Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _WAIT)
    lines = head[:-4].split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 "), head
    status = int(lines[0].split()[1])
    headers = [
        (n.strip().lower(), v.strip()) for n, _, v in (ln.partition(b":") for ln in lines[1:])
    ]
    names = [n for n, _ in headers]
    chunks: list[bytes] = []
    if head_request or status in (204, 304):
        body = b""
    elif b"transfer-encoding" in names:
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), _WAIT)
            size = int(size_line[:-2], 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), _WAIT)
            assert data.endswith(b"\r\n")
            if size == 0:
                break
            chunks.append(data[:-2])
        body = b"".join(chunks)
    elif b"content-length" in names:
        length = int(dict(headers)[b"content-length"])
        body = await asyncio.wait_for(reader.readexactly(length), _WAIT)
    else:
        body = await asyncio.wait_for(reader.read(), _WAIT)  # delimited by the close
    return _Response(status, head, headers, body, chunks)


@contextlib.asynccontextmanager
async def _connection(port: int) -> AsyncIterator[_Streams]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection with nothing more to say."""
    return await asyncio.wait_for(reader.read(), _WAIT) == b""


async def _one(port: int, request: bytes, *, head_request: bool = False) -> _Response:
    async with _connection(port) as (reader, writer):
        writer.write(request)
        return await _read_response(reader, head_request=head_request)


def _assert_well_formed(response: _Response) -> None:
    """One framing header at most, never both (RFC 9112 §6.3), no hop-by-hop leftovers."""
    lengths = response.values(b"content-length")
    codings = response.values(b"transfer-encoding")
    assert len(lengths) <= 1, response.head
    assert len(codings) <= 1, response.head
    assert not (lengths and codings), response.head
    assert response.head.count(b"\r\n\r\n") == 1
    assert response.head.count(b"\n") == response.head.count(b"\r\n")


def _spy(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[str]:
    """Count calls of ``owner.name`` (an instance's method taking the scope first, plain
    or coroutine): the request methods."""
    calls: list[str] = []
    original: Callable[..., Any] = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        async def spy(scope: Scope, *args: Any, **kwargs: Any) -> None:
            calls.append(scope["method"])
            await original(scope, *args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    else:

        def plain(scope: Scope, *args: Any, **kwargs: Any) -> Any:
            calls.append(scope["method"])
            return original(scope, *args, **kwargs)

        monkeypatch.setattr(owner, name, plain)
    return calls


# --- 1. a proxied GET ---------------------------------------------------------------------


async def test_get_with_a_token_reaches_the_upstream_with_identity_headers_only(
    settings: Settings,
) -> None:
    async with _asgi_stack(settings) as (gw, upstream):
        token = await gw.token()
        async with gw.client() as client:
            response = await client.get(
                "/threads/3?q=1",
                headers={
                    "Authorization": f"Bearer {token.secret}",
                    "X-Patgate-Token-Id": "forged",
                    "X-Patgate-Scopes": "*",
                    "X_Patgate_Owner_Id": "root",
                },
            )
        assert response.status_code == 200
        assert response.json() == {
            "method": "GET",
            "path": "/threads/3",
            "query": "q=1",
            "body": "",
        }
        assert response.headers["x-upstream"] == "yes"
        [seen] = upstream.seen
        assert seen.headers["x-patgate-token-id"] == token.token.id
        assert seen.headers["x-patgate-scopes"] == "threads:read"
        assert seen.headers["x-patgate-owner-id"] == "u1"
        assert "authorization" not in seen.headers
        assert "x_patgate_owner_id" not in seen.headers
        # The upstream's own host, not the client's (which goes in X-Forwarded-Host).
        assert f"http://{seen.headers['host']}" == gw.runtime.settings.upstream_url
        assert seen.headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"


async def test_keep_alive_requests_share_one_client_and_one_upstream_connection(
    settings: Settings,
) -> None:
    async with _asgi_stack(settings) as (gw, upstream):
        token = await gw.token()
        async with _connection(gw.port) as (reader, writer):
            responses = []
            for n in (1, 2):
                writer.write(_request("GET", f"/threads/{n}", token=token))
                responses.append(await _read_response(reader))
        assert [r.status for r in responses] == [200, 200]
        assert [json.loads(r.body)["path"] for r in responses] == ["/threads/1", "/threads/2"]
        for response in responses:
            _assert_well_formed(response)
            assert response.values(b"content-length") == [b"%d" % len(response.body)]
            assert response.values(b"connection") == []
        assert len({seen.port for seen in upstream.seen}) == 1


async def test_upstream_framing_in_any_case_gives_one_content_length(settings: Settings) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _request_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: Kept\r\n"
                b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello"
            )

    async with _raw_stack(settings, handler) as (gw, _):
        response = await _one(gw.port, _request("GET", "/raw/case"))
        _assert_well_formed(response)
        assert response.status == 200
        assert response.body == b"hello"
        assert response.values(b"content-length") == [b"5"]
        assert response.values(b"x-case") == [b"Kept"]
        # Hop-by-hop fields of the upstream hop stay there (RFC 9110 §7.6.1).
        assert response.values(b"connection") == []
        assert response.values(b"keep-alive") == []


# --- 2. which path serves what, and both answer alike -------------------------------------


async def test_bodiless_requests_take_the_fast_path_and_bodies_the_asgi_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _asgi_stack(settings) as (gw, upstream):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        forward_now = _spy(monkeypatch, gw.proxy, "forward_now")
        forward_direct = _spy(monkeypatch, gw.proxy, "forward_direct")
        forward = _spy(monkeypatch, gw.proxy, "forward")
        token = await gw.token(("threads:read", "threads:create", "threads:delete"))
        auth = {"Authorization": f"Bearer {token.secret}"}
        async with gw.client() as client:
            assert (await client.get("/threads/1", headers=auth)).status_code == 200
            assert (await client.head("/threads/1", headers=auth)).status_code == 200
            assert (await client.delete("/threads/1", headers=auth)).status_code == 200
            posted = await client.post("/threads", headers=auth, content=b"new thread")
        assert posted.status_code == 200
        assert posted.json()["body"] == "new thread"
        assert direct == ["GET", "HEAD", "DELETE"]
        # The first was a cache miss: its lookup awaited the store, then it was forwarded
        # in a task. The others were decided at once and forwarded from callbacks.
        assert forward_now == ["HEAD", "DELETE"]
        assert forward_direct == ["GET"]
        assert forward == ["POST"]
        assert [s.method for s in upstream.seen] == ["GET", "HEAD", "DELETE", "POST"]


async def test_a_get_with_content_length_zero_takes_the_asgi_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _asgi_stack(settings) as (gw, _):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        forward = _spy(monkeypatch, gw.proxy, "forward")
        token = await gw.token()
        response = await _one(gw.port, _request("GET", "/threads/1", token=token, body=b""))
        assert response.status == 200
        assert (direct, forward) == ([], ["GET"])


@pytest.mark.parametrize(
    ("method", "target", "auth"),
    [
        ("GET", "/threads/7?a=1&b=%20", "read"),
        ("HEAD", "/threads/7", "read"),
        ("DELETE", "/threads/7", "delete"),
        ("GET", "/threads/204", "read"),
        ("GET", "/threads/304", "read"),
        ("GET", "/public", None),
        ("GET", "/threads/7", None),  # 401
        ("DELETE", "/threads/7", "read"),  # 403, insufficient scope
        ("GET", "/unlisted", "read"),  # 403, no rule
        ("GET", "/threads/a%2Fb", "read"),  # 400, ambiguous path
    ],
)
async def test_fast_path_answers_exactly_as_the_asgi_path(
    settings: Settings, method: str, target: str, auth: str | None
) -> None:
    async with _asgi_stack(settings, compare=True) as (gw, upstream):
        token = None
        if auth is not None:
            token = await gw.token((f"threads:{auth}",))
        request = _request(method, target, token=token)
        head_request = method == "HEAD"
        fast = await _one(gw.port, request, head_request=head_request)
        slow = await _one(gw.asgi_port, request, head_request=head_request)
        _assert_well_formed(fast)
        # Status line, every header field (names, values, order) and body, byte for byte.
        assert fast.head == slow.head
        assert fast.body == slow.body
        assert len(upstream.seen) in (0, 2)
        if upstream.seen:
            first, second = upstream.seen
            assert (first.method, first.path) == (second.method, second.path)
            assert {k: v for k, v in first.headers.items() if k != "x-forwarded-port"} == {
                k: v for k, v in second.headers.items() if k != "x-forwarded-port"
            }


# --- 3. HEAD, 204, 304 --------------------------------------------------------------------


async def test_head_sends_no_body_and_keeps_the_upstreams_length(settings: Settings) -> None:
    async with _asgi_stack(settings) as (gw, _):
        token = await gw.token()
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("HEAD", "/threads/1", token=token))
            head = await _read_response(reader, head_request=True)
            # The next response follows the head directly: no body bytes in between.
            writer.write(_request("GET", "/threads/1", token=token))
            get = await _read_response(reader)
        assert head.status == get.status == 200
        # The length of the body the upstream would have sent to this HEAD.
        echo = {"method": "HEAD", "path": "/threads/1", "query": "", "body": ""}
        assert head.values(b"content-length") == [b"%d" % len(json.dumps(echo))]
        assert head.values(b"transfer-encoding") == []
        assert json.loads(get.body)["method"] == "GET"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_send_no_body_and_keep_the_connection(
    settings: Settings, status: int
) -> None:
    async with _asgi_stack(settings) as (gw, upstream):
        token = await gw.token()
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("GET", f"/threads/{status}", token=token))
            first = await _read_response(reader)
            writer.write(_request("GET", "/threads/1", token=token))
            second = await _read_response(reader)
        assert first.status == status
        assert first.values(b"etag") == [b'"v1"']
        assert first.values(b"transfer-encoding") == []
        assert first.values(b"content-length") == []
        assert first.values(b"connection") == []
        assert second.status == 200
        assert json.loads(second.body)["path"] == "/threads/1"
        assert len({seen.port for seen in upstream.seen}) == 1


# --- 4. chunked and streamed upstream bodies ----------------------------------------------


async def test_chunked_upstream_body_arriving_whole_goes_with_its_length(
    settings: Settings,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _request_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )

    async with _raw_stack(settings, handler) as (gw, _):
        response = await _one(gw.port, _request("GET", "/raw/whole"))
        _assert_well_formed(response)
        assert response.status == 200
        assert response.body == b"hello world"
        assert response.values(b"content-length") == [b"11"]
        assert response.values(b"transfer-encoding") == []


async def test_short_body_announced_by_its_length_goes_out_whole(settings: Settings) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b" world")

    async with _raw_stack(settings, handler) as (gw, _):
        response = await _one(gw.port, _request("GET", "/raw/late"))
        _assert_well_formed(response)
        assert response.body == b"hello world"
        assert response.values(b"content-length") == [b"11"]


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_large_body_arrives_intact(settings: Settings, length: bool) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, past every buffer's high water mark

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        if length:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(body), 100_000):
                part = body[start : start + 100_000]
                writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with _raw_stack(settings, handler) as (gw, _):
        response = await _one(gw.port, _request("GET", "/raw/large"))
        _assert_well_formed(response)
        assert response.status == 200
        assert response.body == body


#: a streamed body's parts; with a Content-Length, more than proxy.py relays whole (64 KiB).
_LONG_PARTS = [b"1" * 50_000, b"2" * 30_000, b"3" * 10]
_SHORT_PARTS = [b"first-part;", b"second-part;", b"third"]


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_slow_upstream_body_is_streamed_not_buffered(
    settings: Settings, length: bool
) -> None:
    parts = _LONG_PARTS if length else _SHORT_PARTS
    total = sum(len(p) for p in parts)
    seen_first = asyncio.Event()
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        if length:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        for n, part in enumerate(parts):
            writer.write(part if length else b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            if n == 0:
                # Only once the client holds the first part does the rest come: a gateway
                # that buffered the body would never deliver it (and time out here).
                await asyncio.wait_for(seen_first.wait(), _WAIT)
            else:
                await asyncio.sleep(0.05)
        if not length:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        finished.set()
        await reader.read()  # until the gateway closes its pooled connection

    async with (
        _raw_stack(settings, handler) as (gw, _),
        _connection(gw.port) as (reader, writer),
    ):
        writer.write(_request("GET", "/raw/stream"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _WAIT)
        received = b""
        while parts[0] not in received:
            received += await asyncio.wait_for(reader.read(65536), _WAIT)
        assert not finished.is_set()
        seen_first.set()
        names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:-2]]
        if length:
            assert names.count(b"content-length") == 1
            assert b"transfer-encoding" not in names
            rest = await asyncio.wait_for(reader.readexactly(total - len(received)), _WAIT)
            assert received + rest == b"".join(parts)
        else:
            assert names.count(b"transfer-encoding") == 1
            assert b"content-length" not in names
            tail = b""
            while not (received + tail).endswith(b"0\r\n\r\n"):
                tail += await asyncio.wait_for(reader.read(65536), _WAIT)
            # Each upstream chunk relayed as a chunk of its own, then the last-chunk.
            framed = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            assert received + tail == framed


async def test_an_unframed_stream_to_an_http10_client_is_ended_by_the_close(
    settings: Settings,
) -> None:
    """HTTP/1.0 has no chunked coding (RFC 9112 §6.1): a streamed body without a length
    goes to a 1.0 client with neither framing header, and the close ends it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        for part in _SHORT_PARTS:
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with (
        _raw_stack(settings, handler) as (gw, _),
        _connection(gw.port) as (reader, writer),
    ):
        writer.write(_request("GET", "/raw/stream", version=b"HTTP/1.0"))
        data = await asyncio.wait_for(reader.read(), _WAIT)  # until the gateway closes
    head, _, body = data.partition(b"\r\n\r\n")
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:]]
    assert b"transfer-encoding" not in names
    assert b"content-length" not in names
    assert b"connection" in names
    assert body == b"".join(_SHORT_PARTS)


# --- 5. refusals on the fast path ---------------------------------------------------------


async def _no_token(gw: _Gateway) -> Issued | None:
    return None


async def _wrong_scope(gw: _Gateway) -> Issued | None:
    return await gw.token(("threads:create",))


async def _revoked(gw: _Gateway) -> Issued | None:
    return await revoke(gw.runtime.store, await gw.token())


@pytest.mark.parametrize(
    ("make_token", "status", "challenge"),
    [
        (_no_token, 401, b'Bearer realm="patgate"'),
        (_wrong_scope, 403, b'Bearer realm="patgate", error="insufficient_scope"'),
        (_revoked, 401, b'Bearer realm="patgate", error="invalid_token"'),
    ],
    ids=["no-token", "wrong-scope", "revoked"],
)
async def test_refusals_on_the_fast_path_never_reach_the_upstream(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    make_token: Callable[[_Gateway], Awaitable[Issued | None]],
    status: int,
    challenge: bytes,
) -> None:
    async with _asgi_stack(settings, compare=True) as (gw, upstream):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        token = await make_token(gw)
        request = _request("GET", "/threads/1", token=token)
        fast = await _one(gw.port, request)
        slow = await _one(gw.asgi_port, request)
        assert direct == ["GET"]
        assert fast.status == status
        [value] = fast.values(b"www-authenticate")
        assert value.startswith(challenge)
        assert json.loads(fast.body)["error"]
        assert (fast.head, fast.body) == (slow.head, slow.body)
        assert upstream.seen == []


# --- 6. upstream failures -----------------------------------------------------------------


async def test_upstream_down_is_a_502(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _gateway(settings, free_port()) as gw:
        direct = _spy(monkeypatch, gw.core, "direct_now")
        response = await _one(gw.port, _request("GET", "/public"))
        assert direct == ["GET"]
        assert response.status == 502
        assert response.values(b"content-type") == [b"application/json"]
        assert json.loads(response.body)["error"] == "bad_gateway"
        registry = gw.runtime.metrics.registry
        errors = registry.get_sample_value(
            "patgate_upstream_requests_total", {"status_class": "error"}
        )
        assert errors == 1.0


async def test_slow_upstream_is_a_504(settings: Settings) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        await reader.read()  # never answers

    async with _raw_stack(settings, handler, upstream_timeout=0.2) as (gw, _):
        started = time.monotonic()
        response = await _one(gw.port, _request("GET", "/raw/slow"))
        assert time.monotonic() - started < 1.5
        assert response.status == 504
        assert json.loads(response.body)["error"] == "gateway_timeout"


#: upstream answers that cannot be relayed though nothing is out yet: a short body cut
#: short, and transfer codings we do not decode (Transfer-Encoding is hop-by-hop: relaying
#: a gzip-coded body without its field would hand the client bytes it cannot read).
_UNRELAYABLE = {
    "cut-short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
    "gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\npartial",
    "gzip-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n7\r\npartial\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("case", list(_UNRELAYABLE), ids=list(_UNRELAYABLE))
async def test_an_unrelayable_upstream_answer_is_a_502(settings: Settings, case: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = _target(await _request_head(reader))
        if target == b"/raw/bad":
            writer.write(_UNRELAYABLE[case])
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.transport.abort()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with (
        _raw_stack(settings, handler) as (gw, _),
        _connection(gw.port) as (reader, writer),
    ):
        # Relayed whole (proxy.py's short-body rule) or refused at its head: nothing was
        # out yet, so the client gets a complete 502 rather than a truncated or coded 200,
        # on a connection still usable.
        writer.write(_request("GET", "/raw/bad"))
        bad = await _read_response(reader)
        writer.write(_request("GET", "/raw/next"))
        after = await _read_response(reader)
    assert bad.status == 502
    assert json.loads(bad.body)["error"] == "bad_gateway"
    assert b"partial" not in bad.body
    assert (after.status, after.body) == (200, b"ok")


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_upstream_cutting_a_streamed_body_short_closes_the_client_connection(
    settings: Settings, length: bool
) -> None:
    sent = b"x" * 70_000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request_head(reader)
        if length:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + sent)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    async with (
        _raw_stack(settings, handler) as (gw, _),
        _connection(gw.port) as (reader, writer),
    ):
        writer.write(_request("GET", "/raw/cut"))
        received = await asyncio.wait_for(reader.read(-1), _WAIT)  # until the gateway closes
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        if length:
            assert b"content-length: 100000" in head.lower()
            assert body == sent  # 70,000 of 100,000 bytes, then the close
        else:
            assert b"transfer-encoding: chunked" in head.lower()
            assert body == b"7\r\npartial\r\n"  # no last-chunk: visibly incomplete


# --- 7. pipelining ------------------------------------------------------------------------


async def test_two_pipelined_gets_are_answered_in_order(settings: Settings) -> None:
    async with _asgi_stack(settings) as (gw, _):
        token = await gw.token()
        async with _connection(gw.port) as (reader, writer):
            writer.write(
                _request("GET", "/threads/1", token=token)
                + _request("GET", "/threads/2", token=token)
            )
            first = await _read_response(reader)
            second = await _read_response(reader)
            # And the connection still serves a third one.
            writer.write(_request("GET", "/threads/3", token=token))
            third = await _read_response(reader)
        paths = [json.loads(r.body)["path"] for r in (first, second, third)]
        assert paths == ["/threads/1", "/threads/2", "/threads/3"]


async def test_a_get_and_a_post_with_a_body_pipelined_are_answered_in_order(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _asgi_stack(settings) as (gw, _):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        token = await gw.token(("threads:read", "threads:create"))
        async with _connection(gw.port) as (reader, writer):
            writer.write(
                _request("GET", "/threads/1", token=token)
                + _request("POST", "/threads", token=token, body=b"payload")
                + _request("GET", "/threads/2", token=token)
            )
            responses = [await _read_response(reader) for _ in range(3)]
        echoed = [json.loads(r.body) for r in responses]
        assert [(e["method"], e["path"], e["body"]) for e in echoed] == [
            ("GET", "/threads/1", ""),
            ("POST", "/threads", "payload"),
            ("GET", "/threads/2", ""),
        ]
        assert direct == ["GET"]  # the others queued behind it: the ASGI path


async def test_a_get_pipelined_behind_a_slow_get_waits_its_turn(settings: Settings) -> None:
    arrivals: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            target = _target(await _request_head(reader))
            arrivals.append(target)
            if target == b"/raw/slow":
                await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(target), target))

    async with (
        _raw_stack(settings, handler) as (gw, _),
        _connection(gw.port) as (reader, writer),
    ):
        writer.write(_request("GET", "/raw/slow") + _request("GET", "/raw/fast"))
        first = await _read_response(reader)
        second = await _read_response(reader)
    assert (first.body, second.body) == (b"/raw/slow", b"/raw/fast")
    # One request at a time: the second reached the upstream after the first was answered.
    assert arrivals == [b"/raw/slow", b"/raw/fast"]


# --- 8. connection close ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "headers"),
    [(b"HTTP/1.0", ()), (b"HTTP/1.1", (b"Connection: close",))],
    ids=["http-1.0", "connection-close"],
)
async def test_a_request_without_keep_alive_gets_connection_close_and_a_close(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, version: bytes, headers: tuple[bytes, ...]
) -> None:
    async with _asgi_stack(settings) as (gw, _):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("GET", "/public", version=version, headers=headers))
            response = await _read_response(reader)
            assert await _closed(reader)
        assert direct == ["GET"]
        assert response.status == 200
        assert json.loads(response.body)["path"] == "/public"
        assert response.values(b"connection") == [b"close"]


# --- 9. a client that leaves --------------------------------------------------------------


async def test_client_disconnect_cancels_the_upstream_request(settings: Settings) -> None:
    arrived = asyncio.Event()
    upstream_closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            target = _target(await _request_head(reader))
            if target == b"/raw/think":
                arrived.set()
                await reader.read()  # thinks until the gateway hangs up
                upstream_closed.set()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    # The upstream timeout is long: only the cancellation can end the exchange in time.
    async with _raw_stack(settings, handler, upstream_timeout=30) as (gw, server):
        async with _connection(gw.port) as (_, writer):
            writer.write(_request("GET", "/raw/think"))
            await asyncio.wait_for(arrived.wait(), _WAIT)
        started = time.monotonic()
        await asyncio.wait_for(upstream_closed.wait(), 1.0)
        assert time.monotonic() - started < 1.0
        # The gateway goes on serving (on a new upstream connection).
        response = await _one(gw.port, _request("GET", "/raw/next"))
        assert (response.status, response.body) == (200, b"ok")
        assert server.connections == 2


@pytest.mark.parametrize("warm", [False, True], ids=["in-a-task", "from-callbacks"])
async def test_shutdown_answers_the_request_in_flight_then_closes(
    settings: Settings, warm: bool
) -> None:
    arrived = asyncio.Event()

    async def slow(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        arrived.set()
        await asyncio.sleep(0.2)
        writer.write(_OK)
        await writer.drain()
        return True

    async with serving(_keepalive(slow)) as server, contextlib.AsyncExitStack() as stack:
        gw = await stack.enter_async_context(_gateway(settings, server.port))
        if warm:  # the pool's idle connection: the next request is forwarded from callbacks
            assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(_request("GET", "/raw/x-in-flight"))
            await asyncio.wait_for(arrived.wait(), _WAIT)
            stopping = asyncio.create_task(stack.aclose())  # uvicorn's graceful shutdown
            response = await _read_response(reader)
            assert await _closed(reader)
            await asyncio.wait_for(stopping, _WAIT)
        finally:
            writer.close()
    assert (response.status, response.body) == (200, b"ok")
    assert response.values(b"connection") == [b"close"]  # keep-alive ended by the shutdown
    assert server.connections == 1


async def test_a_bug_on_the_fast_path_is_a_500_and_a_close(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    async with _asgi_stack(settings) as (gw, upstream):
        monkeypatch.setattr(gw.proxy, "forward_direct", broken)
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("GET", "/public"))
            response = await _read_response(reader)
            assert await _closed(reader)
        assert response.status == 500
        assert response.body == b"Internal Server Error"
        assert upstream.seen == []
        # And the listener goes on serving.
        monkeypatch.undo()
        assert (await _one(gw.port, _request("GET", "/public"))).status == 200
    assert "Exception serving a request on the fast path" in caplog.text


# --- 9b. exchanges run from callbacks (ProxyApp.forward_now) --------------------------------
#
# A request finds the upstream connection the one before it left idle: it goes out from
# the protocol's callback and its answer is written from the upstream connection's read
# callback, with no task. Each test warms the pool with one request first.

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _keepalive(
    special: Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]],
) -> Handler:
    """An upstream answering ``ok`` on keep-alive, except where ``special(target, …)``
    answers itself (it returns whether the connection goes on)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            target = _target(await _request_head(reader))
            if target.startswith(b"/raw/x"):
                if not await special(target, reader, writer):
                    return
                continue
            writer.write(_OK)
            await writer.drain()

    return handler


async def test_requests_on_a_warm_connection_are_forwarded_from_callbacks(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        raise AssertionError("not asked")

    async with _raw_stack(settings, _keepalive(never), upstream_pool_size=2) as (gw, server):
        forward_direct = _spy(monkeypatch, gw.proxy, "forward_direct")
        forward_now = _spy(monkeypatch, gw.proxy, "forward_now")
        async with _connection(gw.port) as (reader, writer):
            for _ in range(12):  # more than the pool's slots: each is given back
                writer.write(_request("GET", "/raw/warm"))
                response = await _read_response(reader)
                assert (response.status, response.body) == (200, b"ok")
        assert len(forward_now) == 12
        assert forward_direct == ["GET"]  # only the first, which opened the connection
        assert server.connections == 1


async def test_a_warm_connection_that_never_answers_is_a_504(settings: Settings) -> None:
    asked = 0

    async def silent(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        nonlocal asked
        asked += 1
        await reader.read()  # never answers
        return False

    async with _raw_stack(settings, _keepalive(silent), upstream_timeout=0.2) as (gw, _):
        assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
        started = time.monotonic()
        response = await _one(gw.port, _request("GET", "/raw/x-slow"))
        assert time.monotonic() - started < 1.5
        assert response.status == 504
        assert json.loads(response.body)["error"] == "gateway_timeout"
        # A slow upstream is not a closed connection: no resend (http1.retryable).
        assert asked == 1
        assert (await _one(gw.port, _request("GET", "/raw/after"))).status == 200
        registry = gw.runtime.metrics.registry
        assert (
            registry.get_sample_value("patgate_upstream_errors_total", {"kind": "timeout"}) == 1.0
        )


async def test_a_warm_connection_the_upstream_closed_is_resent_on_a_new_one(
    settings: Settings,
) -> None:
    async def hang_up(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if server.connections == 1:
            writer.transport.abort()  # as an upstream closing an idle connection would
            return False
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nresent")
        await writer.drain()
        return True

    async with _raw_stack(settings, _keepalive(hang_up)) as (gw, server):
        assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
        response = await _one(gw.port, _request("GET", "/raw/x-again"))
        assert (response.status, response.body) == (200, b"resent")
        assert server.connections == 2


async def test_a_post_is_not_resent_when_the_upstream_closed_without_answering(
    settings: Settings,
) -> None:
    # A POST without a body takes the fast path too, but it is not idempotent (RFC 9110
    # §9.2.2): the upstream may have acted on it, so it gets the 502 instead of a resend.
    asked = 0

    async def hang_up(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        nonlocal asked
        asked += 1
        writer.transport.abort()
        return False

    async with _raw_stack(settings, _keepalive(hang_up)) as (gw, _):
        assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
        response = await _one(gw.port, _request("POST", "/raw/x-post"))
        assert response.status == 502
        assert json.loads(response.body)["error"] == "bad_gateway"
        assert asked == 1


@pytest.mark.parametrize("shape", ["head-then-body", "chunked-in-parts", "large"])
async def test_an_answer_in_parts_is_relayed_intact_after_the_callbacks(
    settings: Settings, shape: str
) -> None:
    large = bytes(range(256)) * 1024  # 256 KiB: past the whole-body limit, streamed

    async def parts(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if shape == "head-then-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"later")
        elif shape == "chunked-in-parts":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"2\r\nde\r\n0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(large))
            writer.write(large)
        await writer.drain()
        return True

    expected = {"head-then-body": b"later", "chunked-in-parts": b"abcde", "large": large}[shape]
    async with _raw_stack(settings, _keepalive(parts)) as (gw, server):
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("GET", "/raw/warm"))
            assert (await _read_response(reader)).status == 200
            for _ in range(2):
                writer.write(_request("GET", "/raw/x-parts"))
                response = await _read_response(reader)
                assert (response.status, response.body) == (200, expected)
                _assert_well_formed(response)
        assert server.connections == 1  # and the connection was reused after each


async def test_a_client_leaving_a_callback_exchange_closes_the_upstream_connection(
    settings: Settings,
) -> None:
    arrived = asyncio.Event()
    upstream_closed = asyncio.Event()

    async def think(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        arrived.set()
        await reader.read()  # thinks until the gateway hangs up
        upstream_closed.set()
        return False

    # The upstream timeout is long: only the client's leaving can end the exchange.
    async with _raw_stack(
        settings, _keepalive(think), upstream_timeout=30, upstream_pool_size=1
    ) as (gw, server):
        assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
        async with _connection(gw.port) as (_, writer):
            writer.write(_request("GET", "/raw/x-think"))
            await asyncio.wait_for(arrived.wait(), _WAIT)
        await asyncio.wait_for(upstream_closed.wait(), 1.0)
        # Its pool slot was given back (there is one): the next request is served.
        response = await _one(gw.port, _request("GET", "/raw/next"))
        assert (response.status, response.body) == (200, b"ok")
        assert server.connections == 2


async def test_a_bug_in_a_callback_exchange_is_a_500_and_a_close(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from patgate.gateway import proxy as proxy_module

    def broken(self: object, conn: object) -> None:
        raise RuntimeError("a bug")

    async def never(
        target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        raise AssertionError("not asked")

    async with _raw_stack(settings, _keepalive(never), upstream_pool_size=1) as (gw, _):
        assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
        monkeypatch.setattr(proxy_module._Direct, "_act", broken)
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("GET", "/raw/warm"))
            response = await _read_response(reader)
            assert await _closed(reader)
        assert response.status == 500
        monkeypatch.undo()
        # The slot came back: the one-connection pool serves the next request.
        assert (await _one(gw.port, _request("GET", "/raw/warm"))).status == 200
    assert "Exception forwarding GET from callbacks" in caplog.text


# --- 10. upgrades and limits --------------------------------------------------------------


async def test_websocket_upgrade_is_refused_as_on_the_asgi_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _asgi_stack(settings, compare=True, ws="websockets-sansio") as (gw, upstream):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        token = await gw.token()
        request = _request(
            "GET",
            "/threads/1",
            token=token,
            headers=(
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 13",
            ),
        )
        fast = await _one(gw.port, request)
        slow = await _one(gw.asgi_port, request)
        assert fast.status == slow.status == 403
        assert direct == []
        assert upstream.seen == []


async def test_request_head_over_the_limits_is_431_before_the_fast_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _asgi_stack(settings) as (gw, upstream):
        direct = _spy(monkeypatch, gw.core, "direct_now")
        token = await gw.token()
        fields = tuple(b"X-N-%d: v" % n for n in range(120))
        async with _connection(gw.port) as (reader, writer):
            writer.write(_request("GET", "/threads/1", token=token, headers=fields))
            response = await _read_response(reader)
            assert await _closed(reader)
        assert response.status == 431
        assert json.loads(response.body)["error"] == "header_too_large"
        assert direct == []
        assert upstream.seen == []


async def test_request_head_over_the_limits_behind_a_fast_request_waits_its_turn(
    settings: Settings,
) -> None:
    async with _asgi_stack(settings) as (gw, _):
        token = await gw.token()
        fields = tuple(b"X-N-%d: v" % n for n in range(120))
        async with _connection(gw.port) as (reader, writer):
            writer.write(
                _request("GET", "/threads/1", token=token)
                + _request("GET", "/threads/2", token=token, headers=fields)
            )
            first = await _read_response(reader)
            second = await _read_response(reader)
            assert await _closed(reader)
        assert first.status == 200
        assert json.loads(first.body)["path"] == "/threads/1"
        assert second.status == 431


# --- 11. metrics --------------------------------------------------------------------------


async def test_fast_path_records_upstream_and_decision_metrics(settings: Settings) -> None:
    async with _asgi_stack(settings) as (gw, _):
        token = await gw.token()
        registry = gw.runtime.metrics.registry

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        async with gw.client() as client:
            auth = {"Authorization": f"Bearer {token.secret}"}
            for _ in range(3):
                assert (await client.get("/threads/1", headers=auth)).status_code == 200
            assert (await client.get("/threads/1")).status_code == 401
        assert sample("patgate_upstream_requests_total", status_class="2xx") == 3.0
        assert sample("patgate_decisions_total", outcome="allow", reason="ok") == 3.0
        missing = sample("patgate_decisions_total", outcome="deny", reason="missing_credentials")
        assert missing == 1.0
        assert sample("patgate_upstream_seconds_count") == 3.0
