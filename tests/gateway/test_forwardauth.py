"""The forward-auth endpoint over real loopback HTTP, in nginx, Traefik and Envoy modes."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from patgate.gateway.app import create_authz_app
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from patgate.middleware.tokenformat import TokenFormat
from tests.middleware._servers import serve
from tests.middleware._tokens import Issued, add_user, issue, make_policy

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _authz(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = Runtime(settings.evolve(lastused_interval=60), policy=make_policy())
    async with (
        serve(create_authz_app(runtime)) as port,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False
        ) as client,
    ):
        yield client, runtime


async def _token(runtime: Runtime, scopes: tuple[str, ...] = ("threads:read",)) -> Issued:
    await add_user(runtime.store, "u1")
    return await issue(runtime.store, runtime.token_format, scopes=scopes)


def _nginx(method: str, uri: str) -> dict[str, str]:
    return {"X-Original-Method": method, "X-Original-URI": uri}


def _traefik(method: str, uri: str) -> dict[str, str]:
    return {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Host": "api"}


@pytest.mark.parametrize("mode", ["nginx", "traefik", "envoy"])
async def test_allow_returns_identity_headers(settings: Settings, mode: str) -> None:
    async with _authz(settings) as (client, runtime):
        token = await _token(runtime)
        auth = {"Authorization": f"Bearer {token.secret}", "User-Agent": "curl/8.5"}
        if mode == "nginx":
            response = await client.get(
                "/authz", headers={**auth, **_nginx("GET", "/threads/9?x=1")}
            )
        elif mode == "traefik":
            response = await client.get(
                "/authz", headers={**auth, **_traefik("GET", "/threads/9?x=1")}
            )
        else:
            response = await client.get("/authz/threads/9?x=1", headers=auth)
        assert response.status_code == 200, response.text
        assert response.content == b""
        assert response.headers["x-patgate-token-id"] == token.token.id
        assert response.headers["x-patgate-owner-type"] == "user"
        assert response.headers["x-patgate-owner-id"] == "u1"
        assert response.headers["x-patgate-org-id"] == "o1"
        assert response.headers["x-patgate-scopes"] == "threads:read"
        assert response.headers["x-patgate-token-type"] == "personal"
        used = runtime.recorder._pending[token.token.id]
        assert (used.method, used.path) == ("GET", "/threads/9")  # query dropped


@pytest.mark.parametrize(
    ("headers", "path", "status", "error"),
    [
        (_nginx("GET", "/threads/1"), "/authz", 401, "missing_credentials"),
        (_nginx("POST", "/threads"), "/authz", 403, "insufficient_scope"),
        (_traefik("POST", "/threads"), "/authz", 403, "insufficient_scope"),
        ({}, "/authz/threads", 403, "no_rule"),  # Envoy mode: GET /threads has no rule
        ({}, "/authz", 400, "invalid_request"),  # no description of the original request
        ({"X-Original-URI": "/threads/1"}, "/authz", 400, "invalid_request"),  # no method
        (_nginx("GET", "/threads/a%2Fb"), "/authz", 400, "bad_path"),
    ],
)
async def test_refusals(
    settings: Settings, headers: dict[str, str], path: str, status: int, error: str
) -> None:
    async with _authz(settings) as (client, runtime):
        token = await _token(runtime)
        if error != "missing_credentials":
            headers = {**headers, "Authorization": f"Bearer {token.secret}"}
        response = await client.get(path, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert not any(name.startswith("x-patgate-") for name in response.headers)
    if status in (401, 403):
        assert response.headers["www-authenticate"].startswith('Bearer realm="patgate"')
    if error == "insufficient_scope":
        assert 'scope="threads:create"' in response.headers["www-authenticate"]


async def test_unknown_token_gets_the_uniform_401(settings: Settings) -> None:
    async with _authz(settings) as (client, _runtime):
        response = await client.get(
            "/authz",
            headers={**_nginx("GET", "/threads/1"), "Authorization": "Bearer pat_unknown"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer realm="patgate", error="invalid_token", '
        'error_description="invalid or unknown token"'
    )


async def test_public_route_allows_without_identity(settings: Settings) -> None:
    async with _authz(settings) as (client, _):
        response = await client.get("/authz", headers=_nginx("GET", "/public"))
    assert response.status_code == 200
    assert not any(name.startswith("x-patgate-") for name in response.headers)


async def test_untrusted_peer_is_refused(settings: Settings) -> None:
    async with _authz(settings.evolve(trusted_proxies=("10.9.9.9",))) as (client, runtime):
        token = await _token(runtime)
        response = await client.get(
            "/authz",
            headers={**_nginx("GET", "/threads/1"), "Authorization": f"Bearer {token.secret}"},
        )
    assert response.status_code == 403
    assert response.json()["error"] == "untrusted_proxy"
    assert "x-patgate-token-id" not in response.headers


async def test_client_ip_comes_from_the_trusted_proxy(settings: Settings) -> None:
    async with _authz(settings) as (client, runtime):
        token = await _token(runtime)
        response = await client.get(
            "/authz",
            headers={
                **_nginx("GET", "/threads/1"),
                "Authorization": f"Bearer {token.secret}",
                "X-Forwarded-For": "203.0.113.50",
            },
        )
        assert response.status_code == 200
        assert runtime.recorder._pending[token.token.id].ip == "203.0.113.50"


async def test_health_endpoints(settings: Settings) -> None:
    async with _authz(settings) as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "subscriber": "ok"}}
        assert (await client.get("/other")).status_code == 404


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_store_unreachable_is_503_and_not_ready(settings: Settings) -> None:
    down = settings.evolve(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    async with _authz(down) as (client, _):
        response = await client.get(
            "/authz",
            headers={**_nginx("GET", "/threads/1"), "Authorization": "Bearer " + _fake()},
        )
        assert response.status_code == 503
        assert response.json()["error"] == "store_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        checks: dict[str, Any] = ready.json()["checks"]
        assert checks["redis"].startswith("ping failed")
        assert checks["subscriber"] != "ok"
        assert (await client.get("/healthz")).status_code == 200


def _fake() -> str:
    return TokenFormat().generate()
