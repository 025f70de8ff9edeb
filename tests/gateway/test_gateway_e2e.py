"""The gateway end to end on loopback: upstream ← gateway (middleware + proxy) and the
admin listener (/metrics, /healthz, /readyz, /authz, management API), one shared
Runtime, a real Valkey."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.app import create_admin_app, create_gateway_app
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve
from tests.middleware._tokens import Issued, add_user, issue, make_policy

pytestmark = pytest.mark.anyio


class _Upstream:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            headers = {k.decode(): v.decode() for k, v in request.scope["headers"]}
            self.seen.append(headers)
            return JSONResponse({"path": request.url.path, "headers": headers})

        return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


async def _api_ping(request: Request) -> JSONResponse:
    return JSONResponse({"api": True})


@contextlib.asynccontextmanager
async def _stack(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Runtime, _Upstream]]:
    upstream = _Upstream()
    async with serve(upstream.app(), lifespan="off") as up_port:
        runtime = Runtime(
            settings.evolve(upstream_url=f"http://127.0.0.1:{up_port}", lastused_interval=60),
            policy=make_policy(),
        )
        api = Starlette(routes=[Route("/v1/ping", _api_ping)])
        async with (
            serve(create_gateway_app(runtime)) as gw_port,
            serve(create_admin_app(runtime, api)) as admin_port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", trust_env=False) as gw,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", trust_env=False) as ad,
        ):
            yield gw, ad, runtime, upstream


async def _token(runtime: Runtime, scopes: tuple[str, ...] = ("threads:read",)) -> Issued:
    await add_user(runtime.store, "u1")
    return await issue(runtime.store, runtime.token_format, scopes=scopes)


async def test_valid_token_is_proxied_with_identity_headers_only(settings: Settings) -> None:
    async with _stack(settings) as (gw, _, runtime, _upstream):
        token = await _token(runtime)
        response = await gw.get(
            "/threads/3?q=1",
            headers={
                "Authorization": f"Bearer {token.secret}",
                "X-Patgate-Token-Id": "forged",
                "X_Patgate_Scopes": "*",
                "User-Agent": "e2e/1",
            },
        )
        assert response.status_code == 200
        seen = response.json()["headers"]
        assert seen["x-patgate-token-id"] == token.token.id
        assert seen["x-patgate-scopes"] == "threads:read"
        assert "authorization" not in seen
        assert "x_patgate_scopes" not in seen
    # Both listeners shut down → the runtime closed once, flushing last-used.
    reader = Runtime(settings)
    try:
        stored = await reader.store.get_token(token.token.id)
    finally:
        await reader.aclose()
    assert stored is not None
    assert stored.last_used is not None
    used = stored.last_used
    assert (used.method, used.path, used.ip, used.user_agent) == (
        "GET",
        "/threads/3",
        "127.0.0.1",
        "e2e/1",
    )


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/threads/3", None, 401),
        ("GET", "/threads/3", "Bearer pat_bogus", 401),
        ("POST", "/threads", "valid", 403),
        ("GET", "/unlisted", "valid", 403),
        ("GET", "/threads/a%2Fb", "valid", 400),
    ],
)
async def test_refusals_never_reach_the_upstream(
    settings: Settings, method: str, path: str, auth: str | None, status: int
) -> None:
    async with _stack(settings) as (gw, _, runtime, upstream):
        token = await _token(runtime)
        headers: dict[str, str] = {}
        if auth == "valid":
            headers["Authorization"] = f"Bearer {token.secret}"
        elif auth is not None:
            headers["Authorization"] = auth
        response = await gw.request(method, path, headers=headers)
        assert response.status_code == status
        assert upstream.seen == []
        if status in (401, 403):
            assert response.headers["www-authenticate"].startswith('Bearer realm="patgate"')


async def test_public_route_is_proxied_anonymously(settings: Settings) -> None:
    async with _stack(settings) as (gw, _, _runtime, upstream):
        response = await gw.get("/public", headers={"X-Patgate-Owner-Id": "forged"})
        assert response.status_code == 200
        assert not any(k.startswith("x-patgate-") for k in upstream.seen[0])


async def test_admin_listener(settings: Settings) -> None:
    async with _stack(settings) as (gw, admin, runtime, _):
        token = await _token(runtime)
        await gw.get("/threads/1", headers={"Authorization": f"Bearer {token.secret}"})
        await gw.get("/threads/1", headers={"Authorization": f"Bearer {token.secret}"})
        await gw.get("/threads/1")
        assert (await admin.get("/healthz")).json() == {"status": "ok"}
        assert (await admin.get("/readyz")).status_code == 200
        assert (await admin.get("/v1/ping")).json() == {"api": True}
        authz = await admin.get(
            "/authz",
            headers={
                "Authorization": f"Bearer {token.secret}",
                "X-Original-Method": "GET",
                "X-Original-URI": "/threads/1",
            },
        )
        assert authz.status_code == 200
        assert authz.headers["x-patgate-token-id"] == token.token.id
        metrics = await admin.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'patgate_decisions_total{outcome="allow",reason="ok"} 3.0' in text
        assert 'patgate_decisions_total{outcome="deny",reason="missing_credentials"} 1.0' in text
        assert "patgate_cache_hits_total 2.0" in text
        assert "patgate_cache_misses_total 1.0" in text
        assert "patgate_redis_up 1.0" in text
        assert 'patgate_upstream_requests_total{status_class="2xx"} 2.0' in text
        assert token.secret not in text
        assert token.token.id not in text
        assert (await admin.get("/nothing-here")).status_code == 404
