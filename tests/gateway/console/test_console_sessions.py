"""Console sessions (issue 15): the cookie's attributes, an absolute lifetime, logout
that ends the session server-side, a new id at sign-in, and a session that lasts only as
long as the management token it was opened with. And host mode: the host's hook names
the user on every request."""

from __future__ import annotations

import hashlib
import json
from http.cookies import SimpleCookie

import httpx
import pytest
import redis.asyncio as aioredis

from patgate.gateway.console import ConsoleConfig
from patgate.gateway.lifecycle import Actor
from patgate.middleware.store import TokenStore
from tests.gateway.console._world import (
    Browser,
    ConsoleWorld,
    hidden,
    host_world_fixture,  # noqa: F401
    make_console,
    sign_in,
    world_fixture,  # noqa: F401
)

pytestmark = pytest.mark.anyio
_GENERIC = "That token is not valid: unknown, revoked, expired or not allowed here."


def _cookie(r: httpx.Response, name: str = "patgate_console") -> dict[str, str | bool]:
    raw = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith(name + "=")]
    assert len(raw) == 1, raw
    jar = SimpleCookie()
    jar.load(raw[0])
    morsel = jar[name]
    low = raw[0].lower()
    return {
        "value": morsel.value,
        "path": morsel["path"],
        "samesite": str(morsel["samesite"]).lower(),
        "httponly": "httponly" in low,
        "secure": "; secure" in low,
        "max-age": morsel["max-age"],
    }


async def _key_exists(redis_client: aioredis.Redis, namespace: str, session_id: str) -> bool:
    key = "{" + namespace + ":console}:s:" + hashlib.sha256(session_id.encode()).hexdigest()
    return bool(await redis_client.exists(key))


async def test_cookie_attributes_over_http(world: ConsoleWorld) -> None:
    b = world.browser()
    r = await b.get("/login")
    # Not signed in: only the sign-in form's CSRF cookie, with the same attributes.
    first = _cookie(r, "patgate_console_csrf")
    assert first["value"] == hidden(r.text, "csrf")
    assert first["httponly"]
    assert first["samesite"] == "strict"
    assert first["path"] == "/console"
    assert first["secure"] is False
    r = await b.post("/login", {"csrf": hidden(r.text, "csrf"), "token": world.secrets["alice"]})
    assert r.status_code == 303
    cookie = _cookie(r)
    assert cookie["httponly"]
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/console"
    assert cookie["secure"] is False
    assert cookie["max-age"] == str(8 * 3600)
    # a forwarded https from a peer that is not a trusted proxy changes nothing
    r = await world.browser().get("/login", headers={"x-forwarded-proto": "https"})
    assert _cookie(r, "patgate_console_csrf")["secure"] is False


async def test_cookie_is_secure_when_configured(store: TokenStore) -> None:
    config = ConsoleConfig(secure_cookie="always", session_ttl=600)
    async with (
        make_console(store, config=config) as w,
        # A Secure cookie comes back only over HTTPS (what a browser does too).
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=w.app), base_url="https://testserver"
        ) as client,
    ):
        b = Browser(client)
        r = await b.get("/login")
        assert _cookie(r, "patgate_console_csrf")["secure"] is True
        r = await sign_in(b, w.secrets["alice"])
        cookie = _cookie(r)
        assert cookie["secure"] is True
        assert cookie["max-age"] == "600"


async def test_session_ends_after_its_lifetime(world: ConsoleWorld) -> None:
    b = await world.signed_in("alice")
    world.clock.now += 8 * 3600 - 5
    assert (await b.get("/tokens")).status_code == 200  # no sliding renewal, but still in
    world.clock.now += 10
    r = await b.get("/tokens")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"


async def test_logout_ends_the_session_server_side(
    world: ConsoleWorld, redis_client: aioredis.Redis, namespace: str
) -> None:
    b = await world.signed_in("alice")
    old = b.cookie
    assert old is not None
    assert await _key_exists(redis_client, namespace, old)
    r = await b.act("/logout")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"
    assert 'patgate_console=""' in r.headers["set-cookie"] or "max-age=0" in (
        r.headers["set-cookie"].lower()
    )
    assert not await _key_exists(redis_client, namespace, old)
    # the old cookie, replayed, is nobody's session
    replay = world.browser()
    replay.client.cookies.set("patgate_console", old, domain="testserver", path="/console")
    r = await replay.get("/tokens")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"


def _set(r: httpx.Response) -> str:
    """The session id a response sets."""
    return str(_cookie(r)["value"])


async def _session_keys(redis_client: aioredis.Redis, namespace: str) -> list[bytes]:
    pattern = "{" + namespace + ":console}:*"
    return [k async for k in redis_client.scan_iter(match=pattern, count=1000)]


async def test_anonymous_requests_store_nothing(
    world: ConsoleWorld, redis_client: aioredis.Redis, namespace: str
) -> None:
    """A stream of requests from browsers that never sign in writes no session (review
    of issue 15: each used to store one for the session's whole lifetime)."""
    for _ in range(50):
        b = world.browser()
        assert (await b.get("/login")).status_code == 200
        assert (await b.get("/tokens")).status_code == 303
        bad = await b.post("/login", {"csrf": "x" * 43, "token": "pat_nope"})
        assert bad.status_code == 400
    assert await _session_keys(redis_client, namespace) == []


async def test_sign_in_needs_the_csrf_cookie_it_was_given(world: ConsoleWorld) -> None:
    b = world.browser()
    page = await b.get("/login")
    csrf = hidden(page.text, "csrf")
    other = world.browser()  # a page of someone else's form: its token, not their cookie
    r = await other.post("/login", {"csrf": csrf, "token": world.secrets["alice"]})
    assert r.status_code == 400
    assert other.cookie is None
    r = await b.post("/login", {"csrf": csrf, "token": world.secrets["alice"]})
    assert r.status_code == 303


async def test_sign_in_gives_a_new_session_id(
    world: ConsoleWorld, redis_client: aioredis.Redis, namespace: str
) -> None:
    """No session fixation: a planted session id is never the signed-in one, and signing
    in again replaces the session (the old id no longer exists)."""
    planted = "planted-" + "x" * 40
    b = world.browser()
    b.client.cookies.set("patgate_console", planted, domain="testserver", path="/console")
    r = await sign_in(b, world.secrets["alice"])
    assert r.status_code == 303
    assert _set(r) != planted
    b = world.browser()
    r = await sign_in(b, world.secrets["alice"])
    first = _set(r)
    assert await _key_exists(redis_client, namespace, first)
    # The session's token is revoked: the session ends but stays (it carries the
    # message); signing in again replaces it with a new id.
    await world.tokens.revoke(Actor.system(), world.ids["alice"])
    assert (await b.get("/tokens")).status_code == 303
    assert await _key_exists(redis_client, namespace, first)
    r = await sign_in(b, world.secrets["bob"])
    assert r.status_code == 303
    second = _set(r)
    assert second is not None
    assert second != first
    assert not await _key_exists(redis_client, namespace, first)
    assert await _key_exists(redis_client, namespace, second)
    stale = world.browser()
    stale.client.cookies.set("patgate_console", first, domain="testserver", path="/console")
    assert (await stale.get("/tokens")).status_code == 303
    # and the signed-in session's csrf is not the anonymous form's
    assert await b.csrf() != hidden((await world.browser().get("/login")).text, "csrf")


@pytest.mark.parametrize("how", ["revoke", "delete", "disable", "no-permission", "allowlist"])
async def test_session_ends_with_its_management_token(world: ConsoleWorld, how: str) -> None:
    b = await world.signed_in("alice")
    assert (await b.get("/tokens")).status_code == 200
    system, tid = Actor.system(), world.ids["alice"]
    if how == "revoke":
        await world.tokens.revoke(system, tid)
    elif how == "delete":
        await world.tokens.delete(system, tid)
    elif how == "disable":
        await world.directory.put_user(system, "alice", {"org_id": "acme", "enabled": False})
    elif how == "no-permission":
        await world.directory.put_user(
            system, "alice", {"org_id": "acme", "can_manage_tokens": False}
        )
    else:
        await world.tokens.update(system, tid, {"allowed_ips": ["10.9.9.9"]})
    r = await b.get("/tokens")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"
    r = await b.get("/login")
    assert r.status_code == 200
    assert "Your session ended" in r.text
    # and a POST with the old page's csrf does nothing
    mine = await world.create("bob", "bobs")
    r = await b.post(f"/tokens/{mine.id}/revoke", {"csrf": hidden(r.text, "csrf")})
    assert r.status_code == 303
    assert (await world.token(mine.id)).revoked_at is None


async def test_a_token_without_management_scopes_cannot_sign_in(world: ConsoleWorld) -> None:
    secret = await world.add_caller("plain", "alice", ["threads:read"])
    b = world.browser()
    r = await sign_in(b, secret)
    assert r.status_code == 401
    assert "no management scopes" in r.text
    assert secret not in r.text
    assert (await b.get("/tokens")).status_code == 303


@pytest.mark.parametrize("kind", ["typo", "garbage", "empty", "revoked", "expired"])
async def test_a_bad_token_gets_a_generic_401(world: ConsoleWorld, kind: str) -> None:
    secret = world.secrets["bob"]
    if kind == "typo":
        secret = secret[:-3] + ("aaa" if not secret.endswith("aaa") else "bbb")
    elif kind == "garbage":
        secret = "hello <script>"
    elif kind == "empty":
        secret = "  "
    elif kind == "revoked":
        await world.tokens.revoke(Actor.system(), world.ids["bob"])
    else:
        world.clock.now += 31 * 86_400
    b = world.browser()
    r = await sign_in(b, secret)
    assert r.status_code == 401, r.text
    if kind == "empty":
        assert "paste a management token" in r.text
    else:
        assert _GENERIC in r.text
    assert 'aria-invalid="true"' in r.text
    assert (await b.get("/tokens")).status_code == 303


# -- host mode ------------------------------------------------------------------------------


async def test_host_mode_has_no_sign_in(host_world: ConsoleWorld) -> None:
    b = host_world.browser("acme/alice")
    assert (await b.get("/login")).status_code == 404
    r = await b.post("/login", {"token": host_world.secrets["alice"]})
    assert r.status_code == 404
    r = await b.get("/tokens")
    assert r.status_code == 200
    assert 'id="logout"' not in r.text  # the host signs users out


async def test_host_mode_nobody_signed_in(host_world: ConsoleWorld) -> None:
    r = await host_world.browser().get("/tokens")
    assert r.status_code == 401
    assert "Sign in to the product first" in r.text


@pytest.mark.parametrize("change", ["unknown", "other-org", "disabled", "no-permission"])
async def test_host_mode_refuses_users_without_access(
    host_world: ConsoleWorld, change: str
) -> None:
    who = "acme/bob"
    system = Actor.system()
    if change == "unknown":
        who = "acme/zed"
    elif change == "other-org":
        who = "nowhere/bob"
    elif change == "disabled":
        await host_world.directory.put_user(system, "bob", {"org_id": "acme", "enabled": False})
    else:
        await host_world.directory.put_user(
            system, "bob", {"org_id": "acme", "can_manage_tokens": False}
        )
    names = await host_world.names()
    b = host_world.browser(who)
    for path in ("/tokens", "/tokens/new", "/events"):
        r = await b.get(path)
        assert r.status_code == 403, (path, r.text)
        assert "No API token access" in r.text
    r = await b.post("/tokens/new", {"name": "x"})
    assert r.status_code == 403
    assert await host_world.names() == names


async def test_host_user_creates_a_token(host_world: ConsoleWorld) -> None:
    b = host_world.browser("acme/alice")
    csrf, form_id = await b.form("/tokens/new")
    body = {
        "csrf": csrf,
        "form_id": form_id,
        "name": "hosted",
        "access": "read",
        "expiration": "7d",
    }
    r = await b.post("/tokens/new", body)
    assert r.status_code == 201, r.text
    token = next(t for t in await host_world.all_tokens() if t.name == "hosted")
    assert (token.owner_kind, token.owner_id) == ("user", "alice")
    created = [json.loads(e) for e in await host_world.events()]
    event = next(e for e in created if e["type"] == "token.created" and e["token_id"] == token.id)
    assert event["actor"]["type"] == "user"
    assert event["actor"]["id"] == "alice"
    assert event["actor"]["token_id"] is None
    # a host admin gets the admin pages, a member does not
    assert (await b.get("/admin/tokens")).status_code == 403
    admin = host_world.browser("acme/admin")
    r = await admin.get("/admin/tokens")
    assert r.status_code == 200
    assert "hosted" in r.text


async def test_host_user_switch_starts_a_new_session(
    host_world: ConsoleWorld, redis_client: aioredis.Redis, namespace: str
) -> None:
    b = host_world.browser("acme/alice")
    csrf = await b.csrf()
    alice_session = b.cookie
    assert alice_session is not None
    mine = await host_world.create("bob", "bobs")
    # the host signed alice out and bob in, in the same browser
    b.user = "acme/bob"
    r = await b.post(f"/tokens/{mine.id}/revoke", {"csrf": csrf})
    assert r.status_code == 403
    assert "This form was not sent from" in r.text
    assert (await host_world.token(mine.id)).revoked_at is None
    r = await b.get("/tokens")
    assert r.status_code == 200
    assert b.cookie != alice_session
    assert hidden(r.text, "csrf") != csrf
    assert not await _key_exists(redis_client, namespace, alice_session)
    # bob's own csrf works
    r = await b.post(f"/tokens/{mine.id}/revoke", {"csrf": hidden(r.text, "csrf")})
    assert r.status_code == 303
    assert (await host_world.token(mine.id)).revoked_at is not None
