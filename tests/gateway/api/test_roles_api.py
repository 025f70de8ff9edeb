"""Issue 13 through the management API: default scopes (omitted, null, []), roles,
restricted keys, the org's new settings — and what a role's edit does on a data plane
process whose cache is warm (it must act as fast as a revoke)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from patgate.middleware.records import Token
from patgate.policies.scopes import ADMIN_ONLY_SCOPES, grants
from tests.gateway.api._world import OWN, Api, snapshot
from tests.middleware._plane import data_plane, until
from tests.middleware._tokens import MEMBER_SCOPES

pytestmark = pytest.mark.anyio


async def _org(api: Api, body: dict[str, Any], who: str = "admin") -> dict[str, Any]:
    r = await api.call("PUT", "/v1/orgs/acme", who, json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _create(api: Api, body: dict[str, Any], who: str = "alice") -> dict[str, Any]:
    r = await api.call("POST", "/v1/tokens", who, json={"name": "t", **body})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _refused(api: Api, method: str, path: str, who: str, body: Any) -> tuple[int, str]:
    r = await api.call(method, path, who, json=body)
    assert r.status_code >= 400, r.text
    return r.status_code, r.json()["error"]


# -- defaults ----------------------------------------------------------------------------


async def test_omitted_and_null_scopes_get_the_default_empty_list_gets_none(api: Api) -> None:
    omitted = await _create(api, {"name": "omitted"})
    null = await _create(api, {"name": "null", "scopes": None})
    empty = await _create(api, {"name": "empty", "scopes": []})
    assert set(omitted["scopes"]) == set(MEMBER_SCOPES) | set(OWN)
    assert set(null["scopes"]) == set(omitted["scopes"])
    assert empty["scopes"] == []
    for scope in ADMIN_ONLY_SCOPES:
        assert not grants(frozenset(omitted["scopes"]), scope)
    # the admin's default: everything the admin may grant but the admin-only scopes
    mine = await _create(api, {"name": "admin-default"}, who="admin")
    for scope in ADMIN_ONLY_SCOPES:
        assert not grants(frozenset(mine["scopes"]), scope), mine["scopes"]
    assert grants(frozenset(mine["scopes"]), "billing:delete")


async def test_org_default_and_scopes_required(api: Api, redis_client: aioredis.Redis) -> None:
    org = await _org(api, {"default_scopes": ["threads:read"]})
    assert org["default_scopes"] == ["threads:read"]
    assert (await _create(api, {"name": "a"}))["scopes"] == ["threads:read"]
    await _org(api, {"default_scopes": ["billing:admin"]})
    assert await _refused(api, "POST", "/v1/tokens", "alice", {"name": "b"}) == (
        403,
        "scope_not_grantable",
    )
    org = await _org(api, {"default_scopes": None, "scopes_required": True})
    assert (org["default_scopes"], org["scopes_required"]) == (None, True)
    before = await snapshot(redis_client, api.store.keyspace.namespace)
    for body in ({"name": "c"}, {"name": "c", "scopes": None}):
        assert await _refused(api, "POST", "/v1/tokens", "alice", body) == (400, "validation")
    assert await snapshot(redis_client, api.store.keyspace.namespace) == before
    assert (await _create(api, {"name": "d", "scopes": []}))["scopes"] == []


# -- roles -------------------------------------------------------------------------------


async def test_role_is_shown_by_get_lists_and_the_admin_view(api: Api) -> None:
    await _org(api, {"roles": {"Developer": ["threads:*"]}})
    created = await _create(api, {"name": "dev", "role": "developer"})
    assert (created["role"], created["scopes"]) == ("Developer", [])
    tid = created["id"]
    got = (await api.call("GET", f"/v1/tokens/{tid}", "alice")).json()
    assert got["role"] == "Developer"
    listed = (await api.call("GET", "/v1/tokens", "alice")).json()["items"]
    assert {t["id"]: t["role"] for t in listed}[tid] == "Developer"
    assert all("role" in t for t in listed)
    admin_view = (await api.call("GET", "/v1/admin/tokens", "admin")).json()["items"]
    assert {t["id"]: t["role"] for t in admin_view}[tid] == "Developer"
    # PATCH takes it away and gives it back
    r = await api.call("PATCH", f"/v1/tokens/{tid}", "alice", json={"role": None})
    assert (r.status_code, r.json()["role"]) == (200, None)
    r = await api.call("PATCH", f"/v1/tokens/{tid}", "alice", json={"role": "DEVELOPER"})
    assert (r.status_code, r.json()["role"]) == (200, "Developer")


async def test_role_errors(api: Api, redis_client: aioredis.Redis) -> None:
    await _org(api, {"roles": {"Developer": ["threads:*"], "Admin": ["tokens:admin"]}})
    tid = (await _create(api, {"name": "x", "scopes": []}))["id"]
    before = await snapshot(redis_client, api.store.keyspace.namespace)
    for role in ("Nope", 7, ["Developer"]):
        assert await _refused(api, "POST", "/v1/tokens", "alice", {"name": "r", "role": role}) == (
            400,
            "validation",
        )
        assert await _refused(api, "PATCH", f"/v1/tokens/{tid}", "alice", {"role": role}) == (
            400,
            "validation",
        )
    refused = (403, "scope_not_grantable")
    assert await _refused(api, "POST", "/v1/tokens", "alice", {"name": "r", "role": "admin"}) == (
        refused
    )
    assert await _refused(api, "PATCH", f"/v1/tokens/{tid}", "alice", {"role": "Admin"}) == (
        refused
    )
    body = {"name": "r", "role": "Admin", "owner": {"type": "user", "id": "alice"}}
    assert await _refused(api, "POST", "/v1/tokens", "admin", body) == refused
    assert await snapshot(redis_client, api.store.keyspace.namespace) == before


async def test_role_and_scopes_combine(api: Api, store_url: str) -> None:
    await _org(api, {"roles": {"Writer": ["threads:create"]}})
    created = await _create(api, {"scopes": ["threads:read"], "role": "Writer"})
    assert (created["scopes"], created["role"]) == (["threads:read"], "Writer")
    async with data_plane(api.store, api.fmt, api.clock, store_url) as plane:
        assert (await plane.call(created["token"])).ok
        assert (await plane.call(created["token"], method="POST", path="/threads")).ok


async def test_role_edit_reaches_a_warm_cache_as_fast_as_a_revoke(api: Api, store_url: str) -> None:
    """Tokens with the role, cached by a data plane process; the role's edit (PUT org)
    changes what every one of them may do within milliseconds; so does the role's
    removal."""
    await _org(api, {"roles": {"Developer": ["threads:read"], "Other": ["files:read"]}})
    dev = [(await _create(api, {"name": f"d{i}", "role": "Developer"}))["token"] for i in range(3)]
    other = (await _create(api, {"name": "o", "role": "Other"}))["token"]
    async with data_plane(api.store, api.fmt, api.clock, store_url) as plane:
        for secret in dev:
            assert (await plane.call(secret)).ok
            assert plane.cached(secret)
        answer = await plane.call(other)
        assert (answer.status, answer.error) == (403, "insufficient_scope")
        lookups = plane.store.lookups
        for secret in dev:
            assert (await plane.call(secret)).ok  # warm: no lookup
        assert plane.store.lookups == lookups

        async def all_refused(secrets: list[str]) -> bool:
            for secret in secrets:
                if (await plane.call(secret)).status != 403:
                    return False
            return True

        # edited: threads:read moves from Developer to Other
        started = time.monotonic()
        await _org(api, {"roles": {"Developer": ["files:read"], "Other": ["threads:read"]}})
        await until(lambda: all_refused(dev), "the role's edit", seconds=1.0)
        assert time.monotonic() - started < 1.0
        assert (await plane.call(other)).ok
        assert plane.store.lookups > lookups  # the cache was flushed, not just aged out

        # removed: the tokens keep the role's name, which adds nothing now
        for secret in [other]:
            assert plane.cached(secret)
        started = time.monotonic()
        await _org(api, {"roles": {"Developer": ["files:read"]}})
        await until(lambda: all_refused([other]), "the role's removal", seconds=1.0)
        assert time.monotonic() - started < 1.0
        found = await api.resolves(other)
        assert found is not None
        assert found.role == "Other"


async def test_a_role_counts_for_management_api_callers(api: Api) -> None:
    await _org(api, {"roles": {"Self service": OWN}})
    created = await _create(api, {"name": "mgmt-by-role", "scopes": [], "role": "Self service"})
    api.secrets["by-role"] = created["token"]
    r = await api.call("GET", "/v1/tokens", "by-role")
    assert r.status_code == 200, r.text
    await _org(api, {"roles": {}})
    r = await api.call("GET", "/v1/tokens", "by-role")
    assert r.status_code == 403, r.text


# -- restricted ----------------------------------------------------------------------------


async def test_restricted_through_the_api(api: Api, redis_client: aioredis.Redis) -> None:
    ns = api.store.keyspace.namespace
    before = await snapshot(redis_client, ns)
    body = {"name": "r", "restricted": {"threads": ["read"]}}
    assert await _refused(api, "POST", "/v1/tokens", "alice", body) == (
        422,
        "no_resource_catalogue",
    )
    assert await snapshot(redis_client, ns) == before
    await _org(api, {"resources": ["threads", "files", "billing"], "member_scopes": ["threads:*"]})
    before = await snapshot(redis_client, ns)
    for bad in (
        {"name": "r", "restricted": {"orders": ["read"]}},
        {"name": "r", "restricted": {"threads": ["admin"]}},
        {"name": "r", "restricted": {"threads": ["read"]}, "scopes": ["threads:read"]},
        {"name": "r", "restricted": {"threads": ["read"]}, "scopes": []},
        {"name": "r", "restricted": []},
    ):
        assert await _refused(api, "POST", "/v1/tokens", "alice", bad) == (400, "validation")
    body = {"name": "r", "restricted": {"billing": ["read"]}}
    assert await _refused(api, "POST", "/v1/tokens", "alice", body) == (
        403,
        "scope_not_grantable",
    )
    assert await snapshot(redis_client, ns) == before
    made = await _create(api, {"restricted": {"threads": ["read", "list"]}})
    assert sorted(made["scopes"]) == ["threads:list", "threads:read"]
    token = await api.resolves(made["token"])
    assert isinstance(token, Token)
    assert token.scopes == tuple(sorted(made["scopes"]))


# -- the org's settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"roles": []},
        {"roles": {"9lives": ["threads:read"]}},
        {"roles": {"Dev": ["threads:read"], "DEV": ["threads:read"]}},
        {"roles": {f"R{i}": [] for i in range(33)}},
        {"roles": {"Dev": ["no such scope"]}},
        {"roles": {"Dev": "threads:read"}},
        {"resources": ["Threads"]},
        {"resources": "threads"},
        {"resources": [f"r{i}" for i in range(201)]},
        {"default_can_manage_tokens": "false"},
        {"scopes_required": 1},
        {"default_scopes": "threads:read"},
    ],
)
async def test_bad_org_settings_are_400_and_change_nothing(
    api: Api, redis_client: aioredis.Redis, body: dict[str, Any]
) -> None:
    await _org(api, {"roles": {"Keep": ["threads:read"]}, "resources": ["keep"]})
    ns = api.store.keyspace.namespace
    before = await snapshot(redis_client, ns)
    assert await _refused(api, "PUT", "/v1/orgs/acme", "admin", body) == (400, "validation")
    assert await snapshot(redis_client, ns) == before
    org = (await api.call("GET", "/v1/orgs/acme", "admin")).json()
    assert (org["roles"], org["resources"]) == ({"Keep": ["threads:read"]}, ["keep"])


async def test_org_settings_need_an_admin(api: Api, redis_client: aioredis.Redis) -> None:
    ns = api.store.keyspace.namespace
    before = await snapshot(redis_client, ns)
    for body in ({"roles": {"Mine": ["*"]}}, {"default_can_manage_tokens": False}):
        status, _ = await _refused(api, "PUT", "/v1/orgs/acme", "alice", body)
        assert status == 403
    assert await snapshot(redis_client, ns) == before


async def test_permission_switch_through_the_api(api: Api) -> None:
    await _org(api, {"default_can_manage_tokens": False})
    r = await api.call(
        "PUT", "/v1/users/carol", "admin", json={"email": "c@acme.io", "name": "Carol"}
    )
    assert (r.status_code, r.json()["can_manage_tokens"]) == (200, False), r.text
    body = {"name": "t", "scopes": [], "owner": {"type": "user", "id": "carol"}}
    status, _ = await _refused(api, "POST", "/v1/tokens", "admin", body)
    assert status == 403
    dan = {"email": "d@acme.io", "can_manage_tokens": True}
    r = await api.call("PUT", "/v1/users/dan", "admin", json=dan)
    assert (r.status_code, r.json()["can_manage_tokens"]) == (200, True), r.text
    r = await api.call("PUT", "/v1/users/carol", "admin", json={"can_manage_tokens": True})
    assert r.json()["can_manage_tokens"] is True
    r = await api.call("POST", "/v1/tokens", "admin", json=body)
    assert r.status_code == 201, r.text
