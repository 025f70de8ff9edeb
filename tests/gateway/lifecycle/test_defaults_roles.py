"""Issue 13 in the lifecycle: default scopes, roles, restricted keys, the org's new
settings and the permission switch — over the session's real Valkey, with a real data
plane (tests/middleware/_plane.py) where what a token may *do* is the question."""

from __future__ import annotations

from typing import Any

import pytest

from patgate.gateway.lifecycle import Owner
from patgate.middleware.errors import (
    Forbidden,
    ServiceError,
    Unprocessable,
    ValidationFailed,
)
from patgate.middleware.grants import effective, grantable
from patgate.middleware.records import Token
from patgate.policies.scopes import ADMIN_ONLY_SCOPES, grants, intersect, ungranted
from tests.gateway.lifecycle._world import OWN, World, member
from tests.middleware._plane import data_plane, until
from tests.middleware._tokens import MEMBER_SCOPES

pytestmark = pytest.mark.anyio


def _holds(scopes: tuple[str, ...] | list[str], scope: str) -> bool:
    return grants(frozenset(scopes), scope)


async def _effective(w: World, token: Token) -> tuple[str, ...]:
    org = await w.store.get_org(token.org_id)
    user = None
    if token.owner_kind == "user":
        user = await w.store.get_user(token.org_id, token.owner_id)
    return effective(token, org, user)[0]


async def _put(w: World, **body: Any) -> None:
    await w.directory.put_org(w.system, "acme", body)


# -- defaults ----------------------------------------------------------------------------


async def test_member_default_is_all_the_member_may_grant(w: World) -> None:
    token, _ = await w.tokens.create(w.alice, name="d")
    assert set(token.scopes) == set(MEMBER_SCOPES) | OWN
    assert token.role is None
    for scope in ADMIN_ONLY_SCOPES:
        assert not _holds(token.scopes, scope)


async def test_admin_default_is_star_less_admin_only(w: World, store_url: str) -> None:
    token, secret = await w.tokens.create(w.admin, name="d")
    org = await w.store.get_org("acme")
    root = await w.store.get_user("acme", "root")
    assert org is not None
    assert org.admin_scopes == ("*",)
    for scope in ADMIN_ONLY_SCOPES:
        assert not _holds(token.scopes, scope), token.scopes
        assert not _holds(await _effective(w, token), scope)
    for scope in ("threads:read", "files:delete", "billing:write", "tokens:read:own"):
        assert _holds(token.scopes, scope), scope
    # everything but the admin action of the admin's grant
    assert ungranted(token.scopes, grantable(org, root)) == []
    assert set(token.scopes) >= {f"*:{a}" for a in ("create", "read", "list", "delete")}
    async with data_plane(w.store, w.fmt, w.clock, store_url) as plane:
        assert (await plane.call(secret)).ok
        assert (await plane.call(secret, method="POST", path="/threads")).ok


async def test_admin_creating_for_a_member_gets_the_meet(w: World) -> None:
    await _put(w, member_scopes=["threads:*", "files:read"])
    token, _ = await w.tokens.create(w.admin, name="d", owner=Owner("user", "alice"))
    org = await w.store.get_org("acme")
    alice = await w.store.get_user("acme", "alice")
    root = await w.store.get_user("acme", "root")
    assert set(token.scopes) == {"threads:*", "files:read", *OWN}
    meet = intersect(grantable(org, alice), grantable(org, root))
    assert ungranted(token.scopes, meet) == []
    assert not _holds(token.scopes, "billing:read")


async def test_org_default_scopes_apply_and_are_grant_checked(w: World) -> None:
    await _put(w, default_scopes=["threads:read", "files:list"])
    token, _ = await w.tokens.create(w.alice, name="d")
    assert token.scopes == ("files:list", "threads:read")
    # a default the creator may not grant: refused, not silently narrowed
    await _put(w, default_scopes=["billing:admin"])
    with pytest.raises(Forbidden) as refused:
        await w.tokens.create(w.alice, name="d2")
    assert refused.value.code == "scope_not_grantable"
    # admin-only scopes are never a default: a token gets them only by naming them
    for admin_only in (["tokens:admin"], ["users:admin"], ["*"], ["tokens:*"]):
        with pytest.raises(ValidationFailed, match="default_scopes"):
            await _put(w, default_scopes=admin_only)
    # null: back to "all the creator may grant"
    await _put(w, default_scopes=None)
    token, _ = await w.tokens.create(w.alice, name="d4")
    assert set(token.scopes) == set(MEMBER_SCOPES) | OWN


async def test_a_default_wider_than_a_token_may_carry_is_a_clear_400(w: World) -> None:
    await _put(w, member_scopes=[f"r{i}:read" for i in range(63)])  # + 2 self-service
    with pytest.raises(ValidationFailed, match="more than a token may carry"):
        await w.tokens.create(w.alice, name="d")
    await _put(w, default_scopes=["r1:read"])
    token, _ = await w.tokens.create(w.alice, name="d")
    assert token.scopes == ("r1:read",)


async def test_scopes_required(w: World) -> None:
    await _put(w, scopes_required=True, roles={"Dev": ["threads:*"]}, resources=["threads"])
    before = await w.events()
    with pytest.raises(ValidationFailed, match="scopes"):
        await w.tokens.create(w.alice, name="d")
    assert await w.events() == before
    listed, _ = await w.tokens.create(w.alice, name="a", scopes=["threads:read"])
    assert listed.scopes == ("threads:read",)
    empty, _ = await w.tokens.create(w.alice, name="b", scopes=[])
    assert empty.scopes == ()
    roled, _ = await w.tokens.create(w.alice, name="c", role="Dev")
    assert (roled.scopes, roled.role) == ((), "Dev")
    restricted, _ = await w.tokens.create(w.alice, name="e", restricted={"threads": ["read"]})
    assert restricted.scopes == ("threads:read",)


async def test_explicit_empty_scopes_are_no_scopes(w: World) -> None:
    token, _ = await w.tokens.create(w.alice, name="d", scopes=[])
    assert token.scopes == ()
    assert await _effective(w, token) == ()


async def test_a_role_alone_gets_only_the_role(w: World) -> None:
    await _put(w, roles={"Reader": ["files:read"]})
    token, _ = await w.tokens.create(w.alice, name="d", role="Reader")
    assert token.scopes == ()
    assert await _effective(w, token) == ("files:read",)


# -- roles -------------------------------------------------------------------------------


async def test_role_name_is_case_insensitive_and_stored_as_the_org_spells_it(w: World) -> None:
    await _put(w, roles={"Developer": ["threads:*"]})
    token, _ = await w.tokens.create(w.alice, name="d", role="dEVELOPER")
    assert token.role == "Developer"
    assert (await w.store.get_token(token.id, "acme")) == token
    assert token.to_json(w.clock())["role"] == "Developer"
    assert _holds(await _effective(w, token), "threads:delete")


@pytest.mark.parametrize("role", ["Nope", "", 3, ["Developer"], {"name": "Developer"}])
async def test_unknown_or_malformed_role_is_400(w: World, role: Any) -> None:
    await _put(w, roles={"Developer": ["threads:*"]})
    before = await w.events()
    with pytest.raises(ValidationFailed, match="role"):
        await w.tokens.create(w.alice, name="d", role=role)
    token, _ = await w.tokens.create(w.alice, name="ok", scopes=[])
    with pytest.raises(ValidationFailed, match="role"):
        await w.tokens.update(w.alice, token.id, {"role": role})
    assert (await w.store.get_token(token.id, "acme")) == token
    assert len(await w.events()) == len(before) + 1  # only the create


async def test_role_beyond_the_grant_is_refused_at_create_and_patch(w: World) -> None:
    await _put(w, roles={"Admin": ["tokens:admin", "users:admin"], "Ops": ["billing:*"]})
    for role in ("Admin", "Ops"):
        with pytest.raises(Forbidden) as refused:
            await w.tokens.create(w.alice, name="d", role=role)
        assert refused.value.code == "scope_not_grantable"
        # an admin cannot give a member's token the role either (the owner's bound)
        with pytest.raises(Forbidden):
            await w.tokens.create(w.admin, name="d", role=role, owner=Owner("user", "alice"))
    token, _ = await w.tokens.create(w.alice, name="t", scopes=["threads:read"])
    for role in ("Admin", "admin", "Ops"):
        with pytest.raises(Forbidden):
            await w.tokens.update(w.alice, token.id, {"role": role})
    assert (await w.store.get_token(token.id, "acme")) == token
    # admins may hold the Admin role on their own tokens
    mine, _ = await w.tokens.create(w.admin, name="adm", role="Admin")
    assert _holds(await _effective(w, mine), "tokens:admin")


async def test_patch_role_sets_and_clears(w: World) -> None:
    await _put(w, roles={"Developer": ["threads:*"]})
    token, _ = await w.tokens.create(w.alice, name="t", scopes=["files:read"])
    edited = await w.tokens.update(w.alice, token.id, {"role": "developer"})
    assert edited.role == "Developer"
    assert set(await _effective(w, edited)) == {"files:read", "threads:*"}
    events = await w.events()
    assert events[-1]["type"] == "token.updated"
    assert events[-1]["data"] == {"role": "Developer"}
    cleared = await w.tokens.update(w.alice, token.id, {"role": None})
    assert cleared.role is None
    assert await _effective(w, cleared) == ("files:read",)
    assert (await w.store.get_token(token.id, "acme")) == cleared


async def test_role_and_scopes_combine(w: World, store_url: str) -> None:
    await _put(w, roles={"Writer": ["threads:create"]})
    token, secret = await w.tokens.create(w.alice, name="t", scopes=["threads:read"], role="Writer")
    assert (token.scopes, token.role) == (("threads:read",), "Writer")
    async with data_plane(w.store, w.fmt, w.clock, store_url) as plane:
        assert (await plane.call(secret)).ok
        assert (await plane.call(secret, method="POST", path="/threads")).ok


async def test_role_scopes_follow_the_org_definition(w: World) -> None:
    await _put(w, roles={"Developer": ["threads:*"]})
    token, _ = await w.tokens.create(w.alice, name="t", role="Developer")
    await _put(w, roles={"Developer": ["files:read"]})
    assert await _effective(w, token) == ("files:read",)
    # broadened beyond the owner's grant: the token holds only what the owner may grant
    await _put(w, roles={"Developer": ["*"]})
    held = await _effective(w, token)
    alice = await w.store.get_user("acme", "alice")
    assert ungranted(held, grantable(await w.store.get_org("acme"), alice)) == []
    for scope in ADMIN_ONLY_SCOPES:
        assert not _holds(held, scope)
    # removed: the role adds nothing
    await _put(w, roles={})
    assert await _effective(w, token) == ()
    # a role of the same name defined again counts again (roles are held by name)
    await _put(w, roles={"Developer": ["threads:read"]})
    assert await _effective(w, token) == ("threads:read",)


async def test_a_role_respelled_by_the_org_is_still_the_tokens_role(w: World) -> None:
    await _put(w, roles={"Developer": ["threads:*"]})
    token, _ = await w.tokens.create(w.alice, name="t", role="Developer")
    await _put(w, roles={"developer": ["files:read"]})
    assert await _effective(w, token) == ("files:read",)
    regenerated, _ = await w.tokens.regenerate(w.alice, token.id)
    assert regenerated.role == "Developer"


async def test_regenerate_rechecks_the_role(w: World) -> None:
    await _put(w, roles={"Developer": ["threads:*"]})
    token, _ = await w.tokens.create(w.alice, name="t", role="Developer")
    regenerated, secret = await w.tokens.regenerate(w.alice, token.id)
    assert regenerated.role == "Developer"
    assert await w.usable(secret)
    await _put(w, roles={"Developer": ["billing:admin"]})
    with pytest.raises(Forbidden) as refused:
        await w.tokens.regenerate(w.alice, token.id)
    assert refused.value.code == "scope_not_grantable"
    assert (await w.store.get_token(token.id, "acme")) == regenerated


async def test_org_roles_change_flushes_every_cache(w: World, store_url: str) -> None:
    """Changing roles publishes the org invalidation (a full flush of every process's
    cache); a put that changes nothing, or changes no grant, flushes nothing."""
    _, secret = await w.tokens.create(w.alice, name="t", scopes=["threads:read"])
    async with data_plane(w.store, w.fmt, w.clock, store_url) as plane:
        assert (await plane.call(secret)).ok
        assert plane.cached(secret)
        await _put(w, roles={"Developer": ["threads:*"]})
        await until(lambda: not plane.cached(secret), "the org flush")
        assert (await plane.call(secret)).ok
        assert plane.cached(secret)
        await _put(w, roles={"Developer": ["threads:*"]}, resources=["threads"])
        await _put(w, default_scopes=["threads:read"], scopes_required=True)
        await plane.barrier()
        assert plane.cached(secret)
        await _put(w, roles={})
        await until(lambda: not plane.cached(secret), "the org flush")


# -- restricted ----------------------------------------------------------------------------


async def test_restricted_is_exact_scopes(w: World) -> None:
    await _put(w, resources=["threads", "files"])
    token, _ = await w.tokens.create(
        w.alice, name="r", restricted={"threads": ["read", "list"], "files": ["read"]}
    )
    assert set(token.scopes) == {"threads:read", "threads:list", "files:read"}
    assert set(await _effective(w, token)) == {"threads:read", "threads:list", "files:read"}


async def test_restricted_every_operation(w: World) -> None:
    ops = ["create", "read", "list", "update", "delete", "share", "unshare", "publish"]
    ops.append("subscribe")
    await _put(w, resources=["threads"])
    token, _ = await w.tokens.create(w.alice, name="r", restricted={"threads": ops})
    assert set(token.scopes) == {f"threads:{op}" for op in ops}


@pytest.mark.parametrize(
    "restricted",
    [
        {"billing": ["read"]},  # not in the catalogue
        {"threads": ["admin"]},  # not an operation of restricted keys
        {"threads": ["write"]},
        {"threads": ["read", "destroy"]},
        {"threads": "read"},
        {"threads": [1]},
        {"threads": []},
        {},
        ["threads"],
        "threads:read",
    ],
)
async def test_bad_restricted_is_400(w: World, restricted: Any) -> None:
    await _put(w, resources=["threads", "files"])
    before = await w.events()
    with pytest.raises(ValidationFailed, match="restricted"):
        await w.tokens.create(w.alice, name="r", restricted=restricted)
    assert await w.events() == before


async def test_restricted_without_catalogue_is_422(w: World) -> None:
    with pytest.raises(Unprocessable) as refused:
        await w.tokens.create(w.alice, name="r", restricted={"threads": ["read"]})
    assert refused.value.code == "no_resource_catalogue"
    assert refused.value.status_code == 422


async def test_restricted_and_scopes_together_is_400(w: World) -> None:
    await _put(w, resources=["threads"])
    for scopes in (["threads:read"], []):
        with pytest.raises(ValidationFailed, match="restricted"):
            await w.tokens.create(
                w.alice, name="r", scopes=scopes, restricted={"threads": ["read"]}
            )


async def test_restricted_is_grant_checked(w: World) -> None:
    await _put(w, member_scopes=["threads:*"], resources=["threads", "billing", "tokens"])
    with pytest.raises(Forbidden) as refused:
        await w.tokens.create(w.alice, name="r", restricted={"billing": ["read"]})
    assert refused.value.code == "scope_not_grantable"
    token, _ = await w.tokens.create(w.alice, name="r", restricted={"threads": ["delete"]})
    assert token.scopes == ("threads:delete",)


async def test_restricted_with_a_role(w: World) -> None:
    await _put(w, resources=["threads"], roles={"Reader": ["files:read"]})
    token, _ = await w.tokens.create(
        w.alice, name="r", restricted={"threads": ["read"]}, role="Reader"
    )
    assert (token.scopes, token.role) == (("threads:read",), "Reader")
    assert set(await _effective(w, token)) == {"threads:read", "files:read"}


# -- the org's settings ---------------------------------------------------------------------


async def test_org_settings_round_trip(w: World) -> None:
    org = await w.directory.put_org(
        w.admin,
        "acme",
        {
            "default_can_manage_tokens": False,
            "default_scopes": ["threads:read"],
            "scopes_required": True,
            "roles": {"Developer": ["threads:*", "files:read"], "Read only": ["*:read"]},
            "resources": ["threads", "files", "threads"],
        },
    )
    assert org.default_can_manage_tokens is False
    assert org.default_scopes == ("threads:read",)
    assert org.scopes_required is True
    assert org.roles == {"Developer": ("files:read", "threads:*"), "Read only": ("*:read",)} or (
        org.roles == {"Developer": ("threads:*", "files:read"), "Read only": ("*:read",)}
    )
    assert org.resources == ("threads", "files")
    assert await w.store.get_org("acme") == org
    shown = (await w.directory.get_org(w.alice, "acme")).to_json()
    assert shown["roles"]["Read only"] == ["*:read"]
    assert shown["resources"] == ["threads", "files"]
    assert (shown["default_can_manage_tokens"], shown["scopes_required"]) == (False, True)
    # a merge keeps what the body does not name
    org = await w.directory.put_org(w.admin, "acme", {"token_limit": 20})
    assert (org.scopes_required, org.resources, org.default_scopes) == (
        True,
        ("threads", "files"),
        ("threads:read",),
    )


async def test_org_defaults_of_the_new_fields(w: World) -> None:
    org = await w.directory.get_org(w.system, "other")
    assert org.default_can_manage_tokens is True
    assert org.default_scopes is None
    assert org.scopes_required is False
    assert org.roles == {}
    assert org.resources == ()


async def test_org_limits_at_their_bounds_are_accepted(w: World) -> None:
    roles = {f"R{i}": ["threads:read"] for i in range(32)}
    roles["R0" + "x" * 38] = roles.pop("R0")  # a 40-character name
    org = await w.directory.put_org(w.admin, "acme", {"roles": roles})
    assert len(org.roles) == 32
    org = await w.directory.put_org(
        w.admin, "acme", {"resources": [f"r{i}" for i in range(200)], "roles": {"A": []}}
    )
    assert len(org.resources) == 200
    assert org.roles == {"A": ()}


_BAD_ORG_BODIES: list[dict[str, Any]] = [
    {"roles": []},
    {"roles": "Developer"},
    {"roles": None},
    {"roles": {"": ["threads:read"]}},
    {"roles": {"1dev": ["threads:read"]}},
    {"roles": {"dev!": ["threads:read"]}},
    {"roles": {" Dev": ["threads:read"]}},
    {"roles": {"x" * 41: ["threads:read"]}},
    {"roles": {"Dev\n": ["threads:read"]}},
    {"roles": {"Developer": ["threads:*"], "developer": ["files:read"]}},
    {"roles": {"DEV": [], "dev": []}},
    {"roles": {f"R{i}": ["threads:read"] for i in range(33)}},
    {"roles": {"Dev": "threads:read"}},
    {"roles": {"Dev": ["not a scope"]}},
    {"roles": {"Dev": ["threads:"]}},
    {"roles": {"Dev": [1]}},
    {"roles": {"Dev": {"threads:read": True}}},
    {"roles": {"Dev": None}},
    {"roles": {"Ok": ["threads:read"], "Bad": ["x y"]}},
    {"resources": "threads"},
    {"resources": None},
    {"resources": ["Threads"]},
    {"resources": ["1x"]},
    {"resources": ["a:b"]},
    {"resources": ["threads", "*"]},
    {"resources": [""]},
    {"resources": [1]},
    {"resources": {"threads": True}},
    {"resources": [f"r{i}" for i in range(201)]},
    {"default_can_manage_tokens": "no"},
    {"default_can_manage_tokens": 0},
    {"default_can_manage_tokens": None},
    {"scopes_required": 1},
    {"scopes_required": None},
    {"scopes_required": "true"},
    {"default_scopes": "threads:read"},
    {"default_scopes": ["bad scope"]},
    {"default_scopes": {}},
    {"default_scopes": [3]},
    # a valid field beside a bad one: nothing changes either
    {"token_limit": 50, "roles": {"dev": [], "Dev": []}},
]


@pytest.mark.parametrize("body", _BAD_ORG_BODIES)
async def test_bad_org_settings_change_nothing(w: World, body: dict[str, Any]) -> None:
    await _put(w, roles={"Keep": ["threads:read"]}, resources=["keep"])
    before, events = await w.store.get_org("acme"), await w.events()
    with pytest.raises(ValidationFailed):
        await w.directory.put_org(w.admin, "acme", body)
    assert await w.store.get_org("acme") == before
    assert await w.events() == events


async def test_only_admins_set_roles(w: World) -> None:
    with pytest.raises(Forbidden):
        await w.directory.put_org(w.alice, "acme", {"roles": {"Mine": ["*"]}})
    assert (await w.store.get_org("acme")).roles == {}  # type: ignore[union-attr]


# -- the permission switch -----------------------------------------------------------------


async def test_permission_switch_applies_to_new_users(w: World) -> None:
    await _put(w, default_can_manage_tokens=False)
    carol = await w.directory.put_user(
        w.system, "carol", {"org_id": "acme", "email": "c@acme.io", "name": "C"}
    )
    assert carol.can_manage_tokens is False
    # explicit in the body wins
    dave = await w.directory.put_user(
        w.system,
        "dave",
        {"org_id": "acme", "email": "d@acme.io", "name": "D", "can_manage_tokens": True},
    )
    assert dave.can_manage_tokens is True
    # existing users keep theirs
    alice = await w.store.get_user("acme", "alice")
    assert alice is not None
    assert alice.can_manage_tokens is True
    # a merge of an existing user does not reapply the default
    alice = await w.directory.put_user(w.system, "alice", {"name": "Alice A"})
    assert alice.can_manage_tokens is True

    # nobody can make carol a token, and carol cannot make one
    with pytest.raises(Forbidden, match="may not hold tokens"):
        await w.tokens.create(w.system, name="t", owner=Owner("user", "carol", "acme"))
    with pytest.raises(ServiceError):
        await w.tokens.create(member("carol"), name="mine", scopes=["threads:read"])
    # an admin grants it later, per user
    await w.directory.put_user(w.admin, "carol", {"can_manage_tokens": True})
    made, secret = await w.tokens.create(member("carol"), name="mine", scopes=["threads:read"])
    assert made.scopes == ("threads:read",)
    assert await w.usable(secret)
    # and withdraws it: carol's tokens stop authenticating (and come back with it)
    await w.directory.put_user(w.admin, "carol", {"can_manage_tokens": False})
    assert not await w.usable(secret)
    await w.directory.put_user(w.admin, "carol", {"can_manage_tokens": True})
    assert await w.usable(secret)


async def test_permission_switch_default_is_on(w: World) -> None:
    user = await w.directory.put_user(
        w.system, "zed", {"org_id": "other", "email": "z@other.io", "name": "Z"}
    )
    assert user.can_manage_tokens is True
    await w.directory.put_org(w.system, "other", {"default_can_manage_tokens": False})
    admin_user = await w.directory.put_user(
        w.system, "yan", {"org_id": "other", "email": "y@other.io", "name": "Y", "role": "admin"}
    )
    # admins too: the switch is about the permission, not the role
    assert admin_user.can_manage_tokens is False


@pytest.mark.parametrize("name", ["Dev ", " Dev", "Dev\t", "9lives", "", "x" * 41])
async def test_role_names_that_would_look_alike_or_break_are_refused(w: World, name: str) -> None:
    with pytest.raises(ValidationFailed, match="roles"):
        await _put(w, roles={"Dev": ["threads:read"], name: ["threads:read"]})
    org = await w.store.get_org("acme")
    assert org is not None
    assert org.roles == {}
