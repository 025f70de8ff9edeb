"""TRACE/CONNECT (405) and CORS preflight (``preflight = "allow"``) through the real
gateway listener, and the same decisions in forward-auth (issue 9)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.app import create_authz_app, create_gateway_app
from patgate.gateway.settings import Settings
from patgate.middleware.metrics import render
from patgate.middleware.runtime import Runtime
from patgate.policies.engine import parse_policy
from tests.gateway._listen import body_of, exchange, listen, status_of
from tests.middleware._servers import serve
from tests.middleware._tokens import add_user, issue

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

[[rules]]
name = "trace-allowed"
methods = ["TRACE", "GET"]
path = "/debug"
scopes = ["debug:read"]
"""

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


class _Upstream:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            headers = {k.decode(): v.decode() for k, v in request.scope["headers"]}
            self.seen.append((request.method, headers))
            return JSONResponse({"method": request.method})

        return Starlette(routes=[Route("/{path:path}", echo, methods=_METHODS)])


@contextlib.asynccontextmanager
async def _gateway(
    settings: Settings, preflight: str = ""
) -> AsyncIterator[tuple[int, httpx.AsyncClient, Runtime, _Upstream]]:
    upstream = _Upstream()
    policy = parse_policy(_POLICY.format(preflight=preflight), "m.toml")
    async with serve(upstream.app(), lifespan="off") as up_port:
        settings = settings.evolve(upstream_url=f"http://127.0.0.1:{up_port}", lastused_interval=60)
        runtime = Runtime(settings, policy=policy)
        async with (
            listen(create_gateway_app(runtime), settings) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
        ):
            yield port, client, runtime, upstream


def _count(runtime: Runtime, reason: str) -> float:
    prefix = 'patgate_decisions_total{outcome="'
    total = 0.0
    for line in render(runtime.metrics).decode().splitlines():
        if line.startswith(prefix) and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _bearer(runtime: Runtime, *scopes: str) -> dict[str, str]:
    await add_user(runtime.store, "u1")
    token = await issue(runtime.store, runtime.token_format, scopes=scopes)
    return {"Authorization": f"Bearer {token.secret}"}


@pytest.mark.parametrize("with_token", [False, True])
async def test_trace_on_an_any_method_rule_is_405_before_authentication(
    settings: Settings, with_token: bool
) -> None:
    async with _gateway(settings) as (_, client, runtime, upstream):
        headers = await _bearer(runtime, "*") if with_token else {}
        response = await client.request("TRACE", "/api/x", headers=headers)
        assert response.status_code == 405, response.text
        assert response.json()["error"] == "method_not_allowed"
        # RFC 9110 §15.5.6: a 405 says what is allowed; it is not an auth challenge.
        assert "TRACE" not in response.headers["allow"]
        assert "GET" in response.headers["allow"]
        assert "www-authenticate" not in response.headers
        assert upstream.seen == []
        assert _count(runtime, "method_not_allowed") == 1
        # Other methods on the same rule are decided normally.
        assert (await client.get("/api/x", headers=headers)).status_code == (
            200 if with_token else 401
        )


async def test_connect_is_refused(settings: Settings) -> None:
    async with _gateway(settings) as (port, _, _runtime, upstream):
        raw = b"CONNECT /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        response = await exchange(port, raw)
        assert status_of(response) == 405, response[:300]
        assert json.loads(body_of(response))["error"] == "method_not_allowed"
        # The authority-form target (RFC 9112 §3.2.3) never reaches an app: the server
        # cannot parse it as a path and answers 400 itself.
        raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        assert status_of(await exchange(port, raw)) == 400
        assert upstream.seen == []


async def test_trace_passes_where_a_rule_names_it(settings: Settings) -> None:
    async with _gateway(settings) as (_, client, runtime, upstream):
        headers = await _bearer(runtime, "debug:read")
        assert (await client.request("TRACE", "/debug")).status_code == 401
        response = await client.request("TRACE", "/debug", headers=headers)
        assert response.status_code == 200, response.text
        assert upstream.seen[-1][0] == "TRACE"


_PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}


async def test_preflight_passes_without_a_token_when_allowed(settings: Settings) -> None:
    async with _gateway(settings, 'preflight = "allow"') as (_, client, runtime, upstream):
        forged = {"X-Patgate-Owner-Id": "forged", "X-Patgate": "forged"}
        response = await client.options("/api/x", headers={**_PREFLIGHT, **forged})
        assert response.status_code == 200, response.text
        method, seen = upstream.seen[-1]
        assert method == "OPTIONS"
        # Treated as public: no identity, and header hygiene still applies.
        assert not [name for name in seen if name.startswith("x-patgate")]
        # Not a preflight (no Access-Control-Request-Method, or another method): 401.
        assert (await client.options("/api/x", headers={"Origin": "x"})).status_code == 401
        assert (await client.put("/api/x", headers=_PREFLIGHT)).status_code == 401
        # With credentials it is decided like any request.
        bad = {**_PREFLIGHT, "Authorization": "Bearer " + runtime.token_format.generate()}
        assert (await client.options("/api/x", headers=bad)).status_code == 401
        # Paths are still checked.
        assert (await client.options("/api/%2f", headers=_PREFLIGHT)).status_code == 400
        assert _count(runtime, "public") == 1


async def test_preflight_needs_a_token_by_default(settings: Settings) -> None:
    async with _gateway(settings) as (_, client, _runtime, upstream):
        response = await client.options("/api/x", headers=_PREFLIGHT)
        assert response.status_code == 401
        assert upstream.seen == []


@pytest.mark.parametrize(
    ("preflight", "method", "headers", "status"),
    [
        ('preflight = "allow"', "OPTIONS", _PREFLIGHT, 200),
        ("", "OPTIONS", _PREFLIGHT, 401),
        ("", "TRACE", {}, 405),
    ],
)
async def test_forward_auth_agrees(
    settings: Settings, preflight: str, method: str, headers: dict[str, str], status: int
) -> None:
    policy = parse_policy(_POLICY.format(preflight=preflight), "m.toml")
    runtime = Runtime(settings.evolve(forward_auth_source="nginx"), policy=policy)
    async with (
        serve(create_authz_app(runtime)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        nginx = {"X-Original-Method": method, "X-Original-URI": "/api/x"}
        response = await client.get("/authz", headers={**headers, **nginx})
        assert response.status_code == status, response.text
