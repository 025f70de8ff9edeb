"""PatgateMiddleware in a Starlette app: CORS preflight under ``preflight = "allow"`` and
TRACE refused with 405 (issue 9), served by real uvicorn."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.runtime import Runtime
from patgate.policies.engine import parse_policy

from ._servers import serve

pytestmark = pytest.mark.anyio

_POLICY = """
version = 1
default = "deny"
{preflight}

[[rules]]
name = "api"
methods = "*"
path = "/api/**"
scopes = ["api:read"]
"""
_PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}


async def _thing(request: Request) -> JSONResponse:
    return JSONResponse({"authenticated": request.user.is_authenticated})


def _app(runtime: Runtime) -> Starlette:
    # CORS outside patgate is the usual stack; here patgate is outermost so the test sees
    # patgate's decision on the preflight, which CORSMiddleware then answers.
    return Starlette(
        routes=[Route("/api/thing", _thing, methods=["GET", "OPTIONS", "TRACE"])],
        middleware=[
            Middleware(PatgateMiddleware, runtime=runtime),
            Middleware(CORSMiddleware, allow_origins=["https://app.example"]),
        ],
    )


@pytest.mark.parametrize(("preflight", "status"), [('preflight = "allow"', 200), ("", 401)])
async def test_preflight_switch(settings: Settings, preflight: str, status: int) -> None:
    policy = parse_policy(_POLICY.format(preflight=preflight), "m.toml")
    runtime = Runtime(settings.evolve(lastused_interval=60), policy=policy)
    async with (
        serve(_app(runtime)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        response = await client.options("/api/thing", headers=_PREFLIGHT)
        assert response.status_code == status, response.text
        if status == 200:
            assert response.headers["access-control-allow-origin"] == "https://app.example"
        # A real request still needs a token.
        assert (await client.get("/api/thing")).status_code == 401


async def test_trace_is_405(settings: Settings) -> None:
    policy = parse_policy(_POLICY.format(preflight=""), "m.toml")
    runtime = Runtime(settings.evolve(lastused_interval=60), policy=policy)
    async with (
        serve(_app(runtime)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        response = await client.request("TRACE", "/api/thing")
        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"
