"""Users and organizations: sync, permissions, disable/enable, removal."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from patgate.gateway.lifecycle import Actor, Filters, Owner
from patgate.middleware.errors import (
    Forbidden,
    NotFound,
    ServiceError,
    ValidationFailed,
)
from patgate.middleware.store.plan import parse_message
from patgate.policies.scopes import MANAGEMENT_SCOPES
from tests.gateway._clock import T0
from tests.gateway.lifecycle._world import World


async def _events(w: World) -> list[dict[str, object]]:
    """Every event of the world's orgs, newest first."""
    return list(reversed(await w.events()))


# -- orgs --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_org_defaults_and_merge_update(w: World) -> None:
    org = await w.directory.get_org(w.admin, "acme")
    assert (org.name, org.token_limit, org.max_lifetime, org.allow_never) == (
        "Acme",
        10,
        None,
        True,
    )
    w.clock.now += 1
    org = await w.directory.put_org(w.admin, "acme", {"token_limit": 3, "max_lifetime": "90d"})
    assert (org.name, org.token_limit, org.max_lifetime) == ("Acme", 3, 90 * 86400.0)
    org = await w.directory.put_org(w.admin, "acme", {"allow_never": False, "max_lifetime": None})
    assert (org.token_limit, org.max_lifetime, org.allow_never) == (3, None, False)
    assert await w.store.get_org("acme") == org
    assert (org.created_at, org.updated_at) == (T0, T0 + 1)


@pytest.mark.anyio
async def test_unchanged_org_put_writes_no_event(w: World) -> None:
    before = len(await _events(w))
    await w.directory.put_org(w.admin, "acme", {"name": "Acme"})
    assert len(await _events(w)) == before


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"token_limit": 0},
        {"token_limit": 10_001},
        {"token_limit": True},
        {"token_limit": "5"},
        {"token_limit": 2.5},
        {"max_lifetime": "2d"},
        {"max_lifetime": -1},
        {"max_lifetime": 0},
        {"max_lifetime": float("nan")},
        {"max_lifetime": [1]},
        {"max_lifetime": True},
        {"allow_never": "yes"},
        {"name": "x" * 201},
        {"name": 3},
        {"bogus": 1},
    ],
)
async def test_bad_org_input_changes_nothing(w: World, body: dict[str, object]) -> None:
    before = await w.store.get_org("acme")
    with pytest.raises(ValidationFailed):
        await w.directory.put_org(w.admin, "acme", body)
    assert await w.store.get_org("acme") == before


@pytest.mark.anyio
async def test_org_access(w: World) -> None:
    with pytest.raises(Forbidden):
        await w.directory.put_org(w.alice, "acme", {"token_limit": 50})
    with pytest.raises(Forbidden):
        await w.directory.put_org(w.admin, "other", {"token_limit": 50})
    with pytest.raises(Forbidden):
        await w.directory.get_org(w.admin, "other")
    with pytest.raises(NotFound):
        await w.directory.get_org(w.system, "missing")
    with pytest.raises(ValidationFailed):
        await w.directory.put_org(w.system, "bad id!", {})
    assert (await w.directory.get_org(w.alice, "acme")).token_limit == 10


# -- users -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_put_user_creates_then_merges(w: World) -> None:
    user = await w.directory.put_user(w.admin, "bob", {"email": "b@acme.io"})
    assert (user.org_id, user.role, user.enabled, user.can_manage_tokens) == (
        "acme",
        "member",
        True,
        True,
    )
    w.clock.now += 1
    user = await w.directory.put_user(w.admin, "bob", {"role": "admin", "name": "Bob"})
    assert (user.email, user.role, user.name, user.updated_at) == (
        "b@acme.io",
        "admin",
        "Bob",
        T0 + 1,
    )
    assert await w.directory.get_user(w.admin, "bob") == user
    ids = [u.id for u in await w.directory.list_users(w.admin, "acme")]
    assert sorted(ids) == ["alice", "bob", "root"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("user_id", "body"),
    [
        ("new", {}),  # email required
        ("new", {"email": "no-at-sign"}),
        ("new", {"email": "n@x.io", "org_id": "bad id!"}),
        ("alice", {"role": "owner"}),
        ("alice", {"role": ["admin"]}),
        ("alice", {"enabled": "false"}),
        ("alice", {"can_manage_tokens": 0}),
        ("alice", {"org_id": "other"}),
        ("alice", {"email": 5}),
        ("alice", {"password": "x"}),
        ("bad id!", {"email": "x@y.z"}),
    ],
)
async def test_bad_user_input_changes_nothing(
    w: World, user_id: str, body: dict[str, object]
) -> None:
    before = await w.store.get_user("acme", "alice")
    events = len(await _events(w))
    with pytest.raises(ValidationFailed):
        await w.directory.put_user(w.admin, user_id, body)
    assert await w.store.get_user("acme", "alice") == before
    assert await w.store.get_user("acme", "new") is None
    assert len(await _events(w)) == events


@pytest.mark.anyio
async def test_user_access_rules(w: World) -> None:
    assert (await w.directory.get_user(w.alice, "alice")).email == "a@acme.io"
    with pytest.raises(Forbidden):
        await w.directory.get_user(w.alice, "root")
    with pytest.raises(NotFound):
        await w.directory.get_user(w.admin, "eve")  # another org: invisible
    with pytest.raises(NotFound):
        await w.directory.get_user(w.admin, "ghost")
    with pytest.raises(Forbidden):
        await w.directory.put_user(w.alice, "alice", {"role": "admin"})
    with pytest.raises(ValidationFailed):  # the same answer whether or not it exists there
        await w.directory.put_user(w.admin, "mallory", {"email": "m@x.io", "org_id": "other"})
    with pytest.raises(NotFound):
        await w.directory.put_user(w.system, "mallory", {"email": "m@x.io", "org_id": "nope"})
    with pytest.raises(Forbidden):
        await w.directory.list_users(w.alice, "acme")
    with pytest.raises(Forbidden):
        await w.directory.remove_user(w.alice, "root")
    assert (await w.store.get_user("acme", "alice")).role == "member"  # type: ignore[union-attr]
    assert await w.store.get_user("acme", "mallory") is None


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["enabled", "can_manage_tokens"])
async def test_disable_suspends_tokens_and_enable_restores(
    w: World, field: str, redis_client: aioredis.Redis
) -> None:
    _, secret = await w.tokens.create(w.alice, name="t")
    org_token, org_secret = await w.tokens.create(w.admin, name="svc", owner=Owner("org", "acme"))
    assert await w.reason(secret) is None
    pubsub = redis_client.pubsub()
    # COMMIT publishes on the org's partition channel, a shard channel (SPUBLISH)
    await pubsub.ssubscribe(w.store.keys_for("acme").channel)
    try:
        await pubsub.get_message(timeout=1.0)
        await w.directory.put_user(w.admin, "alice", {field: False})
        message = None
        with anyio.fail_after(2):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert message["type"] == "smessage"
        parsed = parse_message(message["data"])  # stamped by COMMIT (issue 11)
        assert (parsed.kind, parsed.owner) == ("owner", "acme/alice")
        assert parsed.position is not None
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    # The permission switch has its own reason (issue 9).
    assert await w.reason(secret) == ("disabled" if field == "enabled" else "no_permission")
    assert await w.reason(org_secret) is None  # org tokens do not depend on one user
    # the token itself is untouched: still listed, still "active"
    token = (await w.tokens.list_own(w.alice, Filters())).items[0]
    assert token.status(w.clock()) == "active"
    events = await _events(w)
    assert events[0]["type"] == "user.permission_changed"
    await w.directory.put_user(w.admin, "alice", {field: True})
    assert await w.reason(secret) is None
    assert org_token.created_by == "root"


@pytest.mark.anyio
async def test_remove_user_revokes_personal_tokens_org_tokens_survive(w: World) -> None:
    await w.directory.put_user(w.admin, "alice", {"role": "admin"})
    alice_admin = Actor("user", "alice", "acme", "admin", frozenset(MANAGEMENT_SCOPES))
    personal, p_secret = await w.tokens.create(alice_admin, name="mine")
    already, _ = await w.tokens.create(alice_admin, name="gone")
    await w.tokens.revoke(alice_admin, already.id)
    org_token, o_secret = await w.tokens.create(alice_admin, name="svc", owner=Owner("org", "acme"))
    w.clock.now += 7
    revoked = await w.directory.remove_user(w.admin, "alice")
    assert revoked == [personal.id]
    assert await w.store.get_user("acme", "alice") is None
    assert await w.reason(p_secret) == "revoked"
    assert await w.reason(o_secret) is None
    survivor = await w.tokens.get(w.admin, org_token.id)
    assert (survivor.created_by, survivor.revoked_at) == ("alice", None)
    # personal tokens are revoked, not deleted: the admin view still lists them
    listed = await w.tokens.list_org(w.admin, "acme", Filters(status="revoked"))
    assert {t.id: t.revoked_at for t in listed.items} == {personal.id: T0 + 7, already.id: T0}
    event = (await _events(w))[0]
    assert (event["type"], event["user_id"]) == ("user.removed", "alice")
    assert event["data"] == {"revoked_token_ids": [personal.id]}
    with pytest.raises(NotFound):
        await w.directory.remove_user(w.admin, "alice")


@pytest.mark.anyio
async def test_remove_user_in_another_org_is_refused(w: World) -> None:
    with pytest.raises(ServiceError):
        await w.directory.remove_user(w.admin, "eve")
    assert await w.store.get_user("other", "eve") is not None
