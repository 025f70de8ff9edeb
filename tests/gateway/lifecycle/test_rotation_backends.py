"""Issue 12's store paths on every backend (standalone, Sentinel, Cluster): a grace
period's two index entries, the tombstone a rotated-out secret leaves, and a pepper
rotation's second digest — all read by the one LOOKUP script call, whose keys must
share the partition's slot — plus the data plane's re-index commit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from patgate.gateway.lifecycle import TokenService
from patgate.middleware.records import Token, Tombstone
from patgate.middleware.store import Buried, Found
from patgate.middleware.tokenformat import TokenFormat
from tests._topologies import ALL_BACKENDS
from tests.gateway._clock import T0
from tests.gateway.lifecycle._world import World
from tests.middleware._plane import Plane, data_plane, until

pytestmark = pytest.mark.anyio
BACKENDS = ALL_BACKENDS

HOUR = 3600.0
A = TokenFormat(pepper=b"pepper-one")
B = TokenFormat(pepper=b"pepper-two", previous_pepper=b"pepper-one")


@pytest.fixture
async def plane_b(w: World, store_url: str) -> AsyncIterator[Plane]:
    async with data_plane(w.store, B, w.clock, store_url) as p:
        yield p


async def test_grace_and_tombstone_lookups(w: World) -> None:
    token, old = await w.tokens.create(w.alice, name="ci", scopes=["threads:read"])
    regenerated, new = await w.tokens.regenerate(w.alice, token.id, grace_period=HOUR)
    for secret in (old, new):
        found = await w.store.lookup(w.fmt.digest(secret), w.fmt.partition(secret))
        assert isinstance(found, Found)
        assert Token.decode(found.record) == regenerated
        assert await w.reason(secret) is None
    await w.tokens.end_grace(w.alice, token.id)
    buried = await w.store.lookup(w.fmt.digest(old), w.fmt.partition(old))
    assert isinstance(buried, Buried)
    assert not buried.previous_pepper
    stone = Tombstone.decode(buried.tombstone)
    assert (stone.token_id, stone.reason, stone.at) == (token.id, "rotated", T0)
    assert await w.reason(new) is None


async def test_previous_pepper_lookups(w: World) -> None:
    service = TokenService(w.store, A, clock=w.clock)
    token, secret = await service.create(w.alice, name="ci", scopes=["threads:read"])
    found = await w.store.lookup(B.digest(secret), B.partition(secret), B.previous_digest(secret))
    assert isinstance(found, Found)
    assert found.previous_pepper
    assert Token.decode(found.record) == token
    # Without the previous digest the token is not found at all.
    assert await w.store.lookup(B.digest(secret), B.partition(secret)) is None
    # A secret rotated out under the old pepper: its tombstone, found by the old digest.
    _, fresh = await service.regenerate(w.alice, token.id)
    buried = await w.store.lookup(B.digest(secret), B.partition(secret), B.previous_digest(secret))
    assert isinstance(buried, Buried)
    assert buried.previous_pepper
    assert Tombstone.decode(buried.tombstone).reason == "rotated"
    assert isinstance(
        await w.store.lookup(B.digest(fresh), B.partition(fresh), B.previous_digest(fresh)),
        Found,
    )


async def test_the_data_plane_reindexes_on_every_backend(w: World, plane_b: Plane) -> None:
    service = TokenService(w.store, A, clock=w.clock)
    token, secret = await service.create(w.alice, name="ci", scopes=["threads:read"])
    assert (await plane_b.call(secret)).ok
    await plane_b.settle()
    assert plane_b.reindexed() == 1
    stored = await w.store.get_token(token.id)
    assert stored is not None
    assert stored.digest == B.digest(secret)
    assert stored.pepper_id == B.pepper_id
    assert await w.store.lookup(A.digest(secret), A.partition(secret)) is None
    assert (await plane_b.call(secret)).ok
    assert plane_b.cached(secret)
    await TokenService(w.store, B, clock=w.clock).revoke(w.alice, token.id)
    await until(lambda: not plane_b.cached(secret), "the revocation's invalidation")
    assert (await plane_b.call(secret)).description == "token revoked"


async def test_a_rotated_out_secret_of_the_old_pepper_answers_rotated(
    w: World, plane_b: Plane
) -> None:
    service = TokenService(w.store, A, clock=w.clock)
    token, old = await service.create(w.alice, name="ci", scopes=["threads:read"])
    _, new = await service.regenerate(w.alice, token.id)
    answer = await plane_b.call(old)
    assert (answer.status, answer.description) == (401, "token rotated")
    assert plane_b.decisions("rotated") == 1
    assert (await plane_b.call(new)).ok
