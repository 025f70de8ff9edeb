"""Token lifecycle through the service layer: create, get, edit, scopes, revoke,
regenerate, delete — against the real Valkey server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from patgate.gateway.lifecycle import Actor, Owner
from patgate.gateway.lifecycle.tokens import DEFAULT_LIFETIME
from patgate.middleware.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceError,
    ValidationFailed,
)
from patgate.policies.scopes import MANAGEMENT_SCOPES
from tests._topologies import ALL_BACKENDS
from tests.gateway._clock import T0
from tests.gateway.lifecycle._world import World

DAY = 86_400.0
#: the store tests run on standalone, Sentinel and Cluster (tests/conftest.py).
BACKENDS = ALL_BACKENDS
MARCH_1 = datetime(2027, 3, 1, tzinfo=UTC).timestamp()


# -- create ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("preset", "lifetime"),
    [
        ("1d", DAY),
        ("7d", 7 * DAY),
        ("30d", 30 * DAY),
        ("60d", 60 * DAY),
        ("90d", 90 * DAY),
        ("180d", 180 * DAY),
        ("1y", 365 * DAY),
        ("never", None),
        (None, DEFAULT_LIFETIME),
    ],
)
async def test_create_with_each_preset(
    w: World, preset: str | None, lifetime: float | None
) -> None:
    token, secret = await w.tokens.create(
        w.alice, name="ci", expiration=preset, scopes=["threads:read"]
    )
    assert token.expires_at == (None if lifetime is None else T0 + lifetime)
    assert w.fmt.is_well_formed(secret)
    assert token.prefix == secret[:8]
    assert (token.owner_kind, token.owner_id, token.org_id) == ("user", "alice", "acme")
    assert (token.type, token.created_by, token.created_at) == ("personal", "alice", T0)
    assert token.status(T0) == "active"
    assert await w.store.get_token(token.id) == token
    assert await w.resolves(secret) == token
    assert await w.usable(secret)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        ("2027-03-01T00:00:00Z", MARCH_1),
        ("2027-03-01T01:00:00+01:00", MARCH_1),
        (int(MARCH_1), MARCH_1),
        (MARCH_1 + 0.5, MARCH_1 + 0.5),
    ],
)
async def test_create_with_explicit_time(w: World, expires_at: object, expected: float) -> None:
    token, _ = await w.tokens.create(w.alice, name="t", expires_at=expires_at)
    assert token.expires_at == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    "kwargs",
    [
        {"expires_at": T0 - 1},
        {"expires_at": T0},
        {"expires_at": "2020-01-01T00:00:00Z"},
        {"expires_at": "2030-01-01T00:00:00"},  # no zone
        {"expires_at": "tomorrow"},
        {"expires_at": True},
        {"expires_at": ["2030-01-01T00:00:00Z"]},
        {"expires_at": float("nan")},
        {"expires_at": float("inf")},
        {"expires_at": 1e300},
        {"expiration": "2d"},
        {"expiration": "30d", "expires_at": T0 + 100},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "bad\x00name"},
        {"name": 5},
        {"description": "x" * 1001},
        {"description": 7},
        {"scopes": ["threads"]},
        {"scopes": "threads:read"},
        {"scopes": ["threads:fly"]},
        {"workspaces": []},
        {"workspaces": ["bad ws"]},
        {"workspaces": "ws1"},
        {"type": "robot"},
    ],
)
async def test_create_rejects_bad_input_and_stores_nothing(
    w: World, kwargs: dict[str, object]
) -> None:
    args: dict[str, object] = {"name": "ok"} | kwargs
    with pytest.raises(ValidationFailed):
        await w.tokens.create(w.alice, **args)  # type: ignore[arg-type]
    assert await w.store.count(w.store.keys_for("acme").owner_tokens("u:acme/alice")) == 0
    assert not [e for e in await w.events() if e["type"].startswith("token.")]


@pytest.mark.anyio
async def test_create_normalizes_scopes_workspaces_and_name(w: World) -> None:
    token, _ = await w.tokens.create(
        w.admin,  # "all" is grantable by admins only (issue 9)
        name="  spaced  ",
        scopes=["Threads:Read", "all", "threads:read"],
        workspaces=["ws2", "ws1", "ws2"],
    )
    assert token.name == "spaced"
    assert token.scopes == ("all", "threads:read")
    assert token.workspaces == ("ws1", "ws2")
    star, _ = await w.tokens.create(w.alice, name="star", workspaces="*")
    assert star.workspaces is None


@pytest.mark.anyio
async def test_names_are_unique_per_owner_case_insensitively(w: World) -> None:
    await w.tokens.create(w.alice, name="Deploy Bot")
    with pytest.raises(Conflict) as exc:
        await w.tokens.create(w.alice, name="deploy bot")
    assert exc.value.status_code == 409
    assert await w.store.count(w.store.keys_for("acme").owner_tokens("u:acme/alice")) == 1
    other, _ = await w.tokens.create(w.bob, name="Deploy Bot")
    org_owned, _ = await w.tokens.create(w.admin, name="deploy bot", owner=Owner("org", "acme"))
    assert other.owner_id == "bob"
    assert org_owned.owner_kind == "org"


@pytest.mark.anyio
async def test_admin_creates_org_owned_service_token(w: World) -> None:
    token, secret = await w.tokens.create(
        w.admin, name="billing-sync", owner=Owner("org", "acme"), scopes=["billing:read"]
    )
    assert (token.owner_kind, token.owner_id, token.type) == ("org", "acme", "service")
    assert token.created_by == "root"
    assert await w.usable(secret)


@pytest.mark.anyio
async def test_admin_creates_token_for_a_member(w: World) -> None:
    token, _ = await w.tokens.create(
        w.admin, name="for-alice", owner=Owner("user", "alice", "acme")
    )
    assert (token.owner_id, token.created_by) == ("alice", "root")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("actor", "owner", "error"),
    [
        ("alice", Owner("org", "acme"), Forbidden),
        ("alice", Owner("user", "bob", "acme"), Forbidden),
        ("admin", Owner("org", "other"), Forbidden),
        # users of other orgs are invisible (404), like in get_user
        ("admin", Owner("user", "eve", "other"), NotFound),
        ("admin", Owner("user", "ghost", "acme"), NotFound),
        ("admin", Owner("user", "bad id!", "acme"), ValidationFailed),
        ("system", None, ValidationFailed),
    ],
)
async def test_create_for_someone_else_needs_admin_of_that_org(
    w: World, actor: str, owner: Owner | None, error: type[ServiceError]
) -> None:
    with pytest.raises(error):
        await w.tokens.create(getattr(w, actor), name="x", owner=owner)
    for org, key in (
        ("acme", "u:acme/alice"),
        ("acme", "u:acme/bob"),
        ("acme", "o:acme"),
        ("other", "o:other"),
        ("other", "u:other/eve"),
    ):
        assert await w.store.count(w.store.keys_for(org).owner_tokens(key)) == 0


@pytest.mark.anyio
async def test_member_without_write_scope_cannot_create(w: World) -> None:
    reader = Actor("user", "alice", "acme", "member", frozenset({"tokens:read:own"}))
    with pytest.raises(Forbidden):
        await w.tokens.create(reader, name="x")
    with pytest.raises(Forbidden):
        await w.tokens.create(w.alice, name="x", type="oauth")


@pytest.mark.anyio
@pytest.mark.parametrize("change", [{"enabled": False}, {"can_manage_tokens": False}])
async def test_disabled_users_cannot_get_tokens(w: World, change: dict[str, bool]) -> None:
    await w.directory.put_user(w.system, "alice", change)
    for actor in (w.admin, w.system):
        with pytest.raises(Forbidden):
            await w.tokens.create(actor, name="x", owner=Owner("user", "alice", "acme"))
    assert await w.store.count(w.store.keys_for("acme").owner_tokens("u:acme/alice")) == 0


@pytest.mark.anyio
async def test_create_in_missing_org(w: World) -> None:
    with pytest.raises(NotFound):
        await w.tokens.create(w.system, name="x", owner=Owner("org", "nowhere"))


# -- get / access ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_own_and_visibility(w: World) -> None:
    token, _ = await w.tokens.create(w.alice, name="mine")
    assert await w.tokens.get(w.alice, token.id) == token
    assert (await w.tokens.get(w.admin, token.id)).id == token.id
    with pytest.raises(NotFound):
        await w.tokens.get(w.bob, token.id)
    eve = Actor("user", "eve", "other", "admin", frozenset(MANAGEMENT_SCOPES))
    with pytest.raises(NotFound):
        await w.tokens.get(eve, token.id)
    with pytest.raises(NotFound):
        await w.tokens.get(w.alice, "tok_doesnotexist")
    # an admin may read and revoke a member's token but not edit or regenerate it
    with pytest.raises(NotFound):
        await w.tokens.update(w.admin, token.id, {"name": "hijacked"})
    with pytest.raises(NotFound):
        await w.tokens.regenerate(w.admin, token.id)
    assert (await w.tokens.get(w.alice, token.id)).name == "mine"


@pytest.mark.anyio
async def test_demoted_admin_loses_admin_powers(w: World) -> None:
    token, _ = await w.tokens.create(w.alice, name="mine")
    demoted = Actor("user", "root", "acme", "member", frozenset(MANAGEMENT_SCOPES))
    with pytest.raises(NotFound):
        await w.tokens.get(demoted, token.id)
    with pytest.raises(Forbidden):
        await w.tokens.create(demoted, name="x", owner=Owner("org", "acme"))


# -- update ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"name": "renamed"}, "name", "renamed"),
        ({"description": "new text"}, "description", "new text"),
        ({"description": None}, "description", ""),
        ({"scopes": ["repos:read", "repos:write"]}, "scopes", ("repos:read", "repos:write")),
        ({"scopes": []}, "scopes", ()),
        ({"workspaces": ["w9"]}, "workspaces", ("w9",)),
        ({"workspaces": "*"}, "workspaces", None),
    ],
)
async def test_update_each_field(
    w: World, changes: dict[str, object], field: str, value: object
) -> None:
    token, secret = await w.tokens.create(
        w.alice, name="t", description="d", scopes=["threads:read"], workspaces=["w1"]
    )
    w.clock.now += 5
    updated = await w.tokens.update(w.alice, token.id, changes)
    assert getattr(updated, field) == value
    assert updated.updated_at == T0 + 5
    stored = await w.store.get_token(token.id)
    assert stored == updated
    untouched = {"name", "description", "scopes", "workspaces"} - {field}
    for other in untouched:
        assert getattr(stored, other) == getattr(token, other)
    assert (stored.digest, stored.expires_at, stored.created_at) == (
        token.digest,
        token.expires_at,
        token.created_at,
    )
    assert await w.usable(secret)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"owner": "bob"},
        {"name": "ok", "expires_at": 5},
        {"scopes": ["nope"]},
        {"name": ""},
        {"workspaces": []},
        {"digest": "00"},
        {"name": "ok", "revoked_at": 1},
    ],
)
async def test_update_rejects_bad_input_and_changes_nothing(
    w: World, changes: dict[str, object]
) -> None:
    token, _ = await w.tokens.create(w.alice, name="t", scopes=["threads:read"])
    with pytest.raises(ValidationFailed):
        await w.tokens.update(w.alice, token.id, changes)
    assert await w.store.get_token(token.id) == token


@pytest.mark.anyio
async def test_rename_to_taken_name_is_409_and_changes_nothing(w: World) -> None:
    a, _ = await w.tokens.create(w.alice, name="one")
    b, _ = await w.tokens.create(w.alice, name="two")
    with pytest.raises(Conflict):
        await w.tokens.update(w.alice, b.id, {"name": "ONE", "description": "x"})
    assert await w.store.get_token(b.id) == b
    # changing only the case of one's own name is fine, and frees nothing
    renamed = await w.tokens.update(w.alice, a.id, {"name": "One"})
    assert renamed.name == "One"
    with pytest.raises(Conflict):
        await w.tokens.create(w.alice, name="one")
    # the old name is released after a real rename
    await w.tokens.update(w.alice, b.id, {"name": "three"})
    again, _ = await w.tokens.create(w.alice, name="two")
    assert again.name == "two"


# -- scopes ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_add_remove_clear_scopes(w: World) -> None:
    token, secret = await w.tokens.create(w.alice, name="t", scopes=["threads:read"])
    t = await w.tokens.add_scopes(w.alice, token.id, ["threads:write", "Threads:Read"])
    assert t.scopes == ("threads:read", "threads:write")
    t = await w.tokens.remove_scope(w.alice, token.id, "THREADS:READ")
    assert t.scopes == ("threads:write",)
    with pytest.raises(NotFound):
        await w.tokens.remove_scope(w.alice, token.id, "threads:read")
    with pytest.raises(ValidationFailed):
        await w.tokens.remove_scope(w.alice, token.id, "not a scope")
    with pytest.raises(ValidationFailed):
        await w.tokens.add_scopes(w.alice, token.id, [])
    with pytest.raises(ValidationFailed):
        await w.tokens.add_scopes(w.alice, token.id, ["bad"])
    assert (await w.store.get_token(token.id)).scopes == ("threads:write",)  # type: ignore[union-attr]
    t = await w.tokens.clear_scopes(w.alice, token.id)
    assert t.scopes == ()
    assert (await w.store.get_token(token.id)).scopes == ()  # type: ignore[union-attr]
    assert await w.usable(secret)


@pytest.mark.anyio
async def test_scope_limit_applies_to_the_sum(w: World) -> None:
    token, _ = await w.tokens.create(w.alice, name="t", scopes=[f"r{i}:read" for i in range(60)])
    with pytest.raises(ValidationFailed):
        await w.tokens.add_scopes(w.alice, token.id, [f"s{i}:read" for i in range(10)])
    assert len((await w.tokens.get(w.alice, token.id)).scopes) == 60


# -- revoke ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_revoke_is_idempotent_and_the_secret_stops_working(w: World) -> None:
    token, secret = await w.tokens.create(w.alice, name="t")
    w.clock.now += 10
    revoked = await w.tokens.revoke(w.alice, token.id)
    assert revoked.revoked_at == T0 + 10
    assert revoked.status(w.clock()) == "revoked"
    assert not await w.usable(secret)
    w.clock.now += 10
    again = await w.tokens.revoke(w.alice, token.id)
    assert again.revoked_at == T0 + 10
    assert await w.store.get_token(token.id) == revoked


@pytest.mark.anyio
async def test_admin_revokes_a_members_token_member_cannot_revoke_others(w: World) -> None:
    token, secret = await w.tokens.create(w.alice, name="t")
    with pytest.raises(NotFound):
        await w.tokens.revoke(w.bob, token.id)
    assert await w.usable(secret)
    await w.tokens.revoke(w.admin, token.id)
    assert not await w.usable(secret)


# -- regenerate --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["active", "revoked", "expired"])
async def test_regenerate_gives_a_new_secret_and_keeps_identity(w: World, state: str) -> None:
    token, old_secret = await w.tokens.create(
        w.alice, name="t", scopes=["threads:read"], workspaces=["w1"], expiration="7d"
    )
    if state == "revoked":
        await w.tokens.revoke(w.alice, token.id)
    if state == "expired":
        w.clock.now = T0 + 8 * DAY
    else:
        w.clock.now = T0 + 3 * DAY
    assert (await w.tokens.get(w.alice, token.id)).status(w.clock()) == state
    new, secret = await w.tokens.regenerate(w.alice, token.id)
    assert secret != old_secret
    assert w.fmt.is_well_formed(secret)
    assert (new.id, new.name, new.scopes, new.workspaces, new.created_at) == (
        token.id,
        token.name,
        token.scopes,
        token.workspaces,
        token.created_at,
    )
    assert new.prefix == secret[:8] != token.prefix
    assert new.status(w.clock()) == "active"
    assert new.revoked_at is None
    # default: the same lifetime the previous secret had, from now
    assert new.expires_at == w.clock() + 7 * DAY
    assert new.issued_at == w.clock()
    assert await w.resolves(old_secret) is None
    assert await w.resolves(secret) == new
    assert await w.usable(secret)
    assert await w.store.get_token(token.id) == new


@pytest.mark.anyio
async def test_regenerate_with_explicit_expiry_and_never(w: World) -> None:
    token, _ = await w.tokens.create(w.alice, name="t", expiration="never")
    again, _ = await w.tokens.regenerate(w.alice, token.id)
    assert again.expires_at is None
    shorter, _ = await w.tokens.regenerate(w.alice, token.id, expiration="1d")
    assert shorter.expires_at == T0 + DAY
    explicit, _ = await w.tokens.regenerate(w.alice, token.id, expires_at=T0 + 1234)
    assert explicit.expires_at == T0 + 1234
    with pytest.raises(ValidationFailed):
        await w.tokens.regenerate(w.alice, token.id, expires_at=T0 - 1)
    assert await w.store.get_token(token.id) == explicit


@pytest.mark.anyio
async def test_regenerate_twice_only_the_latest_secret_works(w: World) -> None:
    token, s1 = await w.tokens.create(w.alice, name="t")
    _, s2 = await w.tokens.regenerate(w.alice, token.id)
    _, s3 = await w.tokens.regenerate(w.alice, token.id)
    assert [await w.resolves(s) is not None for s in (s1, s2, s3)] == [False, False, True]
    assert await w.store.count(w.store.keys_for("acme").owner_tokens("u:acme/alice")) == 1


# -- delete ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delete_forgets_the_secret_and_frees_the_name(w: World) -> None:
    token, secret = await w.tokens.create(w.alice, name="t")
    await w.tokens.delete(w.alice, token.id)
    assert await w.resolves(secret) is None
    assert await w.store.get_token(token.id) is None
    with pytest.raises(NotFound):
        await w.tokens.get(w.alice, token.id)
    with pytest.raises(NotFound):
        await w.tokens.delete(w.alice, token.id)
    again, _ = await w.tokens.create(w.alice, name="t")
    assert again.id != token.id


@pytest.mark.anyio
async def test_member_cannot_delete_others_tokens(w: World) -> None:
    token, secret = await w.tokens.create(w.alice, name="t")
    with pytest.raises(NotFound):
        await w.tokens.delete(w.bob, token.id)
    with pytest.raises(NotFound):
        await w.tokens.delete(w.admin, token.id)
    assert await w.usable(secret)


@pytest.mark.anyio
async def test_delete_all_own(w: World) -> None:
    secrets = [(await w.tokens.create(w.alice, name=f"t{i}"))[1] for i in range(4)]
    _, bob_secret = await w.tokens.create(w.bob, name="t0")
    assert await w.tokens.delete_all_own(w.alice) == 4
    assert [await w.resolves(s) for s in secrets] == [None] * 4
    assert await w.store.count(w.store.keys_for("acme").owner_tokens("u:acme/alice")) == 0
    assert await w.usable(bob_secret)
    assert await w.tokens.delete_all_own(w.alice) == 0
    with pytest.raises(ValidationFailed):
        await w.tokens.delete_all_own(w.system)
