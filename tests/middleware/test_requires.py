"""``patgate.requires`` and ``refusal_handler`` (issue 10): RFC 6750 challenges from
``@requires`` refusals, in a real Starlette app under uvicorn with a real Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires as starlette_requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from patgate import PatgateMiddleware, Settings, requires
from patgate.middleware.requires import AuthRefused, refusal_handler
from patgate.middleware.runtime import Runtime
from patgate.policies.engine import parse_policy
from tests.middleware._servers import serve
from tests.middleware._tokens import add_user, issue

POLICY = """
version = 1
default = "authenticated"

[[rules]]
name = "public"
methods = ["GET"]
path = "/public"
public = true
"""

CHALLENGE = 'Bearer realm="acme", error="insufficient_scope", scope="threads:read"'
BODY = {"error": "insufficient_scope", "detail": "the token lacks the scope this route requires"}


@requires("threads:read")
async def read(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.auth.identity.owner_id})


@requires(["threads:create", "threads:read"])
def write(request: Request) -> JSONResponse:  # sync endpoints too
    return JSONResponse({"ok": True})


@requires("threads:read")
async def public(request: Request) -> JSONResponse:
    return JSONResponse({"reached": True})


@requires("threads:read", status_code=404)
async def hidden(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@starlette_requires("threads:read")
async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@requires("threads:read")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def _app(**options: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/read", read),
            Route("/write", write),
            Route("/public", public),
            Route("/hidden", hidden),
            Route("/plain", plain),
            WebSocketRoute("/ws", ws),
        ],
        **options,
    )


@dataclass
class World:
    http: httpx.AsyncClient
    port: int
    reader: str  # threads:read
    wildcard: str  # threads:*
    writer: str  # threads:create, so not threads:read


@pytest.fixture
async def world(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    handlers = {403: refusal_handler, AuthRefused: refusal_handler}
    app = _app(exception_handlers=handlers) if request.param else _app()
    runtime: Runtime[Settings] = Runtime(
        settings.evolve(realm="acme"), policy=parse_policy(POLICY, "test")
    )
    await add_user(runtime.store)
    reader = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
    wildcard = await issue(runtime.store, runtime.token_format, scopes=("threads:*",))
    writer = await issue(runtime.store, runtime.token_format, scopes=("threads:create",))
    async with (
        serve(PatgateMiddleware(app, runtime=runtime), ws="websockets-sansio") as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        yield World(http, port, reader.secret, wildcard.secret, writer.secret)


def _auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.mark.anyio
@pytest.mark.parametrize("world", [False], indirect=True)
async def test_requires_refuses_with_the_rfc6750_challenge(world: World) -> None:
    ok = await world.http.get("/read", headers=_auth(world.reader))
    assert ok.status_code == 200
    assert ok.json() == {"owner": "u1"}
    # Wildcard-aware: threads:* holds threads:create and threads:read.
    assert (await world.http.get("/write", headers=_auth(world.wildcard))).status_code == 200

    lacking = await world.http.get("/write", headers=_auth(world.reader))
    assert lacking.status_code == 403
    assert lacking.headers["www-authenticate"] == (
        'Bearer realm="acme", error="insufficient_scope", scope="threads:create threads:read"'
    )
    assert lacking.json() == BODY
    assert lacking.headers["content-type"] == "application/json"

    # A public route, no token: no identity, so the 401 challenge (RFC 6750 §3.1).
    anonymous = await world.http.get("/public")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="acme"'

    # status_code= other than 403 behaves as Starlette's.
    assert (await world.http.get("/hidden", headers=_auth(world.reader))).status_code == 200
    assert (await world.http.get("/hidden", headers=_auth(world.wildcard))).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("world", [False], indirect=True)
async def test_starlettes_requires_still_works(world: World) -> None:
    assert (await world.http.get("/plain", headers=_auth(world.wildcard))).status_code == 200
    plain = await world.http.get("/plain", headers=_auth(world.writer))
    assert plain.status_code == 403
    assert "www-authenticate" not in plain.headers  # what the handler below is for


@pytest.mark.anyio
@pytest.mark.parametrize("world", [True], indirect=True)
async def test_the_handler_gives_starlettes_refusals_the_challenge(world: World) -> None:
    refused = await world.http.get("/plain", headers=_auth(world.writer))
    assert refused.status_code == 403
    # Starlette's HTTPException does not say which scope was missing.
    assert refused.headers["www-authenticate"] == 'Bearer realm="acme", error="insufficient_scope"'
    assert refused.json() == BODY
    assert (await world.http.get("/plain", headers=_auth(world.reader))).status_code == 200
    # patgate.requires is unaffected by the handler.
    lacking = await world.http.get("/read", headers=_auth(world.writer))
    assert lacking.status_code == 403
    assert lacking.headers["www-authenticate"] == CHALLENGE


@pytest.mark.anyio
@pytest.mark.parametrize("world", [False], indirect=True)
async def test_websocket_refusal_is_the_challenge(world: World) -> None:
    url = f"ws://127.0.0.1:{world.port}/ws"
    async with ws_connect(url, additional_headers=_auth(world.reader)) as conn:
        assert await conn.recv() == "hello"
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(url, additional_headers=_auth(world.writer)):
            pass
    assert info.value.response.status_code == 403
    assert info.value.response.headers["www-authenticate"] == CHALLENGE
    assert info.value.response.body is not None
