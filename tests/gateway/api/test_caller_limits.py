"""The management API's caller resolution is under the data plane's failed-authentication
limit (issue 12): the same limiter, so bad tokens on either count together and a blocked
client gets 429 with ``Retry-After`` on both, valid token or not.

Wired as ``patgate serve`` does it (gateway/server.py): the runtime's authenticator and
its trusted-proxy client address, against the session's real Valkey.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from patgate.gateway.api import create_api_app
from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.runtime import Runtime
from tests.gateway._drills import unknown_secret
from tests.middleware._servers import ok_upstream
from tests.middleware._tokens import add_user, issue, make_policy

pytestmark = pytest.mark.anyio

LIMIT = 3
ATTACKER = "198.51.100.61"


@contextlib.asynccontextmanager
async def _clients(
    runtime: Runtime[Any], peer: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(management API, data plane) clients of ``runtime``, both from ``peer``."""
    api = create_api_app(
        runtime.store,
        runtime.token_format,
        client_ip=lambda request: runtime.trusted.client_ip(request.scope),
        authenticator=runtime.authenticator,
    )
    plane = PatgateMiddleware(ok_upstream, runtime=runtime)
    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api, client=(peer, 40_002)),
            base_url="http://patgate.test",
        ) as api_client,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=plane, client=(peer, 40_003)),
            base_url="http://patgate.test",
        ) as plane_client,
    ):
        yield api_client, plane_client


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_bad_tokens_on_the_api_block_the_client_on_both(settings: Settings) -> None:
    runtime = Runtime(
        settings.evolve(lastused_interval=60, auth_failure_limit=LIMIT, auth_failure_window=30),
        policy=make_policy(),
    )
    await runtime.start()
    try:
        await add_user(runtime.store, "u1")
        token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
        async with (
            _clients(runtime, ATTACKER) as (api, plane),
            _clients(runtime, "192.0.2.61") as (other_api, other_plane),
        ):
            assert (await api.get("/v1/me", headers=_bearer(token.secret))).status_code == 200
            # One failure on the data plane, the rest on the API: one count.
            assert (
                await plane.get("/threads/1", headers=_bearer(unknown_secret()))
            ).status_code == 401
            for _ in range(LIMIT - 1):
                answer = await api.get("/v1/me", headers=_bearer(unknown_secret()))
                assert answer.status_code == 401
            refused = await api.get("/v1/me", headers=_bearer(token.secret))
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 30
            assert refused.json()["error"] == "rate_limited"
            assert (await plane.get("/threads/1", headers=_bearer(token.secret))).status_code == 429
            # No credentials at all: still refused while blocked, and never counted.
            assert (await api.get("/v1/me")).status_code == 429
            # Another client is unaffected on both.
            assert (await other_api.get("/v1/me", headers=_bearer(token.secret))).status_code == 200
            ok = await other_plane.get("/threads/1", headers=_bearer(token.secret))
            assert ok.status_code == 200
        failures = runtime.metrics.registry.get_sample_value("patgate_auth_failures_total")
        assert failures == LIMIT
    finally:
        await runtime.aclose()
