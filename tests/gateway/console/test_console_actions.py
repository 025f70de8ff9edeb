"""Each console action's effect in the store (issue 15), through the same service the
API uses: scopes, allowlist, role, revoke, regenerate, grace, delete, the org token's
typed label, the admin's users and organization forms, and paging."""

from __future__ import annotations

import html
import re

import pytest

from tests.gateway.console._world import Browser, ConsoleWorld, hidden, world_fixture  # noqa: F401

pytestmark = pytest.mark.anyio


def _flash(page: str) -> str:
    found = re.search(r'id="flash">([^<]*)<', page)
    assert found is not None, page
    return html.unescape(found.group(1))


async def _done(world: ConsoleWorld, b: Browser, path: str, data: dict[str, str]) -> str:
    r = await b.act(path, data)
    assert r.status_code == 303, r.text
    follow = await b.get(r.headers["location"].removeprefix("/console"))
    assert follow.status_code == 200
    return _flash(follow.text)


async def test_own_token_actions(world: ConsoleWorld) -> None:
    t = await world.create("alice", "mine", scopes=["threads:read"])
    b = await world.signed_in("alice")
    url = f"/tokens/{t.id}"
    assert "Added messages:read" in await _done(
        world, b, url + "/scopes/add", {"scope": "messages:read"}
    )
    picked = {"resource": "threads", "operation": "list"}
    assert "Added threads:list" in await _done(world, b, url + "/scopes/add", picked)
    assert set((await world.token(t.id)).scopes) == {
        "threads:read",
        "threads:list",
        "messages:read",
    }
    assert "Removed" in await _done(world, b, url + "/scopes/remove", {"scope": "threads:read"})
    assert set((await world.token(t.id)).scopes) == {"threads:list", "messages:read"}
    refused = await _done(world, b, url + "/scopes/add", {"scope": "tokens:admin"})
    assert "tokens:admin" in refused
    assert "tokens:admin" not in (await world.token(t.id)).scopes
    ips = {"allowed_ips": "10.0.0.1\n192.168.0.0/16"}
    assert "allowlist saved" in await _done(world, b, url + "/allowlist", ips)
    assert list((await world.token(t.id)).allowed_ips or ()) == ["10.0.0.1", "192.168.0.0/16"]
    assert "any address" in await _done(world, b, url + "/allowlist", {"allowed_ips": ""})
    assert (await world.token(t.id)).allowed_ips is None
    assert "Role set to Developer" in await _done(world, b, url + "/role", {"role": "Developer"})
    assert (await world.token(t.id)).role == "Developer"
    assert "Role removed" in await _done(world, b, url + "/role", {"role": ""})
    assert (await world.token(t.id)).role is None
    assert "All scopes removed" in await _done(world, b, url + "/scopes/clear", {})
    assert list((await world.token(t.id)).scopes) == []

    # regenerate with a grace period, then end it
    csrf, form_id = await b.form(url)
    r = await b.post(
        url + "/regenerate",
        {"csrf": csrf, "form_id": form_id, "expiration": "7d", "grace_period": "3600"},
    )
    assert r.status_code == 200
    rotated = await world.token(t.id)
    assert rotated.previous is not None
    assert "no longer works" in await _done(world, b, url + "/end-grace", {})
    assert (await world.token(t.id)).previous is None or (
        (await world.token(t.id)).to_json(world.clock())["previous_secret"]["status"] != "active"
    )
    assert "revoked" in await _done(world, b, url + "/revoke", {})
    assert (await world.token(t.id)).revoked_at is not None
    # a revoked token is brought back by regenerating it
    csrf, form_id = await b.form(url)
    r = await b.post(url + "/regenerate", {"csrf": csrf, "form_id": form_id, "expiration": "1d"})
    assert r.status_code == 200
    assert (await world.token(t.id)).status(world.clock()) == "active"
    assert "deleted" in await _done(world, b, url + "/delete", {})
    assert "mine" not in await world.names()


async def test_org_tokens_need_their_label(world: ConsoleWorld) -> None:
    svc = await world.create("org", "svc")
    other = await world.create("org", "other")
    b = await world.signed_in("admin")
    for path in (f"/admin/tokens/{svc.id}/revoke", f"/tokens/{svc.id}/revoke"):
        for label in ("", "SVC", "svc "[:3] + "x"):
            flash = await _done(world, b, path, {"confirm_label": label, "back": "/admin/tokens"})
            assert "type the token's label exactly" in flash
    assert (await world.token(svc.id)).revoked_at is None
    flash = await _done(world, b, f"/tokens/{other.id}/delete", {"confirm_label": "svc"})
    assert "type the token's label exactly to delete" in flash
    assert "other" in await world.names()
    flash = await _done(
        world,
        b,
        f"/admin/tokens/{svc.id}/revoke",
        {"confirm_label": "svc", "back": "/admin/tokens"},
    )
    assert flash == "Token svc revoked."
    assert (await world.token(svc.id)).revoked_at is not None
    assert "deleted" in await _done(
        world, b, f"/tokens/{other.id}/delete", {"confirm_label": "other"}
    )
    assert "other" not in await world.names()
    # a member's org-owned attempt: the option is not offered, and is ignored if sent
    alice = await world.signed_in("alice")
    csrf, form_id = await alice.form("/tokens/new")
    assert 'name="owner"' not in (await alice.get("/tokens/new")).text
    body = {"csrf": csrf, "form_id": form_id, "name": "sneaky", "owner": "org", "access": "read"}
    r = await alice.post("/tokens/new", body)
    assert r.status_code == 201
    sneaky = next(t for t in await world.all_tokens() if t.name == "sneaky")
    assert (sneaky.owner_kind, sneaky.owner_id) == ("user", "alice")


async def test_delete_all_needs_the_phrase(world: ConsoleWorld) -> None:
    await world.create("alice", "one")
    await world.create("alice", "two")
    b = await world.signed_in("alice")
    assert "delete all" in await _done(world, b, "/tokens/delete-all", {"confirm": "Delete All"})
    assert {"one", "two"} <= set(await world.names())
    r = await b.act("/tokens/delete-all", {"confirm": "delete all"})
    assert r.status_code == 303
    left = [t.name for t in await world.all_tokens() if t.owner_id == "alice"]
    assert left == []
    assert {"mgmt-bob", "admin"} & set(await world.names())


async def test_admin_users_and_org(world: ConsoleWorld) -> None:
    b = await world.signed_in("admin")
    await world.create("bob", "bobs")
    r = await b.act("/admin/users", {"id": "carol", "email": "carol@acme.io", "name": "Carol"})
    assert r.status_code == 303
    carol = await world.store.get_user("acme", "carol")
    assert carol is not None
    assert carol.email == "carol@acme.io"
    r = await b.act("/admin/users", {"id": "carol", "email": "c2@acme.io"})
    assert r.status_code == 400
    assert "exists already" in r.text
    assert 'value="c2@acme.io"' in r.text  # kept
    flash = await _done(world, b, "/admin/users/bob", {"role": "member", "can_manage_tokens": "on"})
    assert flash == "Bob: disabled, member, may manage tokens."
    bob = await world.store.get_user("acme", "bob")
    assert bob is not None
    assert not bob.enabled
    flash = await _done(world, b, "/admin/users/bob/remove", {})
    assert "2 personal tokens revoked" in flash
    assert await world.store.get_user("acme", "bob") is None
    body = {"name": "Acme Inc", "token_limit": "25", "owner_token_limit": "5",
            "max_lifetime": "90d", "max_grace_period": "3600",
            "resources": "threads messages files",
            "roles": "Dev: threads:read\nOps: files:*"}  # fmt: skip
    assert "saved" in await _done(world, b, "/admin/org", body)
    org = await world.store.get_org("acme")
    assert org is not None
    assert (org.name, org.token_limit, org.owner_token_limit) == ("Acme Inc", 25, 5)
    assert org.max_lifetime == 90 * 86_400
    assert org.resources == ("threads", "messages", "files")
    assert set(org.roles) == {"Dev", "Ops"}
    page = (await b.get("/admin/org")).text
    assert '<option value="90d" selected>' in page
    assert "Ops: files:*" in page
    r = await b.act("/admin/org", {"name": "Acme Inc", "token_limit": "many"})
    assert r.status_code == 400
    assert 'value="many"' in r.text
    assert (await world.store.get_org("acme")).token_limit == 25  # type: ignore[union-attr]


async def test_paging(world: ConsoleWorld) -> None:
    for n in range(55):
        await world.create("alice", f"t{n:02d}")
    b = await world.signed_in("alice")
    seen: list[str] = []
    path = "/tokens"
    for _ in range(5):
        page = (await b.get(path)).text
        seen += re.findall(r'data-name="([^"]+)"', page)
        found = re.search(r'href="/console(/tokens\?[^"]+)" id="next-page"', page)
        if found is None:
            break
        path = html.unescape(found.group(1))
    assert len(seen) == len(set(seen)) == 56
    admin = await world.signed_in("admin")
    seen = []
    path = "/admin/tokens?status=all"
    for _ in range(5):
        page = (await admin.get(path)).text
        seen += re.findall(r'data-name="([^"]+)"', page)
        found = re.search(r'href="/console(/admin/tokens\?[^"]+)" id="next-page"', page)
        if found is None:
            break
        path = html.unescape(found.group(1))
    assert len(seen) == len(set(seen)) == len(await world.all_tokens())
    # the audit log pages too
    events, path = [], "/events"
    for _ in range(5):
        page = (await admin.get(path)).text
        events += re.findall(r'<tr data-type="([^"]+)">', page)
        found = re.search(r'href="/console(/events\?[^"]+)" id="next-page"', page)
        if found is None:
            break
        path = html.unescape(found.group(1))
    assert len(events) == await world.event_count()
    assert hidden(page, "csrf")
