"""What a security review of the console found (issue 15), each pinned by a test:

- a host-signed-in admin whose grant the host narrowed gets no admin page the API
  would refuse them (their console scopes are bounded like their tokens');
- saving the organization form keeps a lifetime or grace period the presets lack;
- one-time form ids are consumed atomically: of two concurrent posts, one wins;
- digits outside ASCII are a clear 400, never a 500;
- an organization token cannot "Delete all" the org's tokens past their labels.
"""

from __future__ import annotations

import asyncio

import pytest

from patgate.gateway.lifecycle import Actor, Owner
from tests.gateway.console._world import (
    ConsoleWorld,
    hidden,
    host_world_fixture,  # noqa: F401
    world_fixture,  # noqa: F401
)

pytestmark = pytest.mark.anyio


async def test_host_admin_is_bounded_by_their_grant(host_world: ConsoleWorld) -> None:
    await host_world.directory.put_user(
        Actor.system(), "bob", {"org_id": "acme", "role": "admin",
                                "grantable_scopes": ["threads:read"]},
    )  # fmt: skip
    b = host_world.browser("acme/bob")
    page = await b.get("/tokens")
    assert page.status_code == 200
    assert 'href="/console/admin/tokens"' not in page.text
    for path in ("/admin/tokens", "/admin/users", "/admin/org"):
        assert (await b.get(path)).status_code == 403, path
    # An admin with the full grant has them (the same role, nothing narrowed).
    admin = host_world.browser("acme/admin")
    assert (await admin.get("/admin/users")).status_code == 200


@pytest.mark.parametrize(
    ("field", "seconds", "label"),
    [("max_lifetime", 14 * 86_400, "14 days (current)"),
     ("max_grace_period", 7200, "2 hours (current)")],
)  # fmt: skip
async def test_org_form_keeps_values_the_presets_lack(
    world: ConsoleWorld, field: str, seconds: int, label: str
) -> None:
    await world.directory.put_org(Actor.system(), "acme", {field: seconds})
    b = await world.signed_in("admin")
    page = await b.get("/admin/org")
    assert f'<option value="{seconds}" selected>{label}</option>' in page.text
    # Rename only, posting the form as the browser would: the value survives.
    form = {"csrf": hidden(page.text, "csrf"), "name": "Acme Inc", field: str(seconds),
            "allow_never": "on", "default_can_manage_tokens": "on"}  # fmt: skip
    other = "max_grace_period" if field == "max_lifetime" else "max_lifetime"
    if other == "max_grace_period":
        form[other] = "0"
    r = await b.post("/admin/org", form)
    assert r.status_code == 303, r.text
    org = await world.store.get_org("acme")
    assert org is not None
    assert org.name == "Acme Inc"
    assert getattr(org, field) == seconds


async def test_a_one_time_form_is_used_once_under_concurrency(world: ConsoleWorld) -> None:
    token = await world.create("alice", "rotate-me", scopes=["threads:read"])
    b = await world.signed_in("alice")
    page = await b.get(f"/tokens/{token.id}")
    form = {"csrf": hidden(page.text, "csrf"), "form_id": hidden(page.text, "form_id"),
            "expiration": "7d", "grace_period": "0"}  # fmt: skip
    answers = await asyncio.gather(
        *[b.post(f"/tokens/{token.id}/regenerate", form) for _ in range(5)]
    )
    assert sorted(r.status_code for r in answers) == [200, 409, 409, 409, 409]
    regenerated = [e for e in await world.events() if b'"token.regenerated"' in e]
    assert len(regenerated) == 1


@pytest.mark.parametrize(
    ("path", "field"),
    [("/admin/org", "token_limit"), ("/admin/org", "max_grace_period")],
)
async def test_non_ascii_digits_are_a_400(world: ConsoleWorld, path: str, field: str) -> None:
    b = await world.signed_in("admin")
    page = await b.get(path)
    r = await b.post(path, {"csrf": hidden(page.text, "csrf"), "name": "acme", field: "²"})
    assert r.status_code == 400
    assert field in r.text


async def test_regenerate_grace_in_other_digits_is_refused(world: ConsoleWorld) -> None:
    token = await world.create("alice", "graceful", scopes=["threads:read"])
    b = await world.signed_in("alice")
    page = await b.get(f"/tokens/{token.id}")
    r = await b.post(
        f"/tokens/{token.id}/regenerate",
        {"csrf": hidden(page.text, "csrf"), "form_id": hidden(page.text, "form_id"),
         "expiration": "7d", "grace_period": "٣"},
    )  # fmt: skip
    assert r.status_code == 303
    assert (await world.token(token.id)).issued_at == token.issued_at  # unchanged


async def test_org_token_cannot_delete_all(world: ConsoleWorld) -> None:
    keep = await world.create("org", "service-a", scopes=["threads:read"])
    token, secret = await world.tokens.create(
        Actor.system(), name="org-mgmt", owner=Owner("org", "acme"),
        scopes=["tokens:read:own", "tokens:write:own"],
    )  # fmt: skip
    world.secrets["org"] = secret
    b = await world.signed_in("org")
    page = await b.get("/tokens")
    assert 'id="open-delete-all"' not in page.text
    r = await b.post("/tokens/delete-all", {"csrf": hidden(page.text, "csrf"),
                                             "confirm": "delete all"})  # fmt: skip
    assert r.status_code == 303
    assert (await world.token(keep.id)).revoked_at is None
    assert (await world.token(token.id)).revoked_at is None
