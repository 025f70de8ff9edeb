"""The management API (``/v1``) over the real store: every lifecycle operation.

The app runs in-process (httpx's ASGI transport); the store is the session's real Valkey.
The world (``make_api``, the ``api`` fixture) is in ``_world.py`` and ``conftest.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor
from patgate.middleware.store import TokenStore
from tests._topologies import ALL_BACKENDS
from tests.gateway.api._world import DAY, FEB_1, OWN, T0, Api, make_api

#: the store tests run on standalone, Sentinel and Cluster (tests/conftest.py).
BACKENDS = ALL_BACKENDS


def _no_secret_anywhere(response: httpx.Response, *secrets: str) -> None:
    for s in secrets:
        assert s not in response.text
        assert s.encode().hex() not in response.text


# -- create ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_returns_the_secret_once_with_no_store(api: Api) -> None:
    r = await api.call(
        "POST",
        "/v1/tokens",
        "alice",
        json={
            "name": "ci",
            "description": "deploys",
            "scopes": ["threads:read"],
            "workspaces": ["w1"],
            "expiration": "7d",
        },
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    secret = body["token"]
    assert api.fmt.is_well_formed(secret)
    assert body["prefix"] == secret[:8]
    assert body["owner"] == {"type": "user", "id": "alice"}
    assert (body["name"], body["description"], body["scopes"], body["workspaces"]) == (
        "ci",
        "deploys",
        ["threads:read"],
        ["w1"],
    )
    assert (body["status"], body["expires_at"], body["type"]) == (
        "active",
        T0 + 7 * DAY,
        "personal",
    )
    assert "digest" not in body
    assert (await api.resolves(secret)) is not None
    for path in (f"/v1/tokens/{body['id']}", "/v1/tokens", "/v1/events"):
        got = await api.call("GET", path, "admin" if path == "/v1/events" else "alice")
        assert got.status_code == 200
        _no_secret_anywhere(got, secret)
    listed = await api.call("GET", "/v1/admin/tokens")
    _no_secret_anywhere(listed, secret)
    assert body["id"] in listed.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("payload", "expires_at"),
    [
        ({"expiration": p}, None if d is None else T0 + d)
        for p, d in [
            ("1d", DAY),
            ("7d", 7 * DAY),
            ("30d", 30 * DAY),
            ("60d", 60 * DAY),
            ("90d", 90 * DAY),
            ("180d", 180 * DAY),
            ("1y", 365 * DAY),
            ("never", None),
        ]
    ]
    + [
        ({}, T0 + 30 * DAY),
        ({"expires_at": "2027-02-01T00:00:00Z"}, FEB_1),
        ({"expires_at": "2027-02-01T02:00:00+02:00"}, FEB_1),
        ({"expires_at": T0 + 3600}, T0 + 3600),
        ({"expires_at": int(T0) + 60}, T0 + 60),
    ],
)
async def test_create_expiry_options(
    api: Api, payload: dict[str, Any], expires_at: float | None
) -> None:
    r = await api.call("POST", "/v1/tokens", "alice", json={"name": "t", **payload})
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] == expires_at


@pytest.mark.anyio
async def test_admin_creates_org_owned_and_member_tokens(api: Api) -> None:
    r = await api.call(
        "POST",
        "/v1/tokens",
        json={"name": "sync", "owner": {"type": "org"}, "scopes": ["billing:read"]},
    )
    assert r.status_code == 201, r.text
    org_token = r.json()
    assert org_token["owner"] == {"type": "org", "id": "acme"}
    assert (org_token["type"], org_token["created_by"]) == ("service", "admin")
    r = await api.call(
        "POST", "/v1/tokens", json={"name": "for-bob", "owner": {"type": "user", "id": "bob"}}
    )
    assert r.status_code == 201
    assert r.json()["owner"] == {"type": "user", "id": "bob"}
    # the org-owned token itself can call the API as the org
    r = await api.client.get("/v1/me", headers={"authorization": "Bearer " + org_token["token"]})
    assert r.json()["type"] == "org"
    assert r.json()["id"] == "acme"


@pytest.mark.anyio
async def test_same_name_for_different_owners(api: Api) -> None:
    for who in ("alice", "bob", "admin"):
        r = await api.call("POST", "/v1/tokens", who, json={"name": "Shared Name"})
        assert r.status_code == 201, (who, r.text)


# -- read --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_and_list_own(api: Api) -> None:
    api.clock.now += 1
    created = (await api.call("POST", "/v1/tokens", "alice", json={"name": "x"})).json()
    r = await api.call("GET", f"/v1/tokens/{created['id']}", "alice")
    assert r.status_code == 200
    got = r.json()
    assert "token" not in got
    assert got == {k: v for k, v in created.items() if k != "token"}
    r = await api.call("GET", "/v1/tokens", "alice")
    names = [t["name"] for t in r.json()["items"]]
    assert names == ["x", "mgmt-alice"]
    assert r.json()["next_cursor"] is None
    # the admin can read a member's token (to audit it) but it is not in the admin's own list
    assert (await api.call("GET", f"/v1/tokens/{created['id']}")).status_code == 200
    own = (await api.call("GET", "/v1/tokens")).json()["items"]
    assert created["id"] not in [t["id"] for t in own]


@pytest.mark.anyio
async def test_list_filters_and_pagination(api: Api) -> None:
    ids = []
    for i in range(7):  # all on the same millisecond
        r = await api.call(
            "POST", "/v1/tokens", "alice", json={"name": f"job-{i}", "expiration": "1d"}
        )
        ids.append(r.json()["id"])
    await api.call("POST", f"/v1/tokens/{ids[0]}/revoke", "alice")
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2, "q": "JOB"}
    while True:
        r = await api.call("GET", "/v1/tokens", "alice", params=params)
        assert r.status_code == 200
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(seen) == sorted(ids)
    assert len(set(seen)) == 7
    r = await api.call("GET", "/v1/tokens", "alice", params={"status": "revoked"})
    assert [t["id"] for t in r.json()["items"]] == [ids[0]]
    api.clock.now += 2 * DAY
    r = await api.call("GET", "/v1/tokens", "alice", params={"status": "expired"})
    assert sorted(t["id"] for t in r.json()["items"]) == sorted(ids[1:])
    r = await api.call("GET", "/v1/tokens", "alice", params={"status": "active"})
    assert [t["name"] for t in r.json()["items"]] == ["mgmt-alice"]
    r = await api.call("GET", "/v1/tokens", "alice", params={"type": "service"})
    assert r.json()["items"] == []


@pytest.mark.anyio
async def test_admin_list_matches_owner_email(api: Api) -> None:
    await api.call("POST", "/v1/tokens", "bob", json={"name": "bobs"})
    r = await api.call("GET", "/v1/admin/tokens", params={"q": "BOB@ACME"})
    assert r.status_code == 200
    items = r.json()["items"]
    assert sorted(t["name"] for t in items) == ["bobs", "mgmt-bob"]
    assert all(t["owner"]["email"] == "bob@acme.io" for t in items)
    assert all(t["owner"]["name"] == "Bob" for t in items)
    r = await api.call("GET", "/v1/admin/tokens", params={"q": "bobs"})
    assert [t["name"] for t in r.json()["items"]] == ["bobs"]
    r = await api.call("GET", "/v1/admin/tokens", params={"type": "personal", "limit": 200})
    assert {t["owner"]["id"] for t in r.json()["items"]} == {"admin", "alice", "bob"}


# -- edit --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"name": "renamed"}, {"name": "renamed"}),
        ({"description": "new"}, {"description": "new"}),
        ({"scopes": ["b:read", "a:read"]}, {"scopes": ["a:read", "b:read"]}),
        ({"workspaces": ["w2"]}, {"workspaces": ["w2"]}),
        ({"workspaces": "*"}, {"workspaces": ["*"]}),
        ({"name": "both", "description": ""}, {"name": "both", "description": ""}),
    ],
)
async def test_patch_each_field(api: Api, patch: dict[str, Any], expected: dict[str, Any]) -> None:
    created = (
        await api.call(
            "POST",
            "/v1/tokens",
            "alice",
            json={"name": "t", "description": "d", "scopes": ["x:read"], "workspaces": ["w1"]},
        )
    ).json()
    api.clock.now += 1
    r = await api.call("PATCH", f"/v1/tokens/{created['id']}", "alice", json=patch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "token" not in body
    after = (await api.call("GET", f"/v1/tokens/{created['id']}", "alice")).json()
    assert after == body
    for key in ("name", "description", "scopes", "workspaces"):
        assert after[key] == expected.get(key, created[key])
    assert after["updated_at"] == T0 + 1
    assert after["prefix"] == created["prefix"]
    assert await api.resolves(created["token"]) is not None


@pytest.mark.anyio
async def test_scopes_add_remove_clear(api: Api) -> None:
    tid = (
        await api.call("POST", "/v1/tokens", "alice", json={"name": "t", "scopes": ["x:read"]})
    ).json()["id"]
    r = await api.call(
        "POST", f"/v1/tokens/{tid}/scopes", "alice", json={"scopes": ["y:read", "x:write"]}
    )
    assert r.json()["scopes"] == ["x:read", "x:write", "y:read"]
    r = await api.call("DELETE", f"/v1/tokens/{tid}/scopes/x:write", "alice")
    assert r.status_code == 200
    assert r.json()["scopes"] == ["x:read", "y:read"]
    r = await api.call("DELETE", f"/v1/tokens/{tid}/scopes/x:write", "alice")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await api.call("DELETE", f"/v1/tokens/{tid}/scopes", "alice")
    assert r.json()["scopes"] == []
    stored = await api.store.get_token(tid)
    assert stored is not None
    assert stored.scopes == ()


# -- revoke / regenerate / delete --------------------------------------------------------


async def _events(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = await api.call("GET", "/v1/events", params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.mark.anyio
async def test_revoke_is_idempotent_with_one_event(api: Api) -> None:
    created = (await api.call("POST", "/v1/tokens", "alice", json={"name": "t"})).json()
    first = await api.call("POST", f"/v1/tokens/{created['id']}/revoke", "alice")
    assert first.status_code == 200
    assert first.json()["status"] == "revoked"
    api.clock.now += 5
    second = await api.call("POST", f"/v1/tokens/{created['id']}/revoke", "alice")
    assert second.status_code == 200
    assert second.json() == first.json()
    events = await _events(api, token_id=created["id"], type="token.revoked")
    assert len(events) == 1
    r = await api.client.get("/v1/me", headers={"authorization": "Bearer " + created["token"]})
    assert r.status_code == 401


@pytest.mark.anyio
async def test_admin_revoke_endpoint(api: Api) -> None:
    created = (await api.call("POST", "/v1/tokens", "bob", json={"name": "t"})).json()
    r = await api.call("POST", f"/v1/admin/tokens/{created['id']}/revoke")
    assert (r.status_code, r.json()["status"]) == (200, "revoked")
    r = await api.call("POST", f"/v1/admin/tokens/{created['id']}/revoke", "alice")
    assert r.status_code == 403


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["active", "revoked", "expired"])
async def test_regenerate(api: Api, state: str) -> None:
    created = (
        await api.call(
            "POST",
            "/v1/tokens",
            "alice",
            json={"name": "t", "scopes": ["x:read"], "expiration": "1d"},
        )
    ).json()
    if state == "revoked":
        await api.call("POST", f"/v1/tokens/{created['id']}/revoke", "alice")
    api.clock.now += 2 * DAY if state == "expired" else 60
    r = await api.call("POST", f"/v1/tokens/{created['id']}/regenerate", "alice")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token"] != created["token"]
    assert (body["id"], body["name"], body["scopes"]) == (created["id"], "t", ["x:read"])
    assert body["status"] == "active"
    assert body["prefix"] == body["token"][:8] != created["prefix"]
    assert body["expires_at"] == api.clock() + DAY
    assert await api.resolves(created["token"]) is None
    assert await api.resolves(body["token"]) is not None
    r = await api.call(
        "POST", f"/v1/tokens/{created['id']}/regenerate", "alice", json={"expiration": "90d"}
    )
    assert r.json()["expires_at"] == api.clock() + 90 * DAY
    events = await _events(api, token_id=created["id"], type="token.regenerated")
    assert len(events) == 2
    assert body["token"] not in str(events)


@pytest.mark.anyio
async def test_delete_and_delete_all_own(api: Api) -> None:
    a = (await api.call("POST", "/v1/tokens", "alice", json={"name": "a"})).json()
    r = await api.call("DELETE", f"/v1/tokens/{a['id']}", "alice")
    assert (r.status_code, r.content) == (204, b"")
    assert await api.resolves(a["token"]) is None
    assert (await api.call("GET", f"/v1/tokens/{a['id']}", "alice")).status_code == 404
    again = await api.call("POST", "/v1/tokens", "alice", json={"name": "a"})
    assert again.status_code == 201
    bob = (await api.call("POST", "/v1/tokens", "bob", json={"name": "b"})).json()
    r = await api.call("DELETE", "/v1/tokens", "alice")
    assert r.json() == {"deleted": 2}  # "a" and alice's own management token
    assert await api.resolves(api.secrets["alice"]) is None
    assert await api.resolves(bob["token"]) is not None


# -- users, orgs -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_users_and_orgs(api: Api) -> None:
    r = await api.call("PUT", "/v1/users/carol", json={"email": "carol@acme.io", "role": "member"})
    assert r.status_code == 200, r.text
    assert r.json()["org_id"] == "acme"
    r = await api.call("GET", "/v1/users/carol")
    assert r.json()["email"] == "carol@acme.io"
    r = await api.call("GET", "/v1/users")
    assert sorted(u["id"] for u in r.json()["items"]) == ["admin", "alice", "bob", "carol"]
    r = await api.call("GET", "/v1/users/alice", "alice")  # own record
    assert r.status_code == 200
    r = await api.call("PUT", "/v1/orgs/acme", json={"token_limit": 25, "max_lifetime": "1y"})
    assert (r.json()["token_limit"], r.json()["max_lifetime"]) == (25, 365 * DAY)
    assert (await api.call("GET", "/v1/orgs/acme", "alice")).json()["token_limit"] == 25


@pytest.mark.anyio
async def test_disable_and_enable_user_through_the_api(api: Api) -> None:
    assert (await api.call("GET", "/v1/me", "alice")).status_code == 200
    r = await api.call("PUT", "/v1/users/alice", json={"enabled": False})
    assert r.json()["enabled"] is False
    r = await api.call("GET", "/v1/me", "alice")
    assert r.status_code == 401
    assert "disabled" in r.headers["www-authenticate"]
    await api.call("PUT", "/v1/users/alice", json={"enabled": True})
    assert (await api.call("GET", "/v1/me", "alice")).status_code == 200


@pytest.mark.anyio
async def test_remove_user_through_the_api(api: Api) -> None:
    await api.call("PUT", "/v1/users/alice", json={"role": "admin"})
    await api.add_caller("alice-admin", "alice", ["tokens:admin", *OWN])
    org = (
        await api.call(
            "POST", "/v1/tokens", "alice-admin", json={"name": "svc", "owner": {"type": "org"}}
        )
    ).json()
    r = await api.call("DELETE", "/v1/users/alice")
    assert r.status_code == 200
    assert r.json()["removed"] == "alice"
    assert sorted(r.json()["revoked_tokens"]) == sorted([api.ids["alice"], api.ids["alice-admin"]])
    assert (await api.call("GET", "/v1/me", "alice")).status_code == 401
    listed = (await api.call("GET", "/v1/admin/tokens", params={"status": "revoked"})).json()
    assert {t["id"] for t in listed["items"]} == {api.ids["alice"], api.ids["alice-admin"]}
    r = await api.call("GET", f"/v1/tokens/{org['id']}")
    assert (r.json()["status"], r.json()["created_by"]) == ("active", "alice")
    assert (
        await api.client.get("/v1/me", headers={"authorization": "Bearer " + org["token"]})
    ).status_code == 200
    assert (await api.call("GET", "/v1/users/alice")).status_code == 404


# -- events and audit context ------------------------------------------------------------


@pytest.mark.anyio
async def test_events_record_actor_ip_and_user_agent(api: Api) -> None:
    created = (
        await api.call(
            "POST",
            "/v1/tokens",
            "alice",
            json={"name": "t"},
            headers={"user-agent": "alice-browser/1"},
        )
    ).json()
    await api.call("PATCH", f"/v1/tokens/{created['id']}", "admin", json={"name": "x"})
    await api.call(
        "POST",
        f"/v1/tokens/{created['id']}/revoke",
        "admin",
        headers={
            "user-agent": "host-backend/2",
            "x-end-user-ip": "198.51.100.9",
            "x-end-user-agent": "Firefox/130",
        },
    )
    events = await _events(api, token_id=created["id"])
    assert [e["type"] for e in events] == ["token.revoked", "token.created"]
    revoked, made = events
    assert made["actor"] == {"type": "user", "id": "alice", "token_id": api.ids["alice"]}
    assert (made["ip"], made["user_agent"]) == ("127.0.0.1", "alice-browser/1")
    assert made["at"] == T0
    # the admin (users:admin) acting for an end user passes that user's IP and agent
    assert (revoked["ip"], revoked["user_agent"]) == ("198.51.100.9", "Firefox/130")
    assert revoked["actor"]["id"] == "admin"
    _no_secret_anywhere(httpx.Response(200, json=events), created["token"])


@pytest.mark.anyio
async def test_end_user_headers_are_ignored_for_members(api: Api) -> None:
    created = (
        await api.call(
            "POST",
            "/v1/tokens",
            "alice",
            json={"name": "t"},
            headers={"x-end-user-ip": "6.6.6.6", "x-end-user-agent": "spoofed"},
        )
    ).json()
    (event,) = await _events(api, token_id=created["id"])
    assert event["ip"] == "127.0.0.1"
    assert event["user_agent"] != "spoofed"


@pytest.mark.anyio
async def test_events_filters(api: Api) -> None:
    a = (await api.call("POST", "/v1/tokens", "alice", json={"name": "a"})).json()
    b = (await api.call("POST", "/v1/tokens", "bob", json={"name": "b"})).json()
    await api.call("POST", f"/v1/tokens/{b['id']}/revoke", "bob")
    assert [e["token_id"] for e in await _events(api, actor="bob")] == [b["id"], b["id"]]
    assert [e["token_id"] for e in await _events(api, type="token.revoked")] == [b["id"]]
    assert [e["type"] for e in await _events(api, token_id=a["id"])] == ["token.created"]
    page = (await api.call("GET", "/v1/events", params={"limit": 1})).json()
    assert len(page["items"]) == 1
    assert page["next_cursor"] == page["items"][0]["id"]
    nxt = (
        await api.call("GET", "/v1/events", params={"limit": 1, "cursor": page["next_cursor"]})
    ).json()
    assert nxt["items"][0]["id"] != page["items"][0]["id"]


# -- meta --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_me_and_method_not_allowed_lists_every_method(api: Api) -> None:
    me = (await api.call("GET", "/v1/me", "alice")).json()
    assert (me["type"], me["id"], me["org_id"], me["role"]) == ("user", "alice", "acme", "member")
    assert me["scopes"] == OWN
    r = await api.call("PUT", "/v1/tokens")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST", "DELETE"}


@pytest.mark.anyio
async def test_verify_uses_the_injected_verifier(store: TokenStore) -> None:
    calls: list[tuple[dict[str, Any], str]] = []

    async def verifier(body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        calls.append((body, actor.id))
        return {"allowed": True, "status": 200}

    async with make_api(store) as api:
        app = create_api_app(store, api.fmt, clock=api.clock, verifier=verifier)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            r = await client.post(
                "/v1/verify",
                json={"token": "x", "method": "GET", "path": "/"},
                headers={"authorization": "Bearer " + api.secrets["alice"]},
            )
        assert r.json() == {"allowed": True, "status": 200}
        assert r.headers["cache-control"] == "no-store"
        assert calls == [({"token": "x", "method": "GET", "path": "/"}, "alice")]
        r = await api.call("POST", "/v1/verify", "alice", json={})
        assert r.status_code == 400  # no verifier on this app
