"""CSRF (issue 15): every state-changing form carries the session's token; without it,
with another, or from another site, the console answers 403 and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from patgate.gateway.lifecycle import Actor
from tests.gateway.api._world import snapshot
from tests.gateway.console._world import Browser, ConsoleWorld, hidden, sign_in, world_fixture  # noqa: F401

pytestmark = pytest.mark.anyio


def _routes(tid: str, org_tid: str) -> list[tuple[str, dict[str, Any]]]:
    """Every POST route, each with a body that would change something."""
    return [
        ("/tokens/new", {"name": "new", "access": "default", "expiration": "30d"}),
        ("/tokens/delete-all", {"confirm": "delete all"}),
        (f"/tokens/{tid}/edit", {"name": "renamed", "description": "x"}),
        (f"/tokens/{tid}/allowlist", {"allowed_ips": "10.0.0.1"}),
        (f"/tokens/{tid}/role", {"role": "Developer"}),
        (f"/tokens/{tid}/scopes/add", {"scope": "messages:read"}),
        (f"/tokens/{tid}/scopes/remove", {"scope": "threads:read"}),
        (f"/tokens/{tid}/scopes/clear", {}),
        (f"/tokens/{tid}/revoke", {}),
        (f"/tokens/{tid}/regenerate", {"expiration": "30d", "grace_period": "0"}),
        (f"/tokens/{tid}/end-grace", {}),
        (f"/tokens/{tid}/delete", {}),
        (f"/admin/tokens/{org_tid}/revoke", {"confirm_label": "svc"}),
        ("/admin/users", {"id": "carol", "email": "carol@acme.io", "role": "member"}),
        ("/admin/users/bob", {"role": "admin", "enabled": "on"}),
        ("/admin/users/bob/remove", {}),
        ("/admin/org", {"name": "Hacked", "resources": "x"}),
        ("/logout", {}),
    ]


async def _unchanged(world: ConsoleWorld, redis_client: aioredis.Redis, namespace: str) -> Any:
    dump = await snapshot(redis_client, namespace)
    return {k: v for k, v in dump.items() if b":console}" not in k}


@pytest.mark.parametrize("csrf", ["missing", "empty", "wrong", "other-session", "cross-site"])
async def test_every_post_without_the_session_csrf_is_refused(
    world: ConsoleWorld, redis_client: aioredis.Redis, namespace: str, csrf: str
) -> None:
    token = await world.create("admin", "mine", scopes=["threads:read"])
    await world.tokens.regenerate(Actor.system(), token.id, grace_period=3600.0)
    org_token = await world.create("org", "svc")
    b = await world.signed_in("admin")
    other = await world.signed_in("alice")
    own_csrf, form_id = await b.form("/tokens/new")
    form_ids = [form_id, (await b.form(f"/tokens/{token.id}"))[1]]
    before = await _unchanged(world, redis_client, namespace)
    for path, body in _routes(token.id, org_token.id):
        data = {**body, "form_id": form_ids[0] if path == "/tokens/new" else form_ids[1]}
        headers = {}
        if csrf == "empty":
            data["csrf"] = ""
        elif csrf == "wrong":
            data["csrf"] = own_csrf[:-2] + "xx"
        elif csrf == "other-session":
            data["csrf"] = await other.csrf()
        elif csrf == "cross-site":
            data["csrf"] = own_csrf
            headers["origin"] = "https://evil.example"
        r = await b.post(path, data, headers=headers)
        assert r.status_code == 403, (path, r.status_code, r.text)
        expected = "another site" if csrf == "cross-site" else "This form was not sent from"
        assert expected in r.text, path
        assert "set-cookie" not in r.headers
    assert await _unchanged(world, redis_client, namespace) == before
    # the session survived every refusal (logout included), and still works
    r = await b.get("/tokens")
    assert r.status_code == 200
    assert hidden(r.text, "csrf") == own_csrf


async def test_same_origin_and_null_origin_are_accepted(world: ConsoleWorld) -> None:
    token = await world.create("alice", "mine")
    b = await world.signed_in("alice")
    csrf = await b.csrf()
    for origin in ("http://testserver", "null"):
        r = await b.post(
            f"/tokens/{token.id}/edit",
            {"csrf": csrf, "name": f"n-{origin[:4]}", "description": ""},
            headers={"origin": origin},
        )
        assert r.status_code == 303, r.text
    assert (await world.token(token.id)).name == "n-null"


@pytest.mark.parametrize("csrf", [None, "", "forged"])
async def test_sign_in_without_the_form_csrf_is_refused(
    world: ConsoleWorld, csrf: str | None
) -> None:
    b = world.browser()
    await b.get("/login")
    data = {"token": world.secrets["alice"]}
    if csrf is not None:
        data["csrf"] = csrf
    r = await b.post("/login", data)
    assert r.status_code == 400
    assert "The sign-in form expired" in r.text
    r = await b.get("/tokens")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"


async def test_sign_in_from_another_site_is_refused(world: ConsoleWorld) -> None:
    b = world.browser()
    r = await b.get("/login")
    data = {"csrf": hidden(r.text, "csrf"), "token": world.secrets["alice"]}
    r = await b.post("/login", data, headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    assert (await b.get("/tokens")).status_code == 303


async def test_a_form_without_a_session_is_refused(world: ConsoleWorld) -> None:
    """No cookie at all: a new session has no CSRF token the form could carry."""
    token = await world.create("alice", "mine")
    b = await world.signed_in("alice")
    csrf = await b.csrf()
    stranger = world.browser()
    r = await stranger.post(f"/tokens/{token.id}/revoke", {"csrf": csrf})
    assert r.status_code == 303  # to the sign-in page
    assert (await world.token(token.id)).status(world.clock()) == "active"


async def test_a_form_that_is_not_urlencoded_is_refused(world: ConsoleWorld) -> None:
    token = await world.create("alice", "mine")
    b: Browser = await world.signed_in("alice")
    csrf = await b.csrf()
    r = await b.client.post(
        f"/console/tokens/{token.id}/edit",
        content=f'{{"csrf": "{csrf}", "name": "json"}}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert (await world.token(token.id)).name == "mine"
    # and a login whose body is not a form
    r = await sign_in(world.browser(), "x" * 70_000)
    assert r.status_code in (400, 413)
