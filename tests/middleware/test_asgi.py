"""PatgateMiddleware in a Starlette app with ``@requires``, served by real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from patgate.gateway.settings import Settings
from patgate.middleware.asgi import LifespanHooks, PatgateMiddleware
from patgate.middleware.keys import Keyspace
from patgate.middleware.records import Identity
from patgate.middleware.runtime import Runtime, redis_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

from ._servers import serve
from ._tokens import POLICY_TOML, add_user, issue, make_policy, revoke

pytestmark = pytest.mark.anyio

_EXTRA_RULES = """
[[rules]]
name = "ws"
methods = ["GET"]
path = "/ws"
scopes = ["threads:subscribe"]
"""


@requires("threads:read")
async def read_thread(request: Request) -> JSONResponse:
    identity: Identity = request.auth.identity
    return JSONResponse(
        {
            "thread": request.path_params["id"],
            "user": request.user.identity,
            "display": request.user.display_name,
            "owner": identity.owner_id,
            "scopes": list(request.auth.scopes),
        }
    )


@requires(["threads:create"])
async def create_thread(request: Request) -> JSONResponse:
    return JSONResponse({"created": True}, status_code=201)


@requires("profile:read")  # not in the policy: the app adds its own check
async def me(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.identity})


async def public(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "authenticated": request.user.is_authenticated,
            "scopes": list(request.auth.scopes),
            "identity": request.auth.identity,
        }
    )


@requires("threads:subscribe")
async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello " + websocket.user.identity)
    await websocket.close()


def _app(**middleware_options: Any) -> Starlette:
    state: dict[str, Any] = {"events": []}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["events"].append("app-startup")
        yield
        state["events"].append("app-shutdown")

    app = Starlette(
        routes=[
            Route("/threads/{id}", read_thread),
            Route("/threads", create_thread, methods=["POST"]),
            Route("/me", me),
            Route("/public", public),
            WebSocketRoute("/ws", ws_endpoint),
        ],
        middleware=[Middleware(PatgateMiddleware, **middleware_options)],
        lifespan=lifespan,
    )
    app.state.events = state["events"]
    return app


@pytest.fixture
async def runtime(settings: Settings) -> Runtime:
    from patgate.policies.engine import parse_policy

    policy = parse_policy(POLICY_TOML + _EXTRA_RULES, "asgi-test.toml")
    return Runtime(settings.evolve(lastused_interval=60), policy=policy)


@contextlib.asynccontextmanager
async def _client(app: Any, **kw: Any) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    async with (
        serve(app, **kw) as port,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False
        ) as client,
    ):
        yield client, port


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_requires_works_with_the_tokens_scopes(runtime: Runtime) -> None:
    await add_user(runtime.store, "u1")
    token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
    app = _app(runtime=runtime)
    async with _client(app) as (client, _):
        assert runtime.subscriber.connected  # started by the wrapped lifespan
        response = await client.get("/threads/42", headers=_auth(token.secret))
        assert response.status_code == 200
        assert response.json() == {
            "thread": "42",
            "user": token.token.id,
            "display": "u1",
            "owner": "u1",
            "scopes": ["threads:read"],
        }
        # The policy lets GET /me through for any token; the app's own @requires says 403.
        response = await client.get("/me", headers=_auth(token.secret))
        assert response.status_code == 403
        assert app.state.events == ["app-startup"]
    assert app.state.events == ["app-startup", "app-shutdown"]
    # The shutdown flushed last-used (interval is 60 s, so only aclose() wrote it).
    reader = Runtime(runtime.settings)
    try:
        stored = await reader.store.get_token(token.token.id)
        assert stored is not None
        assert stored.last_used is not None
        assert (stored.last_used.method, stored.last_used.path) in {
            ("GET", "/threads/42"),
            ("GET", "/me"),
        }
        assert stored.last_used.ip == "127.0.0.1"
        assert stored.last_used.user_agent is not None
        assert stored.last_used.user_agent.startswith("python-httpx/")
    finally:
        await reader.aclose()


async def test_wildcard_scope_satisfies_requires(runtime: Runtime) -> None:
    await add_user(runtime.store, "u1")
    token = await issue(runtime.store, runtime.token_format, scopes=("threads:*", "profile:*"))
    async with _client(_app(runtime=runtime)) as (client, _):
        assert (await client.get("/threads/1", headers=_auth(token.secret))).status_code == 200
        assert (await client.get("/me", headers=_auth(token.secret))).status_code == 200
        response = await client.post("/threads", headers=_auth(token.secret))
        assert response.status_code == 201


@pytest.mark.parametrize(
    ("headers", "status", "challenge"),
    [
        ({}, 401, 'Bearer realm="patgate"'),
        ({"Authorization": "Basic dTpw"}, 401, 'Bearer realm="patgate"'),
        (
            {"Authorization": "Bearer pat_nope"},
            401,
            'Bearer realm="patgate", error="invalid_token", '
            'error_description="invalid or unknown token"',
        ),
    ],
)
async def test_refusals_over_http(
    runtime: Runtime, headers: dict[str, str], status: int, challenge: str
) -> None:
    async with _client(_app(runtime=runtime)) as (client, _):
        response = await client.get("/threads/1", headers=headers)
    assert response.status_code == status
    assert response.headers["www-authenticate"] == challenge
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] in {"missing_credentials", "invalid_token"}


async def test_insufficient_scope_over_http(runtime: Runtime) -> None:
    await add_user(runtime.store, "u1")
    token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
    async with _client(_app(runtime=runtime)) as (client, _):
        response = await client.post("/threads", headers=_auth(token.secret))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer realm="patgate", error="insufficient_scope", '
        'error_description="the token lacks a scope this route requires", '
        'scope="threads:create"'
    )
    assert response.json() == {
        "error": "insufficient_scope",
        "detail": "the token lacks a scope this route requires",
    }


async def test_public_route_is_anonymous(runtime: Runtime) -> None:
    async with _client(_app(runtime=runtime)) as (client, _):
        response = await client.get("/public")
    assert response.status_code == 200
    assert response.json() == {"authenticated": False, "scopes": [], "identity": None}


async def test_revocation_reaches_the_served_app(runtime: Runtime) -> None:
    await add_user(runtime.store, "u1")
    token = await issue(runtime.store, runtime.token_format)
    async with _client(_app(runtime=runtime)) as (client, _):
        assert (await client.get("/threads/1", headers=_auth(token.secret))).status_code == 200
        assert len(runtime.cache) == 1
        await revoke(runtime.store, token)
        deadline = time.monotonic() + 1.0
        while True:
            response = await client.get("/threads/1", headers=_auth(token.secret))
            if response.status_code == 401 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        assert response.status_code == 401
        assert "token revoked" in response.headers["www-authenticate"]


async def test_websocket_handshake_is_authenticated(runtime: Runtime) -> None:
    await add_user(runtime.store, "u1")
    good = await issue(runtime.store, runtime.token_format, scopes=("threads:subscribe",))
    weak = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
    async with serve(_app(runtime=runtime), ws="websockets-sansio") as port:
        url = f"ws://127.0.0.1:{port}/ws"
        async with ws_connect(url, additional_headers=_auth(good.secret)) as ws:
            assert await ws.recv() == "hello " + good.token.id
        for headers in ({}, _auth(weak.secret)):
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == 403


async def test_convenience_constructor_from_redis_url(settings: Settings, valkey_url: str) -> None:
    """``Middleware(PatgateMiddleware, redis_url=..., policy=...)`` builds its own runtime."""
    client = redis_client(valkey_url)
    store = TokenStore(client, Keyspace(settings.namespace))
    try:
        await add_user(store, "u1")
        token = await issue(store, TokenFormat(), scopes=("threads:read",))
        app = _app(redis_url=valkey_url, namespace=settings.namespace, policy=make_policy())
        async with _client(app) as (http, _):
            assert (await http.get("/threads/1", headers=_auth(token.secret))).status_code == 200
            assert (await http.get("/threads/1")).status_code == 401
    finally:
        await client.aclose()


async def test_from_settings_and_a_policy_file(settings: Settings, tmp_path: Any) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    seen: dict[str, Any] = {}

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        # A bare ASGI app without lifespan support.
        if scope["type"] != "http":
            raise RuntimeError("lifespan not supported")
        seen["user"] = scope["user"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = PatgateMiddleware.from_settings(bare, settings, policy=path)
    assert middleware.runtime is not None
    await add_user(middleware.runtime.store, "u1")
    token = await issue(middleware.runtime.store, middleware.runtime.token_format)
    async with _client(middleware) as (client, _):
        assert middleware.runtime.subscriber.connected  # LifespanHooks ran it alone
        assert (await client.get("/threads/5", headers=_auth(token.secret))).status_code == 204
        assert seen["user"].identity == token.token.id
        assert (await client.get("/public")).status_code == 204
        assert (await client.get("/nope", headers=_auth(token.secret))).status_code == 403


async def test_lifespan_startup_failure_is_reported() -> None:
    events: list[str] = []

    async def failing_start() -> None:
        raise RuntimeError("store down")

    async def stop() -> None:
        events.append("stop")

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        return None  # returns without reading the lifespan messages

    hooks = LifespanHooks(inner, failing_start, stop)
    messages: list[Message] = [{"type": "lifespan.startup"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await hooks({"type": "lifespan"}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "store down" in sent[0]["message"]
    assert events == []


def test_the_middleware_is_an_asgi3_coroutine_function() -> None:
    """``__call__`` is a plain function returning the app's coroutine (one frame less per
    request, issue 16), marked so that servers and frameworks still see an async ASGI 3
    app: uvicorn picks its interface by asking."""
    import inspect

    import uvicorn
    from starlette._utils import is_async_callable

    middleware = PatgateMiddleware(Starlette(), redis_url="redis://127.0.0.1:1/0")
    assert asyncio.iscoroutinefunction(middleware.__call__)
    if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+
        assert inspect.iscoroutinefunction(middleware.__call__)
    assert is_async_callable(middleware)
    config = uvicorn.Config(middleware, lifespan="off")
    config.load()
    assert config.interface == "asgi3"


async def test_public_route_gets_anonymous_credentials_without_an_identity(
    runtime: Runtime,
) -> None:
    """Only scope["auth"] and scope["user"] are set (issue 16): the identity and the
    renderer ride on the credentials, None/anonymous on a public route."""
    seen: dict[str, Any] = {}

    async def endpoint(request: Request) -> JSONResponse:
        seen["keys"] = {
            k for k in request.scope if k in ("auth", "user") or k.startswith("patgate")
        }
        seen["identity"] = request.auth.identity
        seen["scopes"] = list(request.auth.scopes)
        seen["authenticated"] = request.user.is_authenticated
        return JSONResponse({})

    app = PatgateMiddleware(Starlette(routes=[Route("/public", endpoint)]), runtime.authenticator)
    async with serve(app) as port, httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/public")).status_code == 200
    assert seen == {"keys": {"auth", "user"}, "identity": None, "scopes": [],
                    "authenticated": False}  # fmt: skip
