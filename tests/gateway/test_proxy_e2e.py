"""ProxyApp end to end on loopback: a real uvicorn upstream, ProxyApp (with its production
aiohttp client) under uvicorn, and httpx as the client. Every server binds 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from patgate.gateway.proxy import ProxyApp
from patgate.gateway.settings import Settings
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import Identity
from patgate.middleware.user import PatgateCredentials
from patgate.policies.scopes import ScopeSet
from tests.middleware._servers import serve

IDENTITY = Identity(
    token_id="tok_e2e",
    token_name="e2e",
    token_type="personal",
    owner_kind="user",
    owner_id="usr_1",
    org_id="org_1",
    scopes=frozenset({"items:read", "items:write"}),
    workspaces=None,
    expires_at=None,
)
MB = 1024 * 1024
_PATTERN = bytes(range(256)) * 256  # 64 KiB, not compressible to the same bytes by accident


class _UpstreamState:
    def __init__(self) -> None:
        self.stream_disconnected = asyncio.Event()
        self.upload_disconnected = asyncio.Event()


def _upstream_app(state: _UpstreamState) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/echo"):
            digest, size, messages = hashlib.sha256(), 0, 0
            while True:
                message = await receive()
                messages += 1
                if message["type"] == "http.disconnect":
                    state.upload_disconnected.set()
                    return
                body = message.get("body", b"")
                digest.update(body)
                size += len(body)
                if not message.get("more_body"):
                    break
            payload = {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "size": size,
                "sha256": digest.hexdigest(),
                "messages": messages,
                "peer_port": scope["client"][1],
            }
            await _json(send, 200, payload)
        elif path == "/download":
            total = int(dict(_query(scope))["mb"]) * MB
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for offset in range(0, total, len(_PATTERN)):
                chunk = _PATTERN[: min(len(_PATTERN), total - offset)]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/slow":
            # Holds the response until the caller gives up (bounded at 5 s).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receive(), 5)
                await asyncio.wait_for(receive(), 5)
        elif path == "/events":
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await receive()  # the (empty) request body
            receiving = asyncio.ensure_future(receive())  # resolves on http.disconnect
            for i in range(500):  # bounded: 500 ticks of 10 ms
                if receiving.done():
                    break
                await send(
                    {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
                )
                await asyncio.sleep(0.01)
            message = await asyncio.wait_for(receiving, 5)
            if message["type"] == "http.disconnect":
                state.stream_disconnected.set()
            else:
                await send({"type": "http.response.body", "body": b""})
        else:
            await _json(send, 404, {"error": "not_found"})

    return app


def _query(scope: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = scope["query_string"].decode().split("&")
    return [tuple(p.split("=", 1)) for p in pairs if "=" in p]


async def _json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _StubAuth:
    """Stands in for PatgateMiddleware: sets the identity the proxy turns into headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers", []))
        identity = IDENTITY if headers.get(b"x-test-auth") == b"yes" else None
        scope["auth"] = PatgateCredentials(ScopeSet.from_scopes(frozenset()), identity)
        await self.app(scope, receive, send)


def _serve(app: Any) -> contextlib.AbstractAsyncContextManager[int]:
    # An upstream (or the proxy) must not add Server/Date headers of its own: the tests
    # compare exactly which headers crossed the proxy.
    return serve(app, lifespan="off", server_header=False, date_header=False)


def _errors(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("patgate_upstream_errors_total", {"kind": kind})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _stack(
    **settings: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, _UpstreamState, Metrics]]:
    """Upstream + stub auth + ProxyApp, and an httpx client pointed at the proxy."""
    state = _UpstreamState()
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        if "upstream_url" not in settings:
            up_port = await stack.enter_async_context(_serve(_upstream_app(state)))
            settings["upstream_url"] = f"http://127.0.0.1:{up_port}"
        proxy = ProxyApp(Settings(**settings), metrics=metrics)
        stack.push_async_callback(proxy.aclose)
        port = await stack.enter_async_context(_serve(_StubAuth(proxy)))
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20, trust_env=False)
        )
        yield client, state, metrics


@pytest.mark.parametrize("trusted", [(), ("127.0.0.1",)])
@pytest.mark.anyio
async def test_request_reaches_upstream_with_patgate_headers_only(trusted: tuple[str, ...]) -> None:
    async with _stack(trusted_proxies=trusted) as (client, _, metrics):
        response = await client.post(
            "/echo/a%2Fb/%7Ex;v=1?z=1&a=%20&a=2",
            content=b"hello",
            headers=[
                ("Authorization", "Bearer pat_secret_value"),
                ("X-Patgate-Owner-Id", "usr_admin"),
                ("X_Patgate_Scopes", "*"),
                ("x-patgate-org-id", "org_evil"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
                ("X-Test-Auth", "yes"),
                ("X-Request-Id", "req-1"),
            ],
        )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/echo/a%2Fb/%7Ex;v=1"
    assert seen["query"] == "z=1&a=%20&a=2"
    assert (seen["size"], seen["sha256"]) == (5, hashlib.sha256(b"hello").hexdigest())
    headers: list[list[str]] = seen["headers"]
    names = [k for k, _ in headers]
    assert "authorization" not in names
    assert "pat_secret_value" not in json.dumps(headers)
    patgate = [(k, v) for k, v in headers if k.replace("_", "-").startswith("x-patgate")]
    assert patgate == [
        ("x-patgate-token-id", "tok_e2e"),
        ("x-patgate-token-type", "personal"),
        ("x-patgate-owner-type", "user"),
        ("x-patgate-owner-id", "usr_1"),
        ("x-patgate-org-id", "org_1"),
        ("x-patgate-scopes", "items:read items:write"),
    ]
    as_dict = dict((k, v) for k, v in headers)
    assert as_dict["x-request-id"] == "req-1"
    assert as_dict["host"].startswith("127.0.0.1:")  # the upstream's own host
    if trusted:
        assert as_dict["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
        assert as_dict["x-forwarded-proto"] == "https"
    else:
        assert as_dict["x-forwarded-for"] == "127.0.0.1"
        assert as_dict["x-forwarded-proto"] == "http"
    assert (
        metrics.registry.get_sample_value(
            "patgate_upstream_requests_total", {"status_class": "2xx"}
        )
        == 1
    )


@pytest.mark.anyio
async def test_public_route_strips_client_identity_headers() -> None:
    async with _stack() as (client, _, _):
        response = await client.get("/echo", headers={"X-Patgate-Token-Id": "forged"})
    names = [k for k, _ in response.json()["headers"]]
    assert not [n for n in names if "patgate" in n]


async def _upload(total: int) -> AsyncIterator[bytes]:
    for offset in range(0, total, len(_PATTERN)):
        yield _PATTERN[: min(len(_PATTERN), total - offset)]
        await asyncio.sleep(0)


def _expected_sha(total: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, total, len(_PATTERN)):
        digest.update(_PATTERN[: min(len(_PATTERN), total - offset)])
    return digest.hexdigest()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
@pytest.mark.anyio
async def test_large_streaming_upload_arrives_intact(framing: str) -> None:
    total = 5 * MB + 123
    headers = {"content-length": str(total)} if framing == "content-length" else {}
    async with _stack() as (client, _, _):
        response = await client.put("/echo/upload", content=_upload(total), headers=headers)
    seen = response.json()
    assert (seen["size"], seen["sha256"]) == (total, _expected_sha(total))
    # Streamed through, not buffered into one message.
    assert seen["messages"] > 10


@pytest.mark.anyio
async def test_large_streaming_download_arrives_intact() -> None:
    async with _stack() as (client, _, _), client.stream("GET", "/download?mb=5") as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        digest, size, chunks = hashlib.sha256(), 0, 0
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
    assert (size, digest.hexdigest()) == (5 * MB, _expected_sha(5 * MB))
    assert chunks > 1


@pytest.mark.anyio
async def test_client_disconnect_mid_stream_closes_upstream() -> None:
    async with _stack() as (client, state, _):
        async with client.stream("GET", "/events") as response:
            assert response.headers["content-type"] == "text/event-stream"
            received = b""
            async for chunk in response.aiter_raw():
                received += chunk
                if received.count(b"\n\n") >= 3:
                    break
        # The proxy noticed the client went away and closed its upstream connection.
        await asyncio.wait_for(state.stream_disconnected.wait(), 3)
    assert received.startswith(b"data: 0\n\n")


@pytest.mark.anyio
async def test_closed_upstream_port_is_502() -> None:
    async with _stack(upstream_url=f"http://127.0.0.1:{_free_port()}") as (client, _, metrics):
        response = await client.get("/anything")
    assert response.status_code == 502
    assert response.json() == {
        "error": "bad_gateway",
        "detail": "could not connect to the upstream",
    }
    assert _errors(metrics, "connect") == 1


@pytest.mark.anyio
async def test_slow_upstream_is_504() -> None:
    async with _stack(upstream_timeout=0.2) as (client, _, metrics):
        started = asyncio.get_running_loop().time()
        response = await client.get("/slow")
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 504
    assert response.json()["error"] == "gateway_timeout"
    assert elapsed < 3
    assert _errors(metrics, "timeout") == 1


@pytest.mark.anyio
async def test_upstream_connection_is_kept_alive_and_reused() -> None:
    async with _stack() as (client, _, _):
        ports = {(await client.get(f"/echo/{i}")).json()["peer_port"] for i in range(20)}
        burst = await asyncio.gather(*(client.get(f"/echo/b{i}") for i in range(40)))
    # Sequential requests share one pooled upstream connection.
    assert len(ports) == 1
    assert [r.json()["raw_path"] for r in burst] == [f"/echo/b{i}" for i in range(40)]


@pytest.mark.anyio
async def test_client_disconnect_mid_upload_aborts_upstream_request() -> None:
    async with _stack() as (client, state, metrics):
        port = client.base_url.port
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /echo/partial HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n"
            + b"x" * 70000
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(state.upload_disconnected.wait(), 3)
        # The gateway still serves the next request, and counted no upstream failure.
        assert (await client.get("/echo/next")).status_code == 200
    for kind in ("connect", "timeout", "protocol"):
        assert _errors(metrics, kind) == 0


@pytest.mark.anyio
async def test_garbage_from_upstream_is_502() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _stack(upstream_url=f"http://127.0.0.1:{port}") as (client, _, metrics):
            response = await client.get("/x")
    finally:
        server.close()
        await server.wait_closed()
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"
    assert b"NOT HTTP" not in response.content
    assert _errors(metrics, "protocol") == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.anyio
async def test_upstream_client_adds_no_headers_of_its_own(method: str) -> None:
    async with _stack(trusted_proxies=()) as (client, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
        writer.write(f"{method} /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    headers = dict(json.loads(body)["headers"])
    assert headers.pop("host").startswith("127.0.0.1:")
    # No User-Agent, Accept, Accept-Encoding or Content-Type invented; an empty POST gets
    # the explicit zero length RFC 9110 §8.6 asks a client to send.
    expected = {
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "gw",
    }
    if method == "POST":
        expected["content-length"] = "0"
    assert headers == expected
