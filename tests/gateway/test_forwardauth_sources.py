"""Forward-auth reads the original request from exactly one source (issue 9 §5)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from patgate.gateway.app import create_admin_app, create_authz_app
from patgate.gateway.cli import build_parser
from patgate.gateway.forwardauth import ForwardAuthApp
from patgate.gateway.settings import Settings
from patgate.middleware.errors import ConfigError
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve
from tests.middleware._tokens import make_policy

pytestmark = pytest.mark.anyio

# Describe the public route in one source, a protected one in another.
_NGINX_PUBLIC = {"X-Original-Method": "GET", "X-Original-URI": "/public"}
_TRAEFIK_PUBLIC = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public"}
_NGINX_PROTECTED = {"X-Original-Method": "GET", "X-Original-URI": "/threads/1"}
_TRAEFIK_PROTECTED = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/threads/1"}


@contextlib.asynccontextmanager
async def _authz(settings: Settings, source: str) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(
        settings.evolve(lastused_interval=60, forward_auth_source=source), policy=make_policy()
    )
    async with (
        serve(create_authz_app(runtime)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        yield client


# (source, path, headers, expected status): 200 = decided for /public, 401 = decided for
# the protected /threads/1 (no token), 400 = refused.
_TABLE = [
    # auto: exactly one source.
    ("auto", "/authz", _NGINX_PUBLIC, 200),
    ("auto", "/authz", _TRAEFIK_PUBLIC, 200),
    ("auto", "/authz/public", {}, 200),
    ("auto", "/authz", _NGINX_PROTECTED, 401),
    ("auto", "/authz", {}, 400),
    # auto: conflicting sources are refused, whichever would have won before.
    ("auto", "/authz", {**_TRAEFIK_PROTECTED, **_NGINX_PUBLIC}, 400),
    ("auto", "/authz", {**_NGINX_PROTECTED, **_TRAEFIK_PUBLIC}, 400),
    ("auto", "/authz/threads/1", _NGINX_PUBLIC, 400),
    ("auto", "/authz/threads/1", {"X-Original-URI": "/public"}, 400),
    ("auto", "/authz/threads/1", {"X-Forwarded-Uri": "/public"}, 400),
    # a fixed source ignores the others' headers...
    ("traefik", "/authz", {**_TRAEFIK_PROTECTED, **_NGINX_PUBLIC}, 401),
    ("traefik", "/authz/public", _TRAEFIK_PROTECTED, 401),
    ("nginx", "/authz", {**_NGINX_PROTECTED, **_TRAEFIK_PUBLIC}, 401),
    ("nginx", "/authz/public", _NGINX_PROTECTED, 401),
    ("envoy", "/authz/threads/1", {**_NGINX_PUBLIC, **_TRAEFIK_PUBLIC}, 401),
    ("envoy", "/authz/public", _NGINX_PROTECTED, 200),
    # ... and needs its own.
    ("traefik", "/authz", _NGINX_PUBLIC, 400),
    ("traefik", "/authz", {"X-Forwarded-Uri": "/public"}, 400),
    ("nginx", "/authz", _TRAEFIK_PUBLIC, 400),
    ("nginx", "/authz/public", {}, 400),
    ("envoy", "/authz", _NGINX_PUBLIC, 400),
]


@pytest.mark.parametrize(("source", "path", "headers", "status"), _TABLE)
async def test_source_table(
    settings: Settings, source: str, path: str, headers: dict[str, str], status: int
) -> None:
    async with _authz(settings, source) as client:
        response = await client.get(path, headers=headers)
        assert response.status_code == status, response.text
        if status == 400:
            assert response.json()["error"] == "invalid_request"


async def test_conflict_names_the_sources(settings: Settings) -> None:
    async with _authz(settings, "auto") as client:
        response = await client.get("/authz", headers={**_NGINX_PUBLIC, **_TRAEFIK_PUBLIC})
        assert response.status_code == 400
        assert "nginx, traefik" in response.json()["detail"]


async def test_fixed_source_ignores_repeats_of_other_sources(settings: Settings) -> None:
    async with _authz(settings, "nginx") as client:
        headers = [
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/public"),
            ("X-Forwarded-Uri", "/a"),
            ("X-Forwarded-Uri", "/b"),
        ]
        assert (await client.get("/authz", headers=headers)).status_code == 200
        headers.append(("X-Original-URI", "/public"))
        assert (await client.get("/authz", headers=headers)).status_code == 400


async def test_admin_listener_uses_the_same_source(settings: Settings) -> None:
    runtime = Runtime(settings.evolve(forward_auth_source="traefik"), policy=make_policy())
    async with (
        serve(create_admin_app(runtime)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        response = await client.get("/authz", headers={**_TRAEFIK_PROTECTED, **_NGINX_PUBLIC})
        assert response.status_code == 401


def test_setting_from_env_and_cli() -> None:
    env = {"PATGATE_FORWARD_AUTH_SOURCE": "Traefik"}
    assert Settings.from_env(env).forward_auth_source == "traefik"
    assert Settings.from_env({}).forward_auth_source == "auto"
    with pytest.raises(ConfigError, match="PATGATE_FORWARD_AUTH_SOURCE"):
        Settings.from_env({"PATGATE_FORWARD_AUTH_SOURCE": "haproxy"})
    for role in ("authz", "serve", "gateway", "api"):
        args = build_parser().parse_args([role, "--forward-auth-source", "envoy"])
        assert args.forward_auth_source == "envoy"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["authz", "--forward-auth-source", "haproxy"])


def test_unknown_source_is_a_config_error(settings: Settings) -> None:
    runtime = Runtime(settings, policy=make_policy())
    with pytest.raises(ConfigError):
        ForwardAuthApp(runtime.authenticator, runtime.trusted, source="haproxy")


@pytest.mark.parametrize("method", ["G@T", "GE T", "get", "Get", ""])
async def test_an_original_method_that_is_no_method_token_is_refused(
    settings: Settings, method: str
) -> None:
    """RFC 9110 §9.1: the method is a case-sensitive token; anything else would be decided
    as a different request than the one the proxy forwards."""
    async with _authz(settings, "nginx") as client:
        response = await client.get(
            "/authz", headers={**_NGINX_PUBLIC, "X-Original-Method": method}
        )
        assert response.status_code == 400, (method, response.text)
        assert response.json()["error"] == "invalid_request"
