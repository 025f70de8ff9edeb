"""The create and edit forms on bad input (issue 15): the service's message on the
page, a 4xx, what was typed still in the inputs, and nothing created or changed."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from tests.gateway.console._world import ConsoleWorld, hidden, world_fixture  # noqa: F401

pytestmark = pytest.mark.anyio

GOOD = {
    "name": "ci",
    "description": "deploys from CI",
    "expiration": "90d",
    "access": "scopes",
    "scopes": "threads:read messages:list",
    "workspace_scope": "all",
    "owner": "me",
}


def _error(page: str) -> str:
    found = re.search(r'id="form-error">([^<]*)<', page)
    assert found is not None, page
    return html.unescape(found.group(1))


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"name": ""}, 400, "name: must be 1 to 100 characters"),
        ({"name": "   "}, 400, "name: must be 1 to 100 characters"),
        ({"name": "x" * 101}, 400, "name: must be 1 to 100 characters"),
        ({"name": "taken"}, 409, "a token with this name already exists"),
        ({"expiration": "custom", "expires_on": "2020-01-01"}, 400, "must be in the future"),
        ({"expiration": "custom", "expires_on": ""}, 400, "expires_at: choose a date"),
        ({"expiration": "custom", "expires_on": "31/12/2030"}, 400, "is not a date (YYYY-MM-DD)"),
        ({"expiration": "forever"}, 400, "expiration"),
        ({"scopes": "threads"}, 400, "scopes: invalid scope 'threads'"),
        ({"scopes": "a:b:c:d:e"}, 400, "scopes: invalid scope 'a:b:c:d:e'"),
        ({"scopes": "threads:fly"}, 400, "unknown action 'fly'"),
        ({"scopes": "tokens:admin"}, 403, "tokens:admin"),
        ({"scopes": ""}, 400, "scopes: list at least one scope"),
        ({"access": "restricted"}, 400, "restricted: tick at least one operation"),
        ({"access": "role", "role": "Nope"}, 400, "'Nope' is not a role of this organization"),
        ({"access": "bogus"}, 400, "access: choose all, read only"),
        ({"workspace_scope": "some", "workspaces": " , "}, 400, "workspaces: list at least one"),
        ({"allowed_ips": "999.1.1.1"}, 400, "'999.1.1.1' is not an IP address or CIDR"),
        ({"allowed_ips": "10.0.0.0/33"}, 400, "prefix length over /32"),
    ],
)  # fmt: skip
async def test_create_refuses_bad_input_and_keeps_the_form(
    world: ConsoleWorld, change: dict[str, str], status: int, message: str
) -> None:
    await world.create("alice", "taken")
    b = await world.signed_in("alice")
    csrf, form_id = await b.form("/tokens/new")
    before, events = await world.names(), await world.event_count()
    sent = {**GOOD, **change}
    r = await b.post("/tokens/new", {"csrf": csrf, "form_id": form_id, **sent})
    assert r.status_code == status, r.text
    assert message in _error(r.text)
    # nothing created, nothing audited
    assert await world.names() == before
    assert await world.event_count() == events
    # what was typed is still there
    page = r.text
    assert f'value="{html.escape(sent["name"])}"' in page
    assert ">deploys from CI</textarea>" in page
    assert f'<option value="{sent["expiration"]}" selected>' in page or sent["expiration"] == (
        "forever"
    )
    if sent["access"] == "scopes":
        assert f">{html.escape(sent['scopes'])}</textarea>" in page
        assert '<input type="radio" name="access" value="scopes" checked>' in page
    if "expires_on" in sent:
        assert f'name="expires_on" value="{html.escape(sent["expires_on"])}"' in page
    if "allowed_ips" in sent:
        assert f">{sent['allowed_ips']}</textarea>" in page
    # a fresh one-time id: the corrected form can be sent
    fixed = {**GOOD, "name": "fixed"}
    r = await b.post("/tokens/new", {"csrf": csrf, "form_id": hidden(page, "form_id"), **fixed})
    assert r.status_code == 201, r.text
    assert "fixed" in await world.names()


async def test_create_keeps_ticked_operations(world: ConsoleWorld) -> None:
    b = await world.signed_in("alice")
    csrf, form_id = await b.form("/tokens/new")
    body: dict[str, Any] = {**GOOD, "name": "", "access": "restricted", "op": ["threads:read"]}
    r = await b.post("/tokens/new", {"csrf": csrf, "form_id": form_id, **body})
    assert r.status_code == 400
    assert 'value="threads:read" id="op-threads-read" aria-label="threads read" checked>' in r.text
    assert 'id="op-threads-list" aria-label="threads list">' in r.text


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"name": ""}, 400, "name: must be 1 to 100 characters"),
        ({"name": "other"}, 409, "a token with this name already exists"),
        ({"workspace_scope": "some", "workspaces": ""}, 400, "workspaces: list at least one"),
    ],
)
async def test_edit_refuses_bad_input_and_keeps_the_form(
    world: ConsoleWorld, change: dict[str, str], status: int, message: str
) -> None:
    token = await world.create("alice", "mine", description="first", scopes=["threads:read"])
    await world.create("alice", "other")
    b = await world.signed_in("alice")
    events = await world.event_count()
    sent = {"name": "renamed", "description": "typed text", "workspace_scope": "all", **change}
    r = await b.act(f"/tokens/{token.id}/edit", sent)
    assert r.status_code == status, r.text
    assert message in _error(r.text)
    assert f'id="edit-name" name="name" value="{sent["name"]}"' in r.text
    assert ">typed text</textarea>" in r.text
    after = await world.token(token.id)
    assert (after.name, after.description, after.workspaces) == ("mine", "first", None)
    assert await world.event_count() == events


async def test_edit_saves(world: ConsoleWorld) -> None:
    token = await world.create("alice", "mine", scopes=["threads:read"])
    b = await world.signed_in("alice")
    sent = {
        "name": "renamed",
        "description": "d",
        "workspace_scope": "some",
        "workspaces": "w1, w2",
    }
    r = await b.act(f"/tokens/{token.id}/edit", sent)
    assert r.status_code == 303, r.text
    after = await world.token(token.id)
    assert (after.name, after.description, list(after.workspaces or ())) == (
        "renamed",
        "d",
        ["w1", "w2"],
    )
    page = (await b.get(f"/tokens/{token.id}")).text
    assert "Changes saved." in page
