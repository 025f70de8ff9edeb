"""Rotation with overlap (issue 12): a regeneration's grace period, through the service
layer and one process's real data plane (Authenticator + cache + invalidation
subscriber + last-used recorder) on the session's Valkey, with the test's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from patgate.gateway.lifecycle import EventQuery, Filters, query_events
from patgate.middleware.errors import ValidationFailed
from patgate.middleware.keys import PREVIOUS_SUFFIX
from patgate.middleware.records import DEFAULT_MAX_GRACE, Token, Tombstone
from tests.gateway._clock import T0
from tests.gateway.api._world import snapshot
from tests.gateway.lifecycle._world import World
from tests.middleware._plane import Plane, data_plane, until

pytestmark = pytest.mark.anyio

HOUR = 3600.0
ROTATED = 'error="invalid_token", error_description="token rotated"'
REVOKED = 'error="invalid_token", error_description="token revoked"'


@pytest.fixture
async def plane(w: World, store_url: str) -> AsyncIterator[Plane]:
    async with data_plane(w.store, w.fmt, w.clock, store_url) as p:
        yield p


async def _token(w: World, **kw: Any) -> tuple[Token, str]:
    return await w.tokens.create(w.alice, name="ci", scopes=["threads:read"], **kw)


def _redis(w: World) -> Any:
    """The store's client, typed loosely for direct commands (as the store does)."""
    return w.store.client


async def _indexed(w: World, token_id: str) -> set[bytes]:
    """Every digest the partition's index maps to ``token_id``."""
    index = await _redis(w).hgetall(w.store.keys_for("acme").index)
    return {d for d, v in index.items() if v.decode() == token_id}


async def _tombstone(w: World, secret: str) -> Tombstone | None:
    key = w.store.keys_for("acme").tombstone(w.fmt.digest(secret))
    blob = await _redis(w).get(key)
    return None if blob is None else Tombstone.decode(blob)


async def _events(w: World, token_id: str) -> list[dict[str, Any]]:
    items, _ = await query_events(w.store, EventQuery("acme", token_id=token_id, limit=100))
    return list(reversed(items))  # oldest first


async def _rotated(plane: Plane, secret: str) -> None:
    answer = await plane.call(secret)
    assert (answer.status, answer.error, answer.description) == (
        401,
        "invalid_token",
        "token rotated",
    )
    assert answer.challenge is not None
    assert ROTATED in answer.challenge


# -- both secrets during the grace, the old one refused exactly at its end ---------------


async def test_both_secrets_work_during_the_grace_and_the_old_stops_exactly_at_its_end(
    w: World, plane: Plane
) -> None:
    token, old = await _token(w)
    new_token, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    prev = new_token.previous
    assert prev is not None
    assert (prev.digest, prev.prefix, prev.until) == (token.digest, token.prefix, T0 + HOUR)
    assert prev.pepper_id == token.pepper_id == w.fmt.pepper_id
    assert await _indexed(w, token.id) == {w.fmt.digest(old), w.fmt.digest(new)}
    assert await w.store.get_token(token.id) == new_token

    for secret in (old, new):
        answer = await plane.call(secret)
        assert answer.ok
        assert answer.resolved is not None
        assert answer.resolved.identity.token_id == token.id
    w.clock.now = T0 + HOUR - 0.001
    assert (await plane.call(old)).ok
    rotated_before = plane.decisions("rotated")
    w.clock.now = T0 + HOUR
    await _rotated(plane, old)
    assert plane.decisions("rotated") == rotated_before + 1
    assert (await plane.call(new)).ok
    # The record still names the old secret after its grace: "rotated", not unknown,
    # also on a process that never saw it (a cold cache reads the record).
    plane.cache.flush()
    await _rotated(plane, old)
    assert (await w.tokens.get(w.alice, token.id)).to_json(w.clock())["previous_secret"][
        "status"
    ] == "rotated"


async def test_a_warm_cache_never_extends_the_grace(w: World, plane: Plane) -> None:
    token, old = await _token(w)
    _, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    await plane.barrier()
    w.clock.now = T0 + HOUR - 1
    assert (await plane.call(old)).ok
    assert (await plane.call(old)).ok
    assert plane.cached(old)
    lookups = plane.store.lookups
    w.clock.now = T0 + HOUR
    await _rotated(plane, old)
    assert plane.cached(old)  # answered from the cache: the cache holds no verdict
    assert plane.store.lookups == lookups
    w.clock.now = T0 + 2 * HOUR
    await _rotated(plane, old)
    assert (await plane.call(new)).ok


async def test_the_old_secrets_grace_never_outlives_the_token(w: World, plane: Plane) -> None:
    token, old = await _token(w)
    # The token (both its secrets) expires in an hour; the grace would run for two.
    _, new = await w.tokens.regenerate(
        w.alice, token.id, grace_period=2 * HOUR, expires_at=T0 + HOUR
    )
    w.clock.now = T0 + HOUR - 1
    for secret in (old, new):
        assert (await plane.call(secret)).ok
    w.clock.now = T0 + HOUR
    for secret in (old, new):
        answer = await plane.call(secret)
        assert (answer.status, answer.description) == (401, "token expired")


# -- end the grace now -------------------------------------------------------------------


async def test_end_grace_refuses_the_old_secret_at_once_on_a_warm_process(
    w: World, plane: Plane
) -> None:
    token, old = await _token(w)
    _, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    await plane.barrier()
    for secret in (old, new):
        assert (await plane.call(secret)).ok
        assert plane.cached(secret)
    ended = await w.tokens.end_grace(w.alice, token.id)
    assert ended.previous is None
    await until(lambda: not plane.cached(old), "the invalidation of the old secret")
    await _rotated(plane, old)
    assert (await plane.call(new)).ok
    assert await _indexed(w, token.id) == {w.fmt.digest(new)}
    stone = await _tombstone(w, old)
    assert stone is not None
    assert (stone.token_id, stone.reason) == (token.id, "rotated")
    stored = await w.store.get_token(token.id)
    assert stored is not None
    assert stored.previous is None
    assert stored.to_json(w.clock())["previous_secret"] is None


async def test_end_grace_is_idempotent(w: World, namespace: str) -> None:
    token, _ = await _token(w)
    # A token never regenerated: nothing to end, nothing written.
    before = await snapshot(_redis(w), namespace)
    assert (await w.tokens.end_grace(w.alice, token.id)) == token
    assert await snapshot(_redis(w), namespace) == before

    await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    first = await w.tokens.end_grace(w.alice, token.id)
    before = await snapshot(_redis(w), namespace)
    second = await w.tokens.end_grace(w.alice, token.id)
    assert second == first
    assert second.previous is None
    assert await snapshot(_redis(w), namespace) == before
    kinds = [e["type"] for e in await _events(w, token.id)]
    assert kinds.count("token.grace_ended") == 1


# -- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grace",
    [
        DEFAULT_MAX_GRACE + 1,
        -1,
        -0.5,
        "1h",
        "3600",
        True,
        [60],
        {"s": 1},
        float("nan"),
        float("inf"),
    ],
)
async def test_a_grace_out_of_bounds_is_400_and_changes_nothing(
    w: World, namespace: str, grace: Any
) -> None:
    token, old = await _token(w)
    before = await snapshot(_redis(w), namespace)
    with pytest.raises(ValidationFailed, match="grace_period") as caught:
        await w.tokens.regenerate(w.alice, token.id, grace_period=grace)
    assert caught.value.status_code == 400
    assert await snapshot(_redis(w), namespace) == before
    assert await w.usable(old)


async def test_the_orgs_max_grace_bounds_the_grace(w: World, namespace: str) -> None:
    token, _ = await _token(w)
    ok, _ = await w.tokens.regenerate(w.alice, token.id, grace_period=DEFAULT_MAX_GRACE)
    assert ok.previous is not None
    assert ok.previous.until == T0 + DEFAULT_MAX_GRACE
    org = await w.directory.put_org(w.system, "acme", {"max_grace_period": HOUR})
    assert org.max_grace_period == HOUR
    before = await snapshot(_redis(w), namespace)
    with pytest.raises(ValidationFailed, match="max_grace_period"):
        await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR + 1)
    assert await snapshot(_redis(w), namespace) == before
    at_max, _ = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    assert at_max.previous is not None
    assert at_max.previous.until == T0 + HOUR


async def test_an_org_max_of_zero_forbids_any_grace(w: World, namespace: str) -> None:
    token, old = await _token(w)
    await w.directory.put_org(w.system, "acme", {"max_grace_period": 0})
    assert (await w.store.get_org("acme")) is not None
    before = await snapshot(_redis(w), namespace)
    for grace in (1, 0.001):
        with pytest.raises(ValidationFailed, match="grace_period"):
            await w.tokens.regenerate(w.alice, token.id, grace_period=grace)
    assert await snapshot(_redis(w), namespace) == before
    assert await w.usable(old)
    # 0 (or none given) is a plain regeneration: the old secret stops at once.
    new, secret = await w.tokens.regenerate(w.alice, token.id, grace_period=0)
    assert new.previous is None
    assert await w.reason(old) == "unknown"
    assert await w.usable(secret)


@pytest.mark.parametrize("bad", [-1, 90 * 86_400 + 1, "1h", True, float("nan")])
async def test_the_orgs_max_grace_itself_is_bounded(w: World, bad: Any) -> None:
    before = await w.store.get_org("acme")
    with pytest.raises(ValidationFailed, match="max_grace_period"):
        await w.directory.put_org(w.system, "acme", {"max_grace_period": bad})
    assert await w.store.get_org("acme") == before


@pytest.mark.parametrize("state", ["revoked", "expired"])
async def test_no_grace_for_a_dead_token(w: World, namespace: str, state: str) -> None:
    token, _ = await _token(w, expiration="1d")
    if state == "revoked":
        await w.tokens.revoke(w.alice, token.id)
    else:
        w.clock.now = T0 + 2 * 86_400
    before = await snapshot(_redis(w), namespace)
    with pytest.raises(ValidationFailed, match=state) as caught:
        await w.tokens.regenerate(w.alice, token.id, grace_period=60)
    assert caught.value.status_code == 400
    assert await snapshot(_redis(w), namespace) == before
    # Without a grace the dead token is regenerated as before.
    new, secret = await w.tokens.regenerate(w.alice, token.id)
    assert new.previous is None
    assert new.status(w.clock()) == "active"
    assert await w.usable(secret)


# -- regenerating again; regenerating without a grace ------------------------------------


async def test_a_second_regeneration_replaces_the_previous_secret(w: World, plane: Plane) -> None:
    token, s1 = await _token(w)
    await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    assert (await plane.call(s1)).ok
    w.clock.now = T0 + 60
    second, s3 = await w.tokens.regenerate(w.alice, token.id, grace_period=2 * HOUR)
    s2_token = second.previous
    assert s2_token is not None
    assert s2_token.until == T0 + 60 + 2 * HOUR
    await until(lambda: not plane.cached(s1), "the invalidation of the first secret")
    await _rotated(plane, s1)
    stone = await _tombstone(w, s1)
    assert stone is not None
    assert stone.reason == "rotated"
    assert len(await _indexed(w, token.id)) == 2
    assert w.fmt.digest(s1) not in await _indexed(w, token.id)
    assert (await plane.call(s3)).ok
    # A third, without a grace: only the newest secret works, at once.
    third, s4 = await w.tokens.regenerate(w.alice, token.id)
    assert third.previous is None
    await until(lambda: not plane.cached(s3), "the invalidation of the third secret")
    for dead in (s1, s3):
        await _rotated(plane, dead)
    assert await _indexed(w, token.id) == {w.fmt.digest(s4)}
    assert (await plane.call(s4)).ok
    # s2 (the previous secret of the second regeneration) is rotated out too.
    assert await w.reason(s3) == "unknown"
    assert s2_token.digest not in await _indexed(w, token.id)
    raw = await _redis(w).get(w.store.keys_for("acme").tombstone(s2_token.digest))
    assert raw is not None
    assert Tombstone.decode(raw).reason == "rotated"


async def test_regenerate_without_grace_kills_the_old_secret_at_once(
    w: World, plane: Plane
) -> None:
    token, old = await _token(w)
    assert (await plane.call(old)).ok
    assert plane.cached(old)
    new_token, new = await w.tokens.regenerate(w.alice, token.id)
    assert new_token.previous is None
    await until(lambda: not plane.cached(old), "the invalidation of the old secret")
    await _rotated(plane, old)
    assert plane.decisions("rotated") == 1
    assert (await plane.call(new)).ok
    assert await _indexed(w, token.id) == {w.fmt.digest(new)}
    kinds = [(e["type"], e["data"]) for e in await _events(w, token.id)]
    assert kinds[-1][0] == "token.regenerated"
    assert "grace_period" not in kinds[-1][1]


# -- revoke and delete during the grace ---------------------------------------------------


async def test_revoking_during_the_grace_refuses_both_secrets(w: World, plane: Plane) -> None:
    token, old = await _token(w)
    _, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    await plane.barrier()
    for secret in (old, new):
        assert (await plane.call(secret)).ok
        assert plane.cached(secret)
    await w.tokens.revoke(w.alice, token.id)
    await until(
        lambda: not plane.cached(old) and not plane.cached(new), "both secrets' invalidations"
    )
    for secret in (old, new):
        answer = await plane.call(secret)
        assert (answer.status, answer.description) == (401, "token revoked")
        assert answer.challenge is not None
        assert REVOKED in answer.challenge
    assert plane.decisions("revoked") == 2
    # still revoked (not "rotated") once the grace would have ended
    w.clock.now = T0 + 2 * HOUR
    assert (await plane.call(old)).description == "token revoked"
    stored = await w.tokens.get(w.alice, token.id)
    assert stored.to_json(w.clock())["previous_secret"]["status"] == "rotated"


async def test_deleting_during_the_grace_refuses_both_secrets(w: World, plane: Plane) -> None:
    token, old = await _token(w)
    _, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    for secret in (old, new):
        assert (await plane.call(secret)).ok
    await plane.recorder.flush()
    last_used = w.store.keys_for("acme").last_used
    assert await _redis(w).hexists(last_used, token.id + PREVIOUS_SUFFIX)
    await w.tokens.delete(w.alice, token.id)
    await until(
        lambda: not plane.cached(old) and not plane.cached(new), "both secrets' invalidations"
    )
    for secret in (old, new):
        answer = await plane.call(secret)
        assert (answer.status, answer.error, answer.description) == (
            401,
            "invalid_token",
            "invalid or unknown token",
        )
        stone = await _tombstone(w, secret)
        assert stone is not None
        assert stone.reason == "deleted"
    assert plane.decisions("deleted") == 2
    assert await _indexed(w, token.id) == set()
    assert await w.store.get_token(token.id) is None
    for field in (token.id, token.id + PREVIOUS_SUFFIX):
        assert not await _redis(w).hexists(last_used, field)


# -- the audit trail -------------------------------------------------------------------------


async def test_every_step_writes_its_audit_event(w: World) -> None:
    token, _ = await _token(w)
    w.clock.now = T0 + 10
    regenerated, _ = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    w.clock.now = T0 + 20
    await w.tokens.end_grace(w.alice, token.id)
    await w.tokens.end_grace(w.alice, token.id)  # idempotent: no second event
    w.clock.now = T0 + 30
    plain, _ = await w.tokens.regenerate(w.alice, token.id)
    w.clock.now = T0 + 40
    await w.tokens.regenerate(w.alice, token.id, grace_period=60)
    await w.tokens.revoke(w.alice, token.id)
    await w.tokens.delete(w.alice, token.id)
    events = await _events(w, token.id)
    assert [e["type"] for e in events] == [
        "token.created",
        "token.regenerated",
        "token.grace_ended",
        "token.regenerated",
        "token.regenerated",
        "token.revoked",
        "token.deleted",
    ]
    graced = events[1]
    assert graced["at"] == T0 + 10
    assert graced["actor"]["id"] == "alice"
    assert graced["user_id"] == "alice"
    assert graced["data"]["grace_period"] == HOUR
    assert graced["data"]["previous_valid_until"] == T0 + 10 + HOUR
    assert graced["data"]["expires_at"] == regenerated.expires_at
    ended = events[2]
    assert ended["at"] == T0 + 20
    assert ended["data"]["prefix"] == token.prefix
    assert ended["data"]["was_valid_until"] == T0 + 10 + HOUR
    assert "reason" not in ended["data"]
    assert events[3]["data"] == {"expires_at": plain.expires_at}
    assert events[4]["data"]["grace_period"] == 60
    assert events[4]["data"]["previous_valid_until"] == T0 + 40 + 60


# -- each secret's own last use -----------------------------------------------------------


async def test_get_and_list_show_the_previous_secrets_own_last_use(w: World, plane: Plane) -> None:
    token, old = await _token(w)
    w.clock.now = T0 + 5
    assert (await plane.call(old, path="/threads/1", ip="192.0.2.1", user_agent="old/1")).ok
    await plane.recorder.flush()
    regenerated, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    # The uses so far were the old secret's: they move with it; the new one is unused.
    assert regenerated.last_used is None
    assert regenerated.previous_last_used is not None
    assert regenerated.previous_last_used.at == T0 + 5
    got = await w.tokens.get(w.alice, token.id)
    assert got.last_used is None
    view = got.to_json(w.clock())
    assert view["last_used"] is None
    assert view["previous_secret"]["last_used"] == {
        "at": T0 + 5,
        "method": "GET",
        "path": "/threads/1",
        "ip": "192.0.2.1",
        "user_agent": "old/1",
    }

    w.clock.now = T0 + 100
    assert (await plane.call(old, path="/threads/7", ip="192.0.2.7", user_agent="old/2")).ok
    w.clock.now = T0 + 200
    assert (await plane.call(new, path="/threads/9", ip="203.0.113.9", user_agent="new/1")).ok
    assert await plane.recorder.flush() == 2
    got = await w.tokens.get(w.alice, token.id)
    view = got.to_json(w.clock())
    assert view["last_used"] == {
        "at": T0 + 200,
        "method": "GET",
        "path": "/threads/9",
        "ip": "203.0.113.9",
        "user_agent": "new/1",
    }
    assert view["previous_secret"] == {
        "prefix": token.prefix,
        "valid_until": T0 + 5 + HOUR,
        "status": "active",
        "last_used": {
            "at": T0 + 100,
            "method": "GET",
            "path": "/threads/7",
            "ip": "192.0.2.7",
            "user_agent": "old/2",
        },
    }
    page = await w.tokens.list_own(w.alice, Filters())
    (listed,) = [t for t in page.items if t.id == token.id]
    assert listed.to_json(w.clock()) == view
    org_page = await w.tokens.list_org(w.admin, "acme", Filters())
    (admin_listed,) = [t for t in org_page.items if t.id == token.id]
    assert admin_listed.to_json(w.clock()) == view

    # Ending the grace drops the previous secret's entry; the new one's stays.
    await w.tokens.end_grace(w.alice, token.id)
    last_used = w.store.keys_for("acme").last_used
    assert not await _redis(w).hexists(last_used, token.id + PREVIOUS_SUFFIX)
    after = (await w.tokens.get(w.alice, token.id)).to_json(w.clock())
    assert after["previous_secret"] is None
    assert after["last_used"] == view["last_used"]


async def test_a_late_flush_of_an_ended_grace_never_shows_up_later(w: World, plane: Plane) -> None:
    token, s1 = await _token(w)
    await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    w.clock.now = T0 + 10
    assert (await plane.call(s1, user_agent="first/1")).ok  # pending, not yet flushed
    await w.tokens.end_grace(w.alice, token.id)
    # The flush lands after the grace ended (the token still exists, so it is written).
    assert await plane.recorder.flush() == 1
    last_used = w.store.keys_for("acme").last_used
    assert await _redis(w).hexists(last_used, token.id + PREVIOUS_SUFFIX)
    w.clock.now = T0 + 20
    # The second secret was never used: its own last use, once it is the previous
    # secret, is none — not the first secret's late one.
    regenerated, _ = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    assert regenerated.previous_last_used is None
    view = (await w.tokens.get(w.alice, token.id)).to_json(w.clock())
    assert view["previous_secret"]["last_used"] is None
    assert view["last_used"] is None


async def test_an_edit_during_the_grace_keeps_both_secrets_and_their_uses(
    w: World, plane: Plane
) -> None:
    token, old = await _token(w)
    _, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    w.clock.now = T0 + 10
    assert (await plane.call(old, user_agent="old/1")).ok
    assert (await plane.call(new, user_agent="new/1")).ok
    await plane.recorder.flush()
    edited = await w.tokens.update(w.alice, token.id, {"name": "renamed"})
    assert edited.previous is not None
    assert edited.previous.until == T0 + HOUR
    assert edited.last_used is not None
    assert edited.last_used.user_agent == "new/1"
    assert edited.previous_last_used is not None
    assert edited.previous_last_used.user_agent == "old/1"
    await until(
        lambda: not plane.cached(old) and not plane.cached(new), "both secrets' invalidations"
    )
    for secret in (old, new):
        answer = await plane.call(secret)
        assert answer.ok
        assert answer.resolved is not None
        assert answer.resolved.identity.token_name == "renamed"
    assert await _indexed(w, token.id) == {w.fmt.digest(old), w.fmt.digest(new)}
