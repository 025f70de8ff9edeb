"""Every page (issue 15): the security headers, no inline script or style (the CSP
forbids both), every template rendered (StrictUndefined) in each state the console can
reach, bad query strings a 400 page — never a 500 — and the access rules of the
service layer: a member gets 403 on the admin pages and 404 on another user's token."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from patgate.gateway.console import ConsoleConfig
from patgate.gateway.lifecycle import Actor, Owner
from patgate.middleware.keys import partition_of_org
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import LastUsed
from patgate.middleware.store import TokenStore
from tests.gateway.console._world import (
    Browser,
    ConsoleWorld,
    host_world_fixture,  # noqa: F401
    make_console,
    world_fixture,  # noqa: F401
)

pytestmark = pytest.mark.anyio

_TAG = re.compile(r"<([a-zA-Z][\w-]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_ATTR = re.compile(r"""\s([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""")
_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.S | re.I)


def assert_clean(page: str, where: str = "") -> None:
    """No inline script, event handler, inline style or javascript: URL."""
    assert "<style" not in page.lower(), where
    for body in _SCRIPT.findall(page):
        assert body.strip() == "", where
    for tag, attrs in _TAG.findall(page):
        names = {}
        for m in _ATTR.finditer(attrs):
            names[m.group(1).lower()] = m.group(2) or m.group(3) or m.group(4) or ""
        if tag.lower() == "script":
            assert names.get("src", "").startswith("/console/static/"), (where, attrs)
        for name, value in names.items():
            assert not name.startswith("on"), (where, tag, name)
            assert name != "style", (where, tag)
            assert not value.strip().lower().startswith("javascript:"), (where, tag, name)


def assert_headers(r: httpx.Response, frame_ancestors: str = "'none'") -> None:
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == frame_ancestors
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    if frame_ancestors == "'none'":
        assert r.headers["x-frame-options"] == "DENY"
    else:
        assert "x-frame-options" not in r.headers
    assert r.headers["referrer-policy"] == "same-origin"


class Tour:
    """Every page a browser sees: each must be a clean, non-500 page."""

    def __init__(self) -> None:
        self.seen: list[httpx.Response] = []

    async def get(self, b: Browser, path: str, status: int = 200) -> httpx.Response:
        r = await b.get(path)
        assert r.status_code == status, (path, r.status_code, r.text[-2000:])
        self.record(r)
        return r

    def record(self, r: httpx.Response) -> None:
        assert r.status_code < 500, (r.request.url, r.text)
        if r.headers.get("content-type", "").startswith("text/html"):
            assert_clean(r.text, str(r.request.url))
            assert_headers(r)
            assert r.headers["cache-control"] == "no-store"
        self.seen.append(r)

    async def post(self, b: Browser, path: str, data: dict[str, Any]) -> httpx.Response:
        r = await b.act(path, data)
        self.record(r)
        if r.status_code == 303:  # the page it goes back to, with its flash
            location = r.headers["location"].removeprefix("/console")
            follow = await b.get(location)
            self.record(follow)
            return follow
        return r


async def _states(world: ConsoleWorld) -> dict[str, str]:
    """Tokens in each state a page can show."""
    system, now = Actor.system(), world.clock.now
    plain = await world.create("alice", "plain", scopes=["threads:read"], description="d")
    grace = await world.create("alice", "grace", scopes=["threads:read"])
    revoked = await world.create("alice", "revoked")
    await world.tokens.revoke(system, revoked.id)
    expiring = await world.create("alice", "expiring", expiration="1d")
    role = await world.create("alice", "role", role="Developer", scopes=[])
    listed = await world.create(
        "alice", "listed", allowed_ips=["10.0.0.0/8", "::1"], workspaces=["w1", "w2"]
    )
    empty = await world.create("alice", "empty", scopes=["threads:read"])
    await world.tokens.clear_scopes(system, empty.id)
    restricted = await world.create("alice", "restricted", restricted={"threads": ["read"]})
    org = await world.create("org", "svc <b>&amp;", expiration="never")
    never = await world.create("bob", "bobs")
    world.clock.now = now + 2 * 86_400  # "expiring" has expired
    await world.tokens.regenerate(system, grace.id, grace_period=3600.0)
    return {"plain": plain.id, "grace": grace.id, "revoked": revoked.id, "expired": expiring.id,
            "role": role.id, "listed": listed.id, "empty": empty.id,
            "restricted": restricted.id, "org": org.id, "bobs": never.id}  # fmt: skip


async def test_every_page_in_every_state_renders_clean(world: ConsoleWorld) -> None:
    tour = Tour()
    ids = await _states(world)
    alice, admin = await world.signed_in("alice"), await world.signed_in("admin")
    login = world.browser()
    await tour.get(login, "/login")
    r = await login.post("/login", {"csrf": "x", "token": "x"})
    tour.record(r)

    for status in ("", "active", "expired", "revoked"):
        r = await tour.get(alice, f"/tokens?status={status}")
    assert "No token matches." in (await tour.get(alice, "/tokens?q=nothing-like-it")).text
    await tour.get(alice, "/tokens/new")
    await tour.get(admin, "/tokens/new")
    for name, tid in ids.items():
        who = alice if name not in ("org", "bobs") else admin
        page = await tour.get(who, f"/tokens/{tid}")
        assert f"/tokens/{tid}" in page.text
        await tour.get(admin, f"/tokens/{tid}")  # an admin's view of another's token
    detail = (await tour.get(alice, f"/tokens/{ids['grace']}")).text
    assert 'id="previous-secret"' in detail
    assert 'id="end-grace"' in detail
    assert "Revoked" in (await tour.get(alice, f"/tokens/{ids['revoked']}")).text
    assert "svc &lt;b&gt;&amp;amp;" in (await tour.get(admin, f"/tokens/{ids['org']}")).text
    assert "10.0.0.0/8" in (await tour.get(alice, f"/tokens/{ids['listed']}")).text
    for query in ("", "?status=all", "?status=revoked", "?type=personal", "?q=svc", "?q=none"):
        await tour.get(admin, "/admin/tokens" + query)
    await tour.get(admin, "/admin/users")
    await tour.get(admin, "/admin/org")
    for who in (alice, admin):
        await tour.get(who, "/events")
        await tour.get(who, "/events?type=token.created")
        await tour.get(who, f"/events?token_id={ids['plain']}&actor=alice")
        await tour.get(who, "/events?type=token.registered")  # nothing: the empty table

    # every action's result page (its flash), success and refusal
    t = ids["plain"]
    await tour.post(alice, f"/tokens/{t}/scopes/add", {"scope": "messages:read"})
    await tour.post(alice, f"/tokens/{t}/scopes/add", {"resource": "threads", "operation": "list"})
    await tour.post(alice, f"/tokens/{t}/scopes/add", {"scope": ""})
    await tour.post(alice, f"/tokens/{t}/scopes/add", {"scope": "tokens:admin"})
    await tour.post(alice, f"/tokens/{t}/scopes/remove", {"scope": "messages:read"})
    await tour.post(alice, f"/tokens/{t}/allowlist", {"allowed_ips": "10.1.2.3\n192.168.0.0/16"})
    await tour.post(alice, f"/tokens/{t}/allowlist", {"allowed_ips": "not-an-ip"})
    await tour.post(alice, f"/tokens/{t}/allowlist", {"allowed_ips": ""})
    await tour.post(alice, f"/tokens/{t}/role", {"role": "Developer"})
    await tour.post(alice, f"/tokens/{t}/role", {"role": "Nope"})
    await tour.post(alice, f"/tokens/{t}/role", {"role": ""})
    await tour.post(alice, f"/tokens/{ids['grace']}/end-grace", {})
    await tour.post(alice, f"/tokens/{ids['grace']}/end-grace", {})
    await tour.post(alice, f"/tokens/{t}/scopes/clear", {})
    await tour.post(alice, f"/tokens/{t}/regenerate", {"form_id": "stale"})
    await tour.post(alice, f"/tokens/{t}/revoke", {})
    await tour.post(alice, f"/tokens/{t}/revoke", {})
    await tour.post(alice, f"/tokens/{t}/delete", {})
    await tour.post(alice, "/tokens/delete-all", {"confirm": "nope"})
    await tour.post(admin, f"/admin/tokens/{ids['org']}/revoke", {"confirm_label": "wrong"})
    await tour.post(admin, f"/tokens/{ids['org']}/delete", {"confirm_label": "wrong"})
    await tour.post(admin, "/admin/users", {"id": "", "email": "x@acme.io"})
    await tour.post(admin, "/admin/users", {"id": "bob", "email": "b@acme.io"})
    await tour.post(admin, "/admin/users", {"id": "carol", "email": "not-an-email"})
    await tour.post(admin, "/admin/users", {"id": "carol", "email": "carol@acme.io"})
    await tour.post(admin, "/admin/users/carol", {"role": "admin", "enabled": "on"})
    await tour.post(admin, "/admin/users/nobody", {"role": "admin"})
    await tour.post(admin, "/admin/users/carol/remove", {})
    await tour.post(admin, "/admin/org", {"name": "Acme", "token_limit": "lots"})
    await tour.post(admin, "/admin/org", {"name": "Acme", "roles": "no colon here"})
    await tour.post(admin, "/admin/org", {"name": "Acme", "max_lifetime": "forever"})
    await tour.post(
        admin,
        "/admin/org",
        {"name": "Acme", "resources": "threads messages", "roles": "Dev: threads:read",
         "max_grace_period": "86400", "allow_never": "on", "token_limit": "50"},
    )  # fmt: skip
    org = await world.store.get_org("acme")
    assert org is not None
    assert org.name == "Acme"
    assert org.token_limit == 50
    await tour.post(alice, "/tokens/delete-all", {"confirm": "delete all"})
    # alice has no token left, not even the one she signed in with
    assert not [
        t for t in await world.all_tokens() if t.owner_id == "alice" and t.revoked_at is None
    ]
    r = await alice.get("/tokens")
    assert r.status_code == 303
    # error pages
    await tour.get(admin, "/nowhere", 404)
    await tour.get(admin, "/tokens/tok_0000000000000000", 404)
    await tour.get(admin, "/static/nothing.css", 404)
    assert len(tour.seen) > 90


async def test_an_empty_token_list(host_world: ConsoleWorld) -> None:
    await host_world.tokens.delete(Actor.system(), host_world.ids["bob"])
    tour = Tour()
    b = host_world.browser("acme/bob")
    r = await tour.get(b, "/tokens")
    assert "You have no API tokens yet." in r.text
    r = await tour.get(b, "/events")
    await tour.get(b, "/tokens/new")
    await tour.get(host_world.browser(), "/tokens", 401)
    await tour.get(host_world.browser("acme/zed"), "/tokens", 403)


@pytest.mark.parametrize(
    "path",
    ["/login", "/tokens", "/tokens/new", "/admin/tokens", "/admin/users", "/admin/org",
     "/events", "/nowhere", "/static/console.css", "/static/console.js"],
)  # fmt: skip
async def test_security_headers(world: ConsoleWorld, path: str) -> None:
    b = world.browser() if path == "/login" else await world.signed_in("admin")
    r = await b.get(path)
    assert r.status_code in (200, 404)
    assert_headers(r)
    if r.headers["content-type"].startswith("text/html"):
        assert_clean(r.text, path)
        assert r.headers["cache-control"] == "no-store"


async def test_frame_ancestors_from_the_config(store: TokenStore) -> None:
    ancestors = "'self' https://host.example"
    async with make_console(store, config=ConsoleConfig(frame_ancestors=ancestors)) as w:
        b = await w.signed_in("alice")
        for path in ("/tokens", "/login", "/static/console.js"):
            assert_headers(await b.get(path), ancestors)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("console.css", "text/css"), ("console.js", "text/javascript")],
)
async def test_static_assets_are_cached_by_etag(
    world: ConsoleWorld, name: str, content_type: str
) -> None:
    b = world.browser()  # no sign-in needed
    r = await b.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(content_type)
    etag = r.headers["etag"]
    assert etag.startswith('"')
    assert r.content
    assert "no-store" not in r.headers["cache-control"]
    again = await b.get(f"/static/{name}", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = await b.get(f"/static/{name}", headers={"if-none-match": '"stale"'})
    assert other.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/tokens?status=bogus",
        "/tokens?cursor=garbage",
        "/tokens?cursor=" + "9" * 500,
        "/tokens?q=" + "x" * 5000,
        "/admin/tokens?status=bogus",
        "/admin/tokens?type=bogus",
        "/admin/tokens?cursor=%7B%7D",
        "/admin/tokens?q=" + "y" * 5000,
        "/events?type=bogus",
        "/events?cursor=0-0",
        "/events?cursor=abc",
    ],
)
async def test_bad_queries_are_400_pages(world: ConsoleWorld, path: str) -> None:
    b = await world.signed_in("admin")
    r = await b.get(path)
    assert r.status_code == 400, (path, r.status_code, r.text[-500:])
    assert_clean(r.text, path)


@pytest.mark.parametrize(
    "path",
    [
        "/tokens?q=%00%ff",
        "/tokens?q=%3Cscript%3E&status=",
        "/admin/tokens?q=%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E",
        "/events?token_id=" + "z" * 5000,
        "/events?actor=%00",
        "/events?actor=%22%20onmouseover=%22x",
        "/tokens?status=active&status=revoked&q=a&q=b",
    ],
)
async def test_odd_queries_are_pages_not_errors(world: ConsoleWorld, path: str) -> None:
    b = await world.signed_in("admin")
    r = await b.get(path)
    assert r.status_code in (200, 400), (path, r.status_code)
    assert_clean(r.text, path)  # what was typed is escaped back into the inputs


@pytest.mark.parametrize(
    "path",
    ["/tokens/%00", "/tokens/" + "a" * 3000, "/tokens/..%2F..", "/tokens/tok_%ff%fe"],
)
async def test_odd_token_ids_are_404_pages(world: ConsoleWorld, path: str) -> None:
    b = await world.signed_in("alice")
    r = await b.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    r = await b.act(path + "/revoke")
    assert r.status_code < 500


# -- access rules --------------------------------------------------------------------------


async def test_a_member_gets_403_on_admin_pages(world: ConsoleWorld) -> None:
    b = await world.signed_in("alice")
    for path in ("/admin/tokens", "/admin/users", "/admin/org"):
        r = await b.get(path)
        assert r.status_code == 403, (path, r.text)
        assert_clean(r.text)
    page = (await b.get("/tokens")).text
    for link in ("/console/admin/tokens", "/console/admin/users", "/console/admin/org"):
        assert f'href="{link}"' not in page
    assert 'href="/console/events"' in page
    admin_page = (await (await world.signed_in("admin")).get("/tokens")).text
    for link in ("/console/admin/tokens", "/console/admin/users", "/console/admin/org"):
        assert f'href="{link}"' in admin_page


async def test_a_member_changes_nothing_through_admin_forms(world: ConsoleWorld) -> None:
    org_token = await world.create("org", "svc")
    b = await world.signed_in("alice")
    names, events = await world.names(), await world.event_count()
    r = await b.act(f"/admin/tokens/{org_token.id}/revoke", {"confirm_label": "svc"})
    assert r.status_code in (303, 403, 404)
    r = await b.act("/admin/users", {"id": "carol", "email": "carol@acme.io"})
    assert r.status_code == 403
    r = await b.act("/admin/users/bob", {"role": "admin", "enabled": "on"})
    assert r.status_code in (303, 403)
    r = await b.act("/admin/users/bob/remove")
    assert r.status_code in (303, 403)
    r = await b.act("/admin/org", {"name": "Hacked"})
    assert r.status_code == 403
    assert await world.names() == names
    assert await world.event_count() == events
    assert (await world.token(org_token.id)).revoked_at is None
    bob = await world.store.get_user("acme", "bob")
    assert bob is not None
    assert bob.role == "member"
    assert bob.enabled
    assert await world.store.get_user("acme", "carol") is None
    org = await world.store.get_org("acme")
    assert org is not None
    assert org.name != "Hacked"


async def test_a_member_cannot_see_or_touch_another_users_token(world: ConsoleWorld) -> None:
    theirs = await world.create("bob", "bobs", scopes=["threads:read"])
    org_token = await world.create("org", "svc")
    b = await world.signed_in("alice")
    for tid in (theirs.id, org_token.id):
        r = await b.get(f"/tokens/{tid}")
        assert r.status_code == 404, r.text
        assert "bobs" not in r.text
        assert "svc" not in r.text
    assert "bobs" not in (await b.get("/tokens")).text
    assert "bobs" not in (await b.get("/events")).text
    events = await world.event_count()
    for action, body in [
        ("edit", {"name": "mine now", "description": ""}),
        ("scopes/add", {"scope": "messages:read"}),
        ("scopes/clear", {}),
        ("allowlist", {"allowed_ips": "10.0.0.1"}),
        ("revoke", {}),
        ("delete", {}),
        ("end-grace", {}),
    ]:
        r = await b.act(f"/tokens/{theirs.id}/{action}", body)
        assert r.status_code in (303, 404), (action, r.status_code)
    after = await world.token(theirs.id)
    assert (after.name, after.revoked_at, list(after.scopes)) == ("bobs", None, ["threads:read"])
    assert await world.event_count() == events


_ODD_VALUES = ["", " ", "\x00", "x" * 20_000, "<script>alert(1)</script>", "-1", "1e309",
               "99999999999999999999", "☃", "a:b:c", "../..", "%00"]  # fmt: skip


async def test_odd_form_values_never_fail(world: ConsoleWorld) -> None:
    """Every field of every form, each odd value: a page or a redirect, never a 500."""
    token = await world.create("admin", "mine", scopes=["threads:read"])
    b = await world.signed_in("admin")
    fields = {
        "/tokens/new": ["name", "description", "expiration", "expires_on", "access", "role",
                        "op", "scopes", "workspace_scope", "workspaces", "owner", "allowed_ips"],
        f"/tokens/{token.id}/edit": ["name", "description", "workspace_scope", "workspaces"],
        f"/tokens/{token.id}/allowlist": ["allowed_ips"],
        f"/tokens/{token.id}/role": ["role"],
        f"/tokens/{token.id}/scopes/add": ["scope", "resource", "operation"],
        f"/tokens/{token.id}/scopes/remove": ["scope"],
        f"/tokens/{token.id}/regenerate": ["expiration", "expires_on", "grace_period"],
        "/admin/users": ["id", "email", "name", "role"],
        "/admin/users/bob": ["role", "enabled", "can_manage_tokens"],
        "/admin/org": ["name", "token_limit", "owner_token_limit", "max_lifetime",
                       "max_grace_period", "resources", "roles"],
    }  # fmt: skip
    base = {"name": "n", "access": "scopes", "scopes": "threads:read", "expiration": "custom",
            "workspace_scope": "some", "workspaces": "w1", "email": "e@acme.io",
            "id": "u1"}  # fmt: skip
    csrf = await b.csrf()
    for path, names in fields.items():
        for name in names:
            for value in _ODD_VALUES:
                data = {**base, "csrf": csrf, name: value}
                if path.endswith(("/new", "/regenerate")):
                    data["form_id"] = (await b.form("/tokens/new"))[1]
                r = await b.post(path, data)
                assert r.status_code < 500, (path, name, value[:30], r.text[-300:])
                if r.headers.get("content-type", "").startswith("text/html"):
                    assert_clean(r.text, path)
    # bodies that are not a readable form
    for raw in (b"csrf=" + csrf.encode() + b"&name=%ff%fe", b"\xff\xfe", b"a=" * 3000):
        r = await b.client.post(
            f"/console/tokens/{token.id}/edit",
            content=raw,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code in (400, 403), r.status_code
    r = await b.client.post(
        "/console/tokens/new",
        content=b"name=" + b"x" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413
    assert (await world.token(token.id)).status(world.clock()) in ("active", "revoked")


async def test_last_used_and_external_tokens_render(world: ConsoleWorld) -> None:
    used = await world.create("alice", "used", scopes=["threads:read"])
    grace = await world.create("alice", "grace", scopes=["threads:read"])
    external = await world.tokens.register(
        Actor.system(),
        name="from-idp",
        sha256="ab" * 32,
        issuer="idp.example",
        owner=Owner("user", "alice", "acme"),
        scopes=["threads:read"],
    )
    recorder = LastUsedRecorder(world.store, Metrics())
    agent = '"><script>alert(1)</script>'
    for tid in (used.id, grace.id, external.id):
        recorder.record(
            partition_of_org("acme"),
            tid,
            LastUsed(world.clock.now, "GET", "/v1/x?<b>", "::1", agent),
        )
    assert await recorder.flush() == 3
    await world.tokens.regenerate(Actor.system(), grace.id, grace_period=3600.0)
    tour = Tour()
    alice, admin = await world.signed_in("alice"), await world.signed_in("admin")
    page = await tour.get(alice, "/tokens")
    assert "/v1/x?&lt;b&gt;" in page.text
    assert "<script>alert" not in page.text
    for tid in (used.id, grace.id, external.id):
        await tour.get(alice, f"/tokens/{tid}")
        await tour.get(admin, f"/tokens/{tid}")
    detail = (await tour.get(alice, f"/tokens/{external.id}")).text
    assert "issued by idp.example" in detail
    assert 'id="open-regenerate"' not in detail  # an external token has no secret here
    await tour.get(admin, "/admin/tokens?status=all")
    await tour.get(admin, "/admin/tokens?type=oauth")
