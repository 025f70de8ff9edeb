"""Rotation with overlap (issue 12) through the management API: ``grace_period`` on
``POST /v1/tokens/{id}/regenerate``, ``POST /v1/tokens/{id}/end-grace``, the org's
``max_grace_period``, the audit trail at ``GET /v1/events``, and each secret's own last
use in the token views — with a real data plane (tests/middleware/_plane.py) on the
same store and clock presenting both secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.gateway.api._world import T0, Api, snapshot
from tests.middleware._plane import Plane, data_plane, until

pytestmark = pytest.mark.anyio

HOUR = 3600.0


@pytest.fixture
async def plane(api: Api, store_url: str) -> AsyncIterator[Plane]:
    async with data_plane(api.store, api.fmt, api.clock, store_url) as p:
        yield p


def _redis(api: Api) -> Any:
    """The store's client, typed loosely (as the store itself does)."""
    return api.store.client


async def _ci_token(api: Api) -> tuple[str, str]:
    """Alice's data-plane token (threads:read): its id and secret."""
    created = await api.call(
        "POST", "/v1/tokens", "alice", json={"name": "ci", "scopes": ["threads:read"]}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    return body["id"], body["token"]


async def _regenerate(api: Api, token_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.call("POST", f"/v1/tokens/{token_id}/regenerate", "alice", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()  # type: ignore[no-any-return]


async def test_regenerate_with_a_grace_keeps_the_old_secret_working_until_it_ends(
    api: Api, plane: Plane
) -> None:
    token_id, old = await _ci_token(api)
    body = await _regenerate(api, token_id, {"grace_period": HOUR})
    new = body["token"]
    assert new != old
    assert api.fmt.is_well_formed(new)
    assert body["previous_secret"] == {
        "prefix": old[:8],
        "valid_until": T0 + HOUR,
        "status": "active",
        "last_used": None,
    }
    assert body["prefix"] == new[:8]
    assert old not in str(body["previous_secret"])
    for secret in (old, new):
        assert (await plane.call(secret)).ok
    api.clock.now = T0 + HOUR
    answer = await plane.call(old)
    assert (answer.status, answer.error, answer.description) == (
        401,
        "invalid_token",
        "token rotated",
    )
    assert plane.decisions("rotated") == 1
    assert (await plane.call(new)).ok
    shown = (await api.call("GET", f"/v1/tokens/{token_id}", "alice")).json()
    assert shown["previous_secret"]["status"] == "rotated"
    assert shown["status"] == "active"


@pytest.mark.parametrize(
    ("grace", "detail"),
    [
        (7 * 86_400 + 1, "max_grace_period"),
        (-1, "0 or more"),
        ("1h", "number of seconds"),
        (True, "number of seconds"),
        ([3600], "number of seconds"),
    ],
)
async def test_a_grace_out_of_bounds_is_400_and_changes_nothing(
    api: Api, plane: Plane, namespace: str, grace: Any, detail: str
) -> None:
    token_id, old = await _ci_token(api)
    before = await snapshot(_redis(api), namespace)
    response = await api.call(
        "POST", f"/v1/tokens/{token_id}/regenerate", "alice", json={"grace_period": grace}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "validation"
    assert "grace_period" in response.json()["detail"]
    assert detail in response.json()["detail"]
    assert "token" not in response.json()
    assert await snapshot(_redis(api), namespace) == before
    assert (await plane.call(old)).ok


async def test_the_orgs_max_grace_period_set_through_the_api(
    api: Api, plane: Plane, namespace: str
) -> None:
    token_id, old = await _ci_token(api)
    org = await api.call("PUT", "/v1/orgs/acme", json={"max_grace_period": HOUR})
    assert org.status_code == 200, org.text
    assert org.json()["max_grace_period"] == HOUR
    assert (await api.call("GET", "/v1/orgs/acme")).json()["max_grace_period"] == HOUR
    before = await snapshot(_redis(api), namespace)
    over = await api.call(
        "POST", f"/v1/tokens/{token_id}/regenerate", "alice", json={"grace_period": HOUR + 1}
    )
    assert over.status_code == 400
    assert "max_grace_period" in over.json()["detail"]
    assert await snapshot(_redis(api), namespace) == before
    at_max = await _regenerate(api, token_id, {"grace_period": HOUR})
    assert at_max["previous_secret"]["valid_until"] == T0 + HOUR
    assert (await plane.call(old)).ok

    # 0 forbids any grace; a plain regeneration still works.
    assert (await api.call("PUT", "/v1/orgs/acme", json={"max_grace_period": 0})).status_code == 200
    refused = await api.call(
        "POST", f"/v1/tokens/{token_id}/regenerate", "alice", json={"grace_period": 1}
    )
    assert refused.status_code == 400
    plain = await _regenerate(api, token_id, {})
    assert plain["previous_secret"] is None
    for bad in (-1, 90 * 86_400 + 1, "7d", True):
        response = await api.call("PUT", "/v1/orgs/acme", json={"max_grace_period": bad})
        assert response.status_code == 400, bad
        assert "max_grace_period" in response.json()["detail"]
    assert (await api.call("GET", "/v1/orgs/acme")).json()["max_grace_period"] == 0
    # a member may not change the org's bound
    member = await api.call("PUT", "/v1/orgs/acme", "alice", json={"max_grace_period": HOUR})
    assert member.status_code in (403, 404)


async def test_no_grace_for_a_revoked_token(api: Api, namespace: str) -> None:
    token_id, _ = await _ci_token(api)
    assert (await api.call("POST", f"/v1/tokens/{token_id}/revoke", "alice")).status_code == 200
    before = await snapshot(_redis(api), namespace)
    response = await api.call(
        "POST", f"/v1/tokens/{token_id}/regenerate", "alice", json={"grace_period": 60}
    )
    assert response.status_code == 400
    assert "revoked" in response.json()["detail"]
    assert await snapshot(_redis(api), namespace) == before


async def test_end_grace_through_the_api_refuses_the_old_secret_at_once(
    api: Api, plane: Plane
) -> None:
    token_id, old = await _ci_token(api)
    new = (await _regenerate(api, token_id, {"grace_period": HOUR}))["token"]
    await plane.barrier()
    for secret in (old, new):
        assert (await plane.call(secret)).ok
        assert plane.cached(secret)
    ended = await api.call("POST", f"/v1/tokens/{token_id}/end-grace", "alice")
    assert ended.status_code == 200, ended.text
    assert ended.json()["previous_secret"] is None
    assert ended.json()["id"] == token_id
    assert "token" not in ended.json()
    await until(lambda: not plane.cached(old), "the invalidation of the old secret")
    answer = await plane.call(old)
    assert (answer.status, answer.description) == (401, "token rotated")
    assert (await plane.call(new)).ok
    # idempotent
    again = await api.call("POST", f"/v1/tokens/{token_id}/end-grace", "alice")
    assert again.status_code == 200
    assert again.json() == ended.json()
    # another member's token is not found; an unknown id neither
    assert (await api.call("POST", f"/v1/tokens/{token_id}/end-grace", "bob")).status_code == 404
    missing = await api.call("POST", "/v1/tokens/tok_000doesnotexist/end-grace", "alice")
    assert missing.status_code == 404


async def test_the_audit_trail_at_v1_events(api: Api) -> None:
    token_id, _ = await _ci_token(api)
    api.clock.now = T0 + 10
    await _regenerate(api, token_id, {"grace_period": 600})
    api.clock.now = T0 + 20
    assert (await api.call("POST", f"/v1/tokens/{token_id}/end-grace", "alice")).status_code == 200
    response = await api.call("GET", "/v1/events", params={"token_id": token_id})
    assert response.status_code == 200
    items = response.json()["items"]
    assert [e["type"] for e in items] == ["token.grace_ended", "token.regenerated", "token.created"]
    ended, regenerated = items[0], items[1]
    assert regenerated["data"]["grace_period"] == 600
    assert regenerated["data"]["previous_valid_until"] == T0 + 10 + 600
    assert regenerated["actor"]["id"] == "alice"
    assert ended["data"]["was_valid_until"] == T0 + 10 + 600
    assert ended["at"] == T0 + 20
    typed = await api.call(
        "GET", "/v1/events", params={"token_id": token_id, "type": "token.grace_ended"}
    )
    assert [e["type"] for e in typed.json()["items"]] == ["token.grace_ended"]


async def test_views_show_each_secrets_own_last_use(api: Api, plane: Plane) -> None:
    token_id, old = await _ci_token(api)
    api.clock.now = T0 + 5
    assert (await plane.call(old, path="/threads/1", ip="192.0.2.1", user_agent="old/1")).ok
    await plane.recorder.flush()
    regenerated = await _regenerate(api, token_id, {"grace_period": HOUR})
    new = regenerated["token"]
    first_use = {
        "at": T0 + 5,
        "method": "GET",
        "path": "/threads/1",
        "ip": "192.0.2.1",
        "user_agent": "old/1",
    }
    # the regenerate response itself: the new secret is unused, the old keeps its use
    assert regenerated["last_used"] is None
    assert regenerated["previous_secret"]["last_used"] == first_use
    shown = (await api.call("GET", f"/v1/tokens/{token_id}", "alice")).json()
    assert shown["last_used"] is None
    assert shown["previous_secret"]["last_used"] == first_use

    api.clock.now = T0 + 100
    assert (await plane.call(old, path="/threads/7", ip="192.0.2.7", user_agent="old/2")).ok
    api.clock.now = T0 + 200
    assert (await plane.call(new, path="/threads/9", ip="203.0.113.9", user_agent="new/1")).ok
    assert await plane.recorder.flush() == 2
    new_use = {
        "at": T0 + 200,
        "method": "GET",
        "path": "/threads/9",
        "ip": "203.0.113.9",
        "user_agent": "new/1",
    }
    old_use = {
        "at": T0 + 100,
        "method": "GET",
        "path": "/threads/7",
        "ip": "192.0.2.7",
        "user_agent": "old/2",
    }
    shown = (await api.call("GET", f"/v1/tokens/{token_id}", "alice")).json()
    assert shown["last_used"] == new_use
    assert shown["previous_secret"] == {
        "prefix": old[:8],
        "valid_until": T0 + 5 + HOUR,
        "status": "active",
        "last_used": old_use,
    }
    listed = (await api.call("GET", "/v1/tokens", "alice")).json()["items"]
    (mine,) = [t for t in listed if t["id"] == token_id]
    assert mine["last_used"] == new_use
    assert mine["previous_secret"]["last_used"] == old_use
    admin = (await api.call("GET", "/v1/admin/tokens")).json()["items"]
    (seen,) = [t for t in admin if t["id"] == token_id]
    assert seen["last_used"] == new_use
    assert seen["previous_secret"]["last_used"] == old_use
    # The admin's own view by id too (admins may read members' tokens).
    by_admin = (await api.call("GET", f"/v1/tokens/{token_id}")).json()
    assert by_admin["previous_secret"]["last_used"] == old_use


async def test_revoke_and_delete_during_the_grace_through_the_api(api: Api, plane: Plane) -> None:
    revoked_id, r_old = await _ci_token(api)
    r_new = (await _regenerate(api, revoked_id, {"grace_period": HOUR}))["token"]
    created = await api.call(
        "POST", "/v1/tokens", "alice", json={"name": "ci2", "scopes": ["threads:read"]}
    )
    deleted_id, d_old = created.json()["id"], created.json()["token"]
    d_new = (await _regenerate(api, deleted_id, {"grace_period": HOUR}))["token"]
    secrets = (r_old, r_new, d_old, d_new)
    for secret in secrets:
        assert (await plane.call(secret)).ok
    assert (await api.call("POST", f"/v1/tokens/{revoked_id}/revoke", "alice")).status_code == 200
    assert (await api.call("DELETE", f"/v1/tokens/{deleted_id}", "alice")).status_code in (
        200,
        204,
    )
    await until(
        lambda: not any(plane.cached(s) for s in secrets), "the invalidations of every secret"
    )
    for secret in (r_old, r_new):
        assert (await plane.call(secret)).description == "token revoked"
    for secret in (d_old, d_new):
        assert (await plane.call(secret)).description == "invalid or unknown token"
