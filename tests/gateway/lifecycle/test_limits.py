"""Token limits (issue 13): "Up to 10 API keys per organization", and per owner.

Only active tokens count; a full limit is 409 with a code naming it; the count holds
under concurrent creates and regenerations (gateway.lifecycle.limits)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from patgate.gateway.lifecycle import Owner
from patgate.middleware.errors import LimitReached, ValidationFailed
from patgate.middleware.store import TokenStore
from tests.gateway.lifecycle._world import World, admin, make_world

pytestmark = pytest.mark.anyio

ORG = Owner("org", "acme")


async def _limits(w: World, **body: object) -> None:
    await w.directory.put_org(w.system, "acme", dict(body))


async def _full(w: World, code: str = "org_token_limit", **create: object) -> LimitReached:
    with pytest.raises(LimitReached) as caught:
        await w.tokens.create(w.alice, name="one-too-many", **create)  # type: ignore[arg-type]
    assert caught.value.status_code == 409
    assert caught.value.code == code
    return caught.value


async def test_the_org_limit_defaults_to_ten_across_every_owner(w: World) -> None:
    org = await w.store.get_org("acme")
    assert org is not None
    assert org.token_limit == 10
    assert org.owner_token_limit is None
    for n in range(4):
        await w.tokens.create(w.alice, name=f"a{n}")
        await w.tokens.create(w.bob, name=f"b{n}")
    await w.tokens.create(w.admin, name="org-1", owner=ORG)
    await w.tokens.create(w.admin, name="org-2", owner=ORG)
    refused = await _full(w)
    assert refused.limit == 10
    assert "limit of 10 active tokens" in refused.detail
    # Another org is not affected.
    await w.tokens.create(admin("eve", "other"), name="e")


async def test_revoked_and_expired_tokens_never_count(w: World) -> None:
    await _limits(w, token_limit=3)
    first, _ = await w.tokens.create(w.alice, name="t1")
    await w.tokens.create(w.alice, name="t2", expiration="1d")
    await w.tokens.create(w.bob, name="t3")
    await _full(w)
    await w.tokens.revoke(w.alice, first.id)
    await w.tokens.create(w.alice, name="t4")  # the revoked token freed its place
    await _full(w)
    w.clock.now += 86_400 + 1  # t2 expires: its place is free, without any write
    await w.tokens.create(w.alice, name="t5")
    await _full(w)


async def test_regenerating_a_revoked_or_expired_token_counts_it_again(w: World) -> None:
    await _limits(w, token_limit=2)
    old, _ = await w.tokens.create(w.alice, name="old", expiration="1d")
    live, _ = await w.tokens.create(w.alice, name="live")
    await w.tokens.revoke(w.alice, live.id)
    await w.tokens.create(w.bob, name="bob")
    # Full (old and bob): bringing the revoked one back would make three.
    with pytest.raises(LimitReached) as caught:
        await w.tokens.regenerate(w.alice, live.id)
    assert caught.value.code == "org_token_limit"
    assert (await w.tokens.get(w.alice, live.id)).revoked_at is not None
    # Regenerating an active token keeps the count: always allowed.
    await w.tokens.regenerate(w.alice, old.id, expiration="1d")
    w.clock.now += 86_400 + 1  # "old" expires and frees a place
    regenerated, _ = await w.tokens.regenerate(w.alice, live.id)
    assert regenerated.status(w.clock.now) == "active"
    with pytest.raises(LimitReached):
        await w.tokens.regenerate(w.alice, old.id)  # expired, and the org is full again


async def test_the_owner_limit_counts_each_owner_alone(w: World) -> None:
    await _limits(w, token_limit=None, owner_token_limit=2)
    for n in range(2):
        await w.tokens.create(w.alice, name=f"a{n}")
        await w.tokens.create(w.admin, name=f"org{n}", owner=ORG)
    refused = await _full(w, "owner_token_limit")
    assert refused.limit == 2
    assert "for alice" in refused.detail
    with pytest.raises(LimitReached) as caught:
        await w.tokens.create(w.admin, name="org3", owner=ORG)
    assert caught.value.code == "owner_token_limit"
    assert "for the organization" in caught.value.detail
    await w.tokens.create(w.bob, name="b0")  # bob has his own two


async def test_both_limits_apply_and_either_may_be_off(w: World) -> None:
    await _limits(w, token_limit=3, owner_token_limit=2)
    await w.tokens.create(w.alice, name="a0")
    await w.tokens.create(w.alice, name="a1")
    await _full(w, "owner_token_limit")
    await w.tokens.create(w.bob, name="b0")
    with pytest.raises(LimitReached) as caught:
        await w.tokens.create(w.bob, name="b1")
    assert caught.value.code == "org_token_limit"
    await _limits(w, token_limit=None, owner_token_limit=None)
    for n in range(15):
        await w.tokens.create(w.alice, name=f"more{n}")
    org = await w.store.get_org("acme")
    assert org is not None
    assert org.token_limit is None
    assert org.owner_token_limit is None


@pytest.mark.parametrize(
    "body",
    [
        {"token_limit": 0},
        {"token_limit": 10_001},
        {"token_limit": "10"},
        {"token_limit": True},
        {"owner_token_limit": -1},
        {"owner_token_limit": 2.5},
    ],
)
async def test_limits_are_validated(w: World, body: dict[str, object]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await w.directory.put_org(w.system, "acme", body)
    assert next(iter(body)) in caught.value.detail
    org = await w.store.get_org("acme")
    assert org is not None
    assert org.token_limit == 10
    assert org.owner_token_limit is None


async def test_a_directory_default_applies_to_new_orgs(store: TokenStore) -> None:
    w = await make_world(store)
    w.directory.default_token_limit = None
    w.directory.default_owner_token_limit = 5
    org = await w.directory.put_org(w.system, "fresh", {"name": "Fresh"})
    assert (org.token_limit, org.owner_token_limit) == (None, 5)


async def test_fifty_concurrent_creates_by_three_owners_fill_exactly_ten(w: World) -> None:
    actors = [w.alice, w.bob, w.admin]
    results = await asyncio.gather(
        *(w.tokens.create(actors[i % 3], name=f"t{i}") for i in range(50)),
        return_exceptions=True,
    )
    outcomes = Counter("ok" if isinstance(r, tuple) else type(r).__name__ for r in results)
    assert outcomes == {"ok": 10, "LimitReached": 40}
    assert {r.code for r in results if isinstance(r, LimitReached)} == {"org_token_limit"}
    _, tokens = await w.store.roster("acme")
    assert len(tokens) == 10
    created = [e for e in await w.events() if e["type"] == "token.created"]
    assert len(created) == 10


async def test_concurrent_regenerations_and_creates_never_pass_the_limit(w: World) -> None:
    await _limits(w, token_limit=4)
    revoked = []
    for n in range(4):
        token, _ = await w.tokens.create(w.alice, name=f"r{n}")
        revoked.append((await w.tokens.revoke(w.alice, token.id)).id)
    results = await asyncio.gather(
        *(w.tokens.regenerate(w.alice, token_id) for token_id in revoked),
        *(w.tokens.create(w.bob, name=f"b{n}") for n in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(r, tuple | LimitReached) for r in results), results
    assert sum(isinstance(r, tuple) for r in results) == 4
    _, tokens = await w.store.roster("acme")
    assert sum(t.status(w.clock.now) == "active" for t in tokens) == 4
