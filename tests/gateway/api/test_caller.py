"""The management API's caller goes through the data plane's lookup path (issue 10):
``create_api_app(..., authenticator=runtime.authenticator)`` resolves every call with
``Authenticator.identify(fresh=True)`` — one Redis read per call, nothing cached."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor
from patgate.middleware.auth import Authenticator, Resolved
from patgate.middleware.cache import TokenCache
from patgate.middleware.metrics import Metrics
from patgate.middleware.store import Buried, Found, TokenStore
from patgate.policies.engine import default_policy
from tests.gateway.api._world import Api

pytestmark = pytest.mark.anyio


class _Counting(TokenStore):
    """The real store, counting lookups."""

    lookups = 0

    async def lookup(
        self, digest: bytes, partition: int, previous: bytes | None = None
    ) -> Found | Buried | None:
        self.lookups += 1
        return await super().lookup(digest, partition, previous)


@pytest.fixture
async def shared(api: Api) -> AsyncIterator[tuple[httpx.AsyncClient, Authenticator, _Counting]]:
    counting = _Counting(api.store.client, api.store.keyspace)
    cache: TokenCache[Resolved] = TokenCache(100, 30.0, 2.0, active=True)
    auth = Authenticator(counting, cache, api.fmt, default_policy(), Metrics(), clock=api.clock)
    app = create_api_app(api.store, api.fmt, clock=api.clock, authenticator=auth)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as client:
        yield client, auth, counting


def _bearer(api: Api, who: str) -> dict[str, str]:
    return {"authorization": "Bearer " + api.secrets[who]}


async def test_each_call_is_one_fresh_lookup_through_the_authenticator(
    api: Api, shared: tuple[httpx.AsyncClient, Authenticator, _Counting]
) -> None:
    client, auth, counting = shared
    for n in (1, 2):
        response = await client.get("/v1/tokens", headers=_bearer(api, "alice"))
        assert response.status_code == 200
        assert counting.lookups == n
    assert len(auth.cache) == 0


async def test_a_revocation_the_cache_has_not_heard_of_is_seen_at_once(
    api: Api, shared: tuple[httpx.AsyncClient, Authenticator, _Counting]
) -> None:
    client, auth, _ = shared
    cached = await auth.resolve(api.secrets["admin"])  # the data plane's view, cached
    assert cached.usable
    # No subscriber listens to this cache: its entry stays (stale) until its TTL.
    await api.tokens.revoke(Actor.system(), api.ids["admin"])
    assert await auth.resolve(api.secrets["admin"]) is cached
    response = await client.get("/v1/tokens", headers=_bearer(api, "admin"))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "detail": "token revoked"}
    assert response.headers["www-authenticate"] == (
        'Bearer realm="patgate", error="invalid_token", error_description="token revoked"'
    )


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        (
            {},
            401,
            {
                "error": "unauthenticated",
                "detail": "a Bearer token with management scopes is required",
            },
        ),
        (
            {"authorization": "Bearer pat_short"},
            401,
            {"error": "invalid_token", "detail": "invalid or unknown token"},
        ),
    ],
)
async def test_refusals_are_the_one_renderers(
    shared: tuple[httpx.AsyncClient, Authenticator, _Counting],
    headers: dict[str, str],
    status: int,
    body: dict[str, str],
) -> None:
    client, _, counting = shared
    response = await client.get("/v1/tokens", headers=headers)
    assert response.status_code == status
    assert response.json() == body
    assert response.headers["www-authenticate"].startswith('Bearer realm="patgate"')
    assert counting.lookups == 0  # no Redis call for a missing or malformed token
