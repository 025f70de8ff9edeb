"""A member's own audit trail (issue 13): ``GET /v1/events`` without the admin rights
answers the events of the caller's own tokens, and only those; an admin reads the org's.

The world (``_world.py``): org ``acme``, its admin, members alice and bob with
``tokens:read:own`` + ``tokens:write:own``, over the session's real Valkey. Reuse
tripwire events are written by a real :class:`Tripwire` when a revoked secret is
presented to a real :class:`Authenticator`.
"""

from __future__ import annotations

from typing import Any

import pytest

from patgate.gateway.lifecycle import Actor, Owner
from patgate.middleware.auth import Authenticator
from patgate.middleware.cache import TokenCache
from patgate.middleware.errors import InvalidToken
from patgate.middleware.metrics import Metrics
from patgate.middleware.tripwire import Tripwire
from patgate.policies.engine import default_policy
from tests.gateway.api._world import OWN, Api

pytestmark = pytest.mark.anyio


async def _events(api: Api, who: str, **params: Any) -> dict[str, Any]:
    r = await api.call("GET", "/v1/events", who, params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _create(api: Api, who: str, name: str, **body: Any) -> dict[str, Any]:
    r = await api.call("POST", "/v1/tokens", who, json={"name": name, **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def _present_dead(api: Api, secret: str) -> None:
    """Present a dead secret to a data-plane authenticator with a tripwire, and wait for
    the reuse event to be written."""
    metrics = Metrics()
    tripwire = Tripwire(api.store, metrics, clock=api.clock)
    auth = Authenticator(
        api.store,
        TokenCache(0, 0.0, 0.0),
        api.fmt,
        default_policy(),
        metrics,
        clock=api.clock,
        tripwire=tripwire,
    )
    with pytest.raises(InvalidToken):
        await auth.identify(
            [(b"authorization", b"Bearer " + secret.encode())],
            fresh=True,
            client="198.51.100.7",
            method="GET",
            path="/v1/threads",
        )
    await auth.aclose()  # the tripwire's event write finishes


@pytest.fixture
async def trail(api: Api) -> dict[str, Any]:
    """Tokens of alice, bob and the org, each with some history, and a reuse of one
    revoked secret of alice's and one of bob's."""
    mine = await _create(api, "alice", "ci", scopes=["threads:read"])
    await api.call("PATCH", f"/v1/tokens/{mine['id']}", "alice", json={"description": "x"})
    spare = await _create(api, "alice", "spare")
    theirs = await _create(api, "bob", "bobs", scopes=["threads:read"])
    org = await _create(api, "admin", "sync", owner={"type": "org"})
    # the admin acting on alice's token: an event of *her* token, by someone else
    r = await api.call("POST", f"/v1/admin/tokens/{spare['id']}/revoke")
    assert r.status_code == 200, r.text
    r = await api.call("POST", f"/v1/admin/tokens/{theirs['id']}/revoke")
    assert r.status_code == 200, r.text
    # events about alice the user (not about a token of hers)
    r = await api.call("PUT", "/v1/users/alice", json={"name": "Alice A."})
    assert r.status_code == 200, r.text
    await _present_dead(api, spare["token"])
    await _present_dead(api, theirs["token"])
    return {"mine": mine, "spare": spare, "theirs": theirs, "org": org}


async def test_a_member_reads_exactly_the_events_of_their_own_tokens(
    api: Api, trail: dict[str, Any]
) -> None:
    everything = (await _events(api, "admin"))["items"]
    expected = [e for e in everything if e["token_id"] is not None and e["user_id"] == "alice"]
    got = await _events(api, "alice")
    assert got["items"] == expected
    assert got["next_cursor"] is None
    alice_tokens = {api.ids["alice"], trail["mine"]["id"], trail["spare"]["id"]}
    assert {e["token_id"] for e in got["items"]} == alice_tokens
    kinds = [e["type"] for e in got["items"] if e["token_id"] == trail["spare"]["id"]]
    # newest first: the reuse of the revoked secret, the admin's revoke, the creation
    assert kinds == ["token.reuse_after_revoke", "token.revoked", "token.created"]
    revoke = next(e for e in got["items"] if e["type"] == "token.revoked")
    assert revoke["actor"]["id"] == "admin"
    reuse = got["items"][0]
    assert (reuse["ip"], reuse["data"]) == (
        "198.51.100.7",
        {"method": "GET", "path": "/v1/threads"},
    )
    # the admin still reads the whole org: other members', the org's, user and org events
    assert {trail["theirs"]["id"], trail["org"]["id"]} <= {e["token_id"] for e in everything}
    assert any(e["type"] == "user.updated" and e["user_id"] == "alice" for e in everything)
    assert not any(e["type"].startswith("user.") for e in got["items"])


async def test_filters_narrow_a_members_view_and_never_widen_it(
    api: Api, trail: dict[str, Any]
) -> None:
    own = (await _events(api, "alice"))["items"]
    mine = trail["mine"]["id"]
    by_token = await _events(api, "alice", token_id=mine)
    assert by_token["items"] == [e for e in own if e["token_id"] == mine]
    assert [e["type"] for e in by_token["items"]] == ["token.updated", "token.created"]
    by_type = await _events(api, "alice", type="token.revoked")
    assert [e["token_id"] for e in by_type["items"]] == [trail["spare"]["id"]]
    by_actor = await _events(api, "alice", actor="admin")
    assert [e["type"] for e in by_actor["items"]] == ["token.revoked"]
    # Someone else's token, the org's, and an id that never existed: one identical
    # answer (200, nothing), so a member learns nothing about which ids exist.
    answers = []
    for token_id in (trail["theirs"]["id"], trail["org"]["id"], "tok_000000000000dead"):
        r = await api.call("GET", "/v1/events", "alice", params={"token_id": token_id})
        assert r.status_code == 200
        answers.append(r.content)
    assert answers == [b'{"items":[],"next_cursor":null}'] * 3
    # the other filters cannot reach bob's events either
    for params in ({"actor": "bob"}, {"type": "token.reuse_after_revoke"}):
        items = (await _events(api, "alice", **params))["items"]
        assert all(e["user_id"] == "alice" for e in items)
        assert trail["theirs"]["id"] not in {e["token_id"] for e in items}
    # bob sees his own trail, not alice's
    bobs = (await _events(api, "bob"))["items"]
    assert {e["token_id"] for e in bobs} == {api.ids["bob"], trail["theirs"]["id"]}


async def test_a_members_pages_walk_only_their_events(api: Api, trail: dict[str, Any]) -> None:
    own = (await _events(api, "alice"))["items"]
    assert len(own) >= 6
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = await api.call("GET", "/v1/events", "alice", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == own


async def test_the_own_view_needs_tokens_read_own(api: Api) -> None:
    await api.add_caller("writer", "alice", ["tokens:write:own"])
    r = await api.call("GET", "/v1/events", "writer")
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    assert "tokens:read:own" in r.json()["detail"]


async def test_a_demoted_admin_reads_only_their_own_trail(api: Api) -> None:
    system = Actor.system()
    await api.directory.put_user(
        system, "ops", {"org_id": "acme", "email": "ops@acme.io", "role": "admin"}
    )
    await api.add_caller("ops", "ops", ["tokens:admin", *OWN])
    assert len((await _events(api, "ops"))["items"]) > 1  # the org's: everyone's events
    await api.directory.put_user(system, "ops", {"org_id": "acme", "role": "member"})
    items = (await _events(api, "ops"))["items"]
    assert [(e["type"], e["token_id"]) for e in items] == [("token.created", api.ids["ops"])]


async def test_an_org_token_reads_the_events_of_org_owned_tokens(api: Api) -> None:
    """An org-owned token's "own tokens" are the org's (as for GET /v1/tokens): without
    the admin rights it reads the events of org-owned tokens, and no user's."""
    system = Actor.system()
    reader, secret = await api.tokens.create(
        system, name="org-reader", owner=Owner("org", "acme"), scopes=["tokens:read:own"]
    )
    api.secrets["org-reader"] = secret
    other = await _create(api, "admin", "sync", owner={"type": "org"})
    await _create(api, "alice", "ci")
    listed = (await api.call("GET", "/v1/tokens", "org-reader")).json()["items"]
    assert {t["id"] for t in listed} == {reader.id, other["id"]}
    items = (await _events(api, "org-reader"))["items"]
    assert {e["token_id"] for e in items} == {reader.id, other["id"]}
    assert all(e["user_id"] is None for e in items)
