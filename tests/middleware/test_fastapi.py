"""``patgate.middleware.fastapi.identity`` (issue 10) in a real FastAPI app under uvicorn,
behind the real middleware, with a real Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Security

from patgate import PatgateMiddleware, Settings
from patgate.middleware.fastapi import AuthRefused, identity, refusal_handler
from patgate.middleware.records import Identity
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

BODY = {"error": "insufficient_scope", "detail": "the token lacks the scope this route requires"}


def _app(*, handler: bool) -> FastAPI:
    app = FastAPI()
    if handler:
        app.add_exception_handler(AuthRefused, refusal_handler)

    @app.get("/threads/{thread}")
    async def read(
        thread: str, who: Annotated[Identity, Security(identity, scopes=["threads:read"])]
    ) -> dict[str, str]:
        return {"thread": thread, "owner": who.owner_id, "token": who.token_id}

    @app.post("/threads")
    def create(
        who: Annotated[Identity, Security(identity, scopes=["threads:create", "threads:read"])],
    ) -> dict[str, str]:
        return {"owner": who.owner_id}

    @app.get("/me")
    async def me(who: Annotated[Identity, Security(identity)]) -> dict[str, str]:
        return {"owner": who.owner_id}

    @app.get("/public")
    async def public(who: Annotated[Identity, Security(identity)]) -> dict[str, str]:
        return {"owner": who.owner_id}

    return app


@pytest.fixture
async def world(
    settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    runtime: Runtime[Settings] = Runtime(
        settings.evolve(realm="acme"), policy=parse_policy(POLICY, "test")
    )
    await add_user(runtime.store)
    secrets = {}
    for name, scopes in {
        "reader": ("threads:read",),
        "wildcard": ("threads:*",),
        "writer": ("threads:create",),
    }.items():
        secrets[name] = (await issue(runtime.store, runtime.token_format, scopes=scopes)).secret
    app = PatgateMiddleware(_app(handler=request.param), runtime=runtime)
    async with (
        serve(app) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        yield http, secrets


def _auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.mark.anyio
@pytest.mark.parametrize("world", [True], indirect=True)
async def test_identity_and_scopes(world: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    http, secrets = world
    ok = await http.get("/threads/t1", headers=_auth(secrets["reader"]))
    assert ok.status_code == 200
    assert ok.json()["owner"] == "u1"
    assert ok.json()["token"].startswith("tok_")
    # Effective scopes, wildcard-aware: threads:* holds both.
    assert (await http.post("/threads", headers=_auth(secrets["wildcard"]))).status_code == 200
    assert (await http.get("/me", headers=_auth(secrets["writer"]))).status_code == 200

    lacking = await http.post("/threads", headers=_auth(secrets["reader"]))
    assert lacking.status_code == 403
    assert lacking.headers["www-authenticate"] == (
        'Bearer realm="acme", error="insufficient_scope", scope="threads:create threads:read"'
    )
    assert lacking.json() == BODY

    other = await http.get("/threads/t1", headers=_auth(secrets["writer"]))
    assert other.status_code == 403
    assert other.headers["www-authenticate"].endswith('scope="threads:read"')

    # A public route has no identity: the dependency answers 401 (RFC 6750 §3.1).
    anonymous = await http.get("/public")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="acme"'
    assert anonymous.json()["error"] == "missing_credentials"

    # The middleware still refuses before FastAPI runs.
    assert (await http.get("/threads/t1")).status_code == 401


@pytest.mark.anyio
@pytest.mark.parametrize("world", [False], indirect=True)
async def test_without_the_handler_the_challenge_stays(
    world: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """FastAPI's own HTTPException handler still sends the status and the challenge."""
    http, secrets = world
    lacking = await http.post("/threads", headers=_auth(secrets["reader"]))
    assert lacking.status_code == 403
    assert lacking.headers["www-authenticate"] == (
        'Bearer realm="acme", error="insufficient_scope", scope="threads:create threads:read"'
    )
    assert lacking.json() == {"detail": BODY["detail"]}


@pytest.mark.anyio
async def test_not_behind_the_middleware_is_401() -> None:
    async with (
        serve(_app(handler=True)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        answer = await http.get("/me")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="patgate"'
