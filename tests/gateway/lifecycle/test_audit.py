"""Audit events: one per change, written atomically with it, queryable by token/actor/type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from patgate.gateway.lifecycle import (
    Actor,
    Directory,
    EventQuery,
    Owner,
    TokenService,
    query_events,
)
from patgate.middleware.errors import ValidationFailed
from patgate.middleware.store import TokenStore
from patgate.policies.scopes import MANAGEMENT_SCOPES
from tests.gateway._clock import T0, Clock
from tests.gateway.lifecycle._world import make_world


def _actor(uid: str, role: str = "member", ip: str = "203.0.113.7") -> Actor:
    scopes = MANAGEMENT_SCOPES if role == "admin" else ("tokens:read:own", "tokens:write:own")
    return Actor(
        "user",
        uid,
        "acme",
        role,  # type: ignore[arg-type]
        frozenset(scopes),
        token_id=f"tok_of_{uid}",
        ip=ip,
        user_agent=f"agent/{uid}",
    )


async def _all(store: TokenStore, org: str = "acme") -> list[dict[str, Any]]:
    """Every event of ``org``, oldest first (its partition's stream, filtered to it)."""
    rows = reversed(await store.events(org, count=10_000))
    return [e for e in (json.loads(b) for _, b in rows) if e.get("org_id") == org]


@pytest.fixture
async def services(store: TokenStore) -> tuple[TokenService, Directory]:
    w = await make_world(store, clock=Clock(tick=1))  # every event at its own second
    return w.tokens, w.directory


@pytest.mark.anyio
async def test_every_token_change_writes_exactly_one_event(
    store: TokenStore, services: tuple[TokenService, Directory]
) -> None:
    tokens, _ = services
    alice, root = _actor("alice"), _actor("root", "admin", ip="198.51.100.1")
    start = len(await _all(store))
    token, _ = await tokens.create(alice, name="t", scopes=["a:read"])
    await tokens.update(alice, token.id, {"description": "d"})
    await tokens.update(alice, token.id, {"scopes": ["b:read"]})
    await tokens.add_scopes(alice, token.id, ["c:read"])
    await tokens.remove_scope(alice, token.id, "c:read")
    await tokens.clear_scopes(alice, token.id)
    await tokens.clear_scopes(alice, token.id)  # no change: no event
    await tokens.revoke(root, token.id)
    await tokens.revoke(alice, token.id)  # idempotent: no event
    await tokens.regenerate(alice, token.id)
    await tokens.delete(alice, token.id)
    events = (await _all(store))[start:]
    assert [e["type"] for e in events] == [
        "token.created",
        "token.updated",
        "token.scopes_changed",
        "token.scopes_changed",
        "token.scopes_changed",
        "token.scopes_changed",
        "token.revoked",
        "token.regenerated",
        "token.deleted",
    ]
    ats = [e["at"] for e in events]
    assert ats == sorted(ats)
    assert len(set(ats)) == len(ats)
    assert all(T0 < at < T0 + 100 for at in ats)
    for e in events:
        assert e["token_id"] == token.id
        assert e["org_id"] == "acme"
        assert e["user_id"] == "alice"
        who = "root" if e["type"] == "token.revoked" else "alice"
        assert e["actor"] == {"type": "user", "id": who, "token_id": f"tok_of_{who}"}
        assert e["ip"] == ("198.51.100.1" if who == "root" else "203.0.113.7")
        assert e["user_agent"] == f"agent/{who}"
    assert events[0]["data"]["scopes"] == ["a:read"]
    assert events[3]["data"] == {"added": ["c:read"], "removed": []}
    assert events[4]["data"] == {"added": [], "removed": ["c:read"]}


@pytest.mark.anyio
async def test_directory_changes_write_events(
    store: TokenStore, services: tuple[TokenService, Directory]
) -> None:
    tokens, directory = services
    root = _actor("root", "admin")
    start = len(await _all(store))
    await directory.put_org(root, "acme", {"token_limit": 20})
    await directory.put_user(root, "carol", {"email": "c@x.io"})
    await directory.put_user(root, "carol", {"name": "Carol"})
    await directory.put_user(root, "carol", {"name": "Carol"})  # unchanged: no event
    await directory.put_user(root, "carol", {"enabled": False})
    await tokens.create(root, name="bobs", owner=Owner("org", "acme"))
    await directory.remove_user(root, "carol")
    events = (await _all(store))[start:]
    assert [e["type"] for e in events] == [
        "org.updated",
        "user.created",
        "user.updated",
        "user.permission_changed",
        "token.created",
        "user.removed",
    ]
    assert all(e["actor"]["id"] == "root" and e["ip"] == "203.0.113.7" for e in events)
    assert events[3]["data"]["enabled"] is False
    assert events[1]["user_id"] == "carol"


@pytest.mark.anyio
async def test_system_actor_events_name_the_cli(
    store: TokenStore, services: tuple[TokenService, Directory]
) -> None:
    tokens, _ = services
    await tokens.create(Actor.system(), name="t", owner=Owner("user", "alice", "acme"))
    event = (await _all(store))[-1]
    assert event["actor"]["type"] == "system"
    assert event["actor"]["id"].startswith("cli:")
    assert event["user_agent"] == "patgate-cli"


@pytest.mark.anyio
async def test_query_events_filters_and_pages(
    store: TokenStore, services: tuple[TokenService, Directory]
) -> None:
    tokens, _ = services
    alice, root = _actor("alice"), _actor("root", "admin")
    a, _ = await tokens.create(alice, name="a")
    b, _ = await tokens.create(alice, name="b")
    await tokens.revoke(root, a.id)
    await tokens.revoke(alice, b.id)
    eve = Actor(
        "user", "eve", "other", "member", frozenset({"tokens:read:own", "tokens:write:own"})
    )
    await tokens.create(eve, name="e")

    async def q(**kw: Any) -> list[tuple[str, str | None]]:
        items, _ = await query_events(store, EventQuery(org_id="acme", **kw))
        return [(e["type"], e["token_id"]) for e in items]

    assert await q(token_id=a.id) == [("token.revoked", a.id), ("token.created", a.id)]
    assert await q(actor="root") == [("token.revoked", a.id)]
    assert await q(type="token.revoked") == [("token.revoked", b.id), ("token.revoked", a.id)]
    assert await q(type="token.created", actor="alice") == [
        ("token.created", b.id),
        ("token.created", a.id),
    ]
    assert await q(actor="eve") == []  # another org's events are invisible
    # ... and each org sees its own (an org's events are in its partition's stream)
    theirs, _ = await query_events(store, EventQuery(org_id="other", actor="eve"))
    assert [e["type"] for e in theirs] == ["token.created"]

    # paging: one event per page, newest first, nothing lost or repeated
    seen: list[str] = []
    cursor = None
    while True:
        items, cursor = await query_events(
            store, EventQuery(org_id="acme", type="token.created", limit=1, cursor=cursor)
        )
        seen += [e["id"] for e in items]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 2
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)


@pytest.mark.anyio
@pytest.mark.parametrize("cursor", ["nope", "1-2-3", "(1-0", "-", "+", "99999999999999999999-0"])
async def test_bad_event_cursor_is_a_validation_error(store: TokenStore, cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        await query_events(store, EventQuery(org_id="acme", cursor=cursor))


@pytest.mark.anyio
async def test_every_workspace_is_audited_as_star(
    store: TokenStore, services: tuple[TokenService, Directory]
) -> None:
    """Issue 9: ``workspaces: "*"`` was audited as ``None``; the trail says what the API
    shows, ``["*"]``."""
    tokens, _ = services
    alice = _actor("alice")
    token, _ = await tokens.create(alice, name="ws", workspaces=["w1"])
    start = len(await _all(store))
    await tokens.update(alice, token.id, {"workspaces": "*"})
    (event,) = (await _all(store))[start:]
    assert event["type"] == "token.updated"
    assert event["data"]["workspaces"] == ["*"]
