"""Pepper rotation (issue 12) on the real data plane: a token hashed with the previous
pepper is found in the same lookup call, re-indexed under the current pepper with one
compare-and-set commit in the background, and keeps working once the old pepper is
dropped; ``pepper_status`` counts what still depends on the old one.

Tokens are made by the real service layer (its records carry ``pepper_id``) over the
session's Valkey; the data planes are real Authenticators with caches and subscribers."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest

from patgate.gateway.lifecycle import TokenService
from patgate.gateway.pepper import pepper_status
from patgate.gateway.settings import Settings
from patgate.middleware.config import DataPlaneConfig
from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import ConfigError
from patgate.middleware.records import Token
from patgate.middleware.runtime import Runtime
from patgate.middleware.store import Found, TokenStore
from patgate.middleware.tokenformat import UNPEPPERED, TokenFormat
from tests.gateway._clock import T0
from tests.gateway.lifecycle._world import World, make_world

from ._plane import Plane, data_plane, until
from ._tokens import make_policy

pytestmark = pytest.mark.anyio

OLD = b"pepper-one"
NEW = b"pepper-two"
THIRD = b"pepper-three"
HOUR = 3600.0
A = TokenFormat(pepper=OLD)
B = TokenFormat(pepper=NEW, previous_pepper=OLD)


@dataclass
class Rotation:
    w: World
    redis: StoreClient
    planes: Callable[[TokenFormat], AbstractAsyncContextManager[Plane]]
    stack: contextlib.AsyncExitStack

    def service(self, fmt: TokenFormat) -> TokenService:
        return TokenService(self.w.store, fmt, clock=self.w.clock)

    async def plane(self, fmt: TokenFormat) -> Plane:
        return await self.stack.enter_async_context(self.planes(fmt))

    async def create(self, fmt: TokenFormat, name: str = "ci") -> tuple[Token, str]:
        return await self.service(fmt).create(self.w.alice, name=name, scopes=["threads:read"])

    async def record(self, token_id: str) -> Token:
        token = await self.w.store.get_token(token_id)
        assert token is not None
        return token

    async def indexed(self, token_id: str) -> set[bytes]:
        r: Any = self.redis
        index = await r.hgetall(self.w.store.keys_for("acme").index)
        return {d for d, v in index.items() if v.decode() == token_id}

    async def evalsha(self) -> int:
        r: Any = self.redis
        stats = await r.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    async def status(self, fmt: TokenFormat) -> dict[str, Any]:
        return (await pepper_status(self.w.store, fmt, now=self.w.clock())).to_json()


@pytest.fixture
async def rot(
    store: TokenStore, redis_client: StoreClient, store_url: str
) -> AsyncIterator[Rotation]:
    w = await make_world(store)

    def planes(fmt: TokenFormat) -> AbstractAsyncContextManager[Plane]:
        return data_plane(store, fmt, w.clock, store_url)

    async with contextlib.AsyncExitStack() as stack:
        yield Rotation(w, redis_client, planes, stack)


def _hmac(pepper: bytes, secret: str) -> bytes:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).digest()


# -- found under the previous pepper, re-indexed under the current one -----------------


async def test_a_token_of_the_old_pepper_works_and_is_reindexed_atomically(
    rot: Rotation,
) -> None:
    token, secret = await rot.create(A)
    assert token.pepper_id == A.pepper_id is not None
    assert token.digest == _hmac(OLD, secret)
    plane = await rot.plane(B)

    answer = await plane.call(secret)
    assert answer.ok
    assert answer.resolved is not None
    assert answer.resolved.identity.token_id == token.id
    assert not plane.cached(secret)  # not cached until re-indexed
    await plane.settle()
    assert plane.reindexed() == 1
    # The index holds only the current pepper's digest; the record names it.
    assert await rot.indexed(token.id) == {_hmac(NEW, secret)}
    stored = await rot.record(token.id)
    assert stored.digest == B.digest(secret) == _hmac(NEW, secret)
    assert stored.pepper_id == B.pepper_id != A.pepper_id
    assert stored == token.evolve(digest=B.digest(secret), pepper_id=B.pepper_id)

    found = await rot.w.store.lookup(
        B.digest(secret), B.partition(secret), B.previous_digest(secret)
    )
    assert isinstance(found, Found)
    assert not found.previous_pepper
    lookups = plane.store.lookups
    assert (await plane.call(secret)).ok  # found under the current pepper: cached now
    assert plane.cached(secret)
    assert (await plane.call(secret)).ok
    assert plane.store.lookups == lookups + 1
    await plane.settle()
    assert plane.reindexed() == 1  # nothing more to move


async def test_lookups_during_a_rotation_cost_one_round_trip(rot: Rotation) -> None:
    old_token, old_secret = await rot.create(A, "old")
    new_token, new_secret = await rot.create(B, "new")
    unknown = B.generate(rot.w.store.keys_for("acme").partition)
    store = rot.w.store

    async def round_trips(secret: str) -> tuple[int, Any]:
        before = await rot.evalsha()
        found = await store.lookup(B.digest(secret), B.partition(secret), B.previous_digest(secret))
        return await rot.evalsha() - before, found

    await round_trips(unknown)  # the script is loaded once per server
    trips, found = await round_trips(old_secret)
    assert trips == 1
    assert isinstance(found, Found)
    assert found.previous_pepper
    assert Token.decode(found.record).id == old_token.id
    trips, found = await round_trips(new_secret)
    assert trips == 1
    assert isinstance(found, Found)
    assert not found.previous_pepper
    assert Token.decode(found.record).id == new_token.id
    trips, found = await round_trips(unknown)
    assert (trips, found) == (1, None)

    # Through the data plane: one lookup call each; the re-index is one commit more.
    plane = await rot.plane(B)
    for secret, ok in ((unknown, False), (new_secret, True)):
        lookups, before = plane.store.lookups, await rot.evalsha()
        assert (await plane.call(secret)).ok is ok
        assert plane.store.lookups == lookups + 1
        assert await rot.evalsha() - before == 1
    lookups, before = plane.store.lookups, await rot.evalsha()
    assert (await plane.call(old_secret)).ok
    await plane.auth.aclose()  # the re-index write in flight (settle() would add a commit)
    assert plane.store.lookups == lookups + 1
    assert await rot.evalsha() - before == 2  # LOOKUP, then the re-index COMMIT
    assert plane.reindexed() == 1
    # a well-formed secret no token has: one answer, cached as unknown
    assert (await plane.call(unknown)).description == "invalid or unknown token"


# -- revoking during the rotation ------------------------------------------------------------


async def test_revoking_before_the_reindex_refuses_the_token_everywhere(rot: Rotation) -> None:
    token, secret = await rot.create(A)
    rolling = await rot.plane(A)  # a process not yet switched to the new pepper
    assert (await rolling.call(secret)).ok
    assert rolling.cached(secret)
    await rot.service(B).revoke(rot.w.alice, token.id)
    switched = [await rot.plane(B), await rot.plane(B)]
    for plane in switched:
        answer = await plane.call(secret)
        assert (answer.status, answer.description) == (401, "token revoked")
    await until(lambda: not rolling.cached(secret), "the old process's invalidation")
    assert (await rolling.call(secret)).status == 401
    for plane in switched:
        await plane.settle()
        assert (await plane.call(secret)).description == "token revoked"
    stored = await rot.record(token.id)
    assert stored.revoked_at is not None


@pytest.mark.parametrize("revoker", ["current", "previous"])
async def test_revoking_after_the_reindex_refuses_the_token_everywhere(
    rot: Rotation, revoker: str
) -> None:
    token, secret = await rot.create(A)
    first, second = await rot.plane(B), await rot.plane(B)
    assert (await first.call(secret)).ok
    await first.settle()
    assert first.reindexed() == 1
    await second.barrier()
    for plane in (first, second):
        assert (await plane.call(secret)).ok
        assert plane.cached(secret)
    # Either config's management process revokes by id; the invalidation names the
    # digest the record holds now (the current pepper's).
    await rot.service(B if revoker == "current" else A).revoke(rot.w.alice, token.id)
    await until(
        lambda: not first.cached(secret) and not second.cached(secret), "both invalidations"
    )
    for plane in (first, second):
        answer = await plane.call(secret)
        assert (answer.status, answer.description) == (401, "token revoked")


async def test_a_reindex_racing_a_revoke_never_undoes_it(rot: Rotation) -> None:
    token, secret = await rot.create(A)
    plane = await rot.plane(B)
    # The data plane read the record (before the revoke) ...
    found = await rot.w.store.lookup(
        B.digest(secret), B.partition(secret), B.previous_digest(secret)
    )
    assert isinstance(found, Found)
    assert found.previous_pepper
    read = Token.decode(found.record)
    await rot.service(B).revoke(rot.w.alice, token.id)
    # ... and its re-index commits after it: the compare-and-set refuses it.
    await plane.auth._reindex_one(read, A.digest(secret), B.digest(secret))
    assert plane.reindexed() == 0
    stored = await rot.record(token.id)
    assert stored.revoked_at is not None
    assert stored.digest == A.digest(secret)
    assert (await plane.call(secret)).description == "token revoked"


# -- dropping the previous pepper -----------------------------------------------------------


async def test_dropping_the_old_pepper(rot: Rotation) -> None:
    used, used_secret = await rot.create(A, "used")
    idle, idle_secret = await rot.create(A, "idle")
    during = await rot.plane(B)
    assert (await during.call(used_secret)).ok
    await during.settle()
    assert (await rot.status(B))["previous_pepper"] == 1
    after = await rot.plane(TokenFormat(pepper=NEW))  # PATGATE_PEPPER_PREVIOUS removed
    assert (await after.call(used_secret)).ok
    answer = await after.call(idle_secret)
    assert (answer.status, answer.error, answer.description) == (
        401,
        "invalid_token",
        "invalid or unknown token",
    )
    status = await rot.status(TokenFormat(pepper=NEW))
    assert status == {
        "tokens": 2,
        "current_pepper": 1,
        "previous_pepper": 0,
        "other_pepper": 1,
        "rotating": False,
        "previous_pepper_can_be_dropped": False,
    }
    assert (await rot.record(idle.id)).pepper_id == A.pepper_id
    assert (await rot.record(used.id)).pepper_id == B.pepper_id


async def test_rotating_from_no_pepper(rot: Rotation) -> None:
    token, secret = await rot.create(TokenFormat())
    assert token.pepper_id is None
    assert token.digest == hashlib.sha256(secret.encode()).digest()
    settings = Settings.from_env(
        {"PATGATE_PEPPER": "pepper-two", "PATGATE_PEPPER_PREVIOUS": "none"}
    )
    assert settings.previous_pepper == UNPEPPERED
    fmt = TokenFormat(settings.token_prefix, settings.pepper, settings.previous_pepper)
    assert fmt.rotating
    assert fmt.previous_pepper_id is None
    assert fmt.previous_digest(secret) == token.digest
    status = await rot.status(fmt)
    assert (status["previous_pepper"], status["current_pepper"]) == (1, 0)
    plane = await rot.plane(fmt)
    assert (await plane.call(secret)).ok
    await plane.settle()
    assert plane.reindexed() == 1
    stored = await rot.record(token.id)
    assert stored.digest == _hmac(NEW, secret)
    assert stored.pepper_id == fmt.pepper_id is not None
    assert await rot.indexed(token.id) == {_hmac(NEW, secret)}
    assert (await rot.status(fmt))["previous_pepper_can_be_dropped"] is True
    assert (await (await rot.plane(TokenFormat(pepper=NEW))).call(secret)).ok


async def test_a_grace_periods_previous_secret_under_the_old_pepper_is_reindexed_too(
    rot: Rotation,
) -> None:
    token, old = await rot.create(A)
    regenerated, new = await rot.service(A).regenerate(rot.w.alice, token.id, grace_period=HOUR)
    assert regenerated.previous is not None
    assert regenerated.previous.pepper_id == A.pepper_id
    assert (await rot.status(B))["previous_pepper"] == 1
    plane = await rot.plane(B)

    assert (await plane.call(old)).ok  # the previous secret, by the previous pepper
    await plane.settle()
    stored = await rot.record(token.id)
    assert stored.previous is not None
    assert stored.previous.digest == _hmac(NEW, old)
    assert stored.previous.pepper_id == B.pepper_id
    assert (stored.previous.prefix, stored.previous.until) == (token.prefix, T0 + HOUR)
    assert stored.digest == _hmac(OLD, new)  # the current secret not presented yet
    assert (await rot.status(B))["previous_pepper"] == 1

    assert (await plane.call(new)).ok
    await plane.settle()
    assert plane.reindexed() == 2
    stored = await rot.record(token.id)
    assert stored.digest == _hmac(NEW, new)
    assert stored.pepper_id == B.pepper_id
    assert await rot.indexed(token.id) == {_hmac(NEW, old), _hmac(NEW, new)}
    status = await rot.status(B)
    assert (status["current_pepper"], status["previous_pepper"]) == (1, 0)
    assert status["previous_pepper_can_be_dropped"] is True

    # Without the old pepper both still work during the grace, and it still ends.
    after = await rot.plane(TokenFormat(pepper=NEW))
    assert (await after.call(old)).ok
    assert (await after.call(new)).ok
    rot.w.clock.now = T0 + HOUR
    answer = await after.call(old)
    assert (answer.status, answer.description) == (401, "token rotated")
    assert (await after.call(new)).ok


async def test_a_regeneration_during_the_rotation_keeps_the_old_pepper_for_the_old_secret(
    rot: Rotation,
) -> None:
    token, old = await rot.create(A)
    regenerated, new = await rot.service(B).regenerate(rot.w.alice, token.id, grace_period=HOUR)
    assert regenerated.pepper_id == B.pepper_id
    assert regenerated.previous is not None
    assert (regenerated.previous.digest, regenerated.previous.pepper_id) == (
        _hmac(OLD, old),
        A.pepper_id,
    )
    plane = await rot.plane(B)
    await plane.barrier()
    assert (await plane.call(new)).ok
    assert plane.cached(new)  # the current pepper's digest: cached at once
    assert (await plane.call(old)).ok
    await plane.settle()
    assert plane.reindexed() == 1
    stored = await rot.record(token.id)
    assert stored.previous is not None
    assert (stored.previous.digest, stored.previous.pepper_id) == (_hmac(NEW, old), B.pepper_id)
    assert await rot.indexed(token.id) == {_hmac(NEW, old), _hmac(NEW, new)}
    for secret in (old, new):
        assert (await plane.call(secret)).ok
    # a revoke names both (re-indexed) digests: both refused on this warm process
    assert plane.cached(old)
    assert plane.cached(new)
    await rot.service(B).revoke(rot.w.alice, token.id)
    await until(
        lambda: not plane.cached(old) and not plane.cached(new), "the revocation's invalidations"
    )
    for secret in (old, new):
        assert (await plane.call(secret)).description == "token revoked"


# -- patgate pepper status -------------------------------------------------------------------


async def test_pepper_status_counts_and_says_when_the_old_pepper_can_go(rot: Rotation) -> None:
    assert await rot.status(B) == {
        "tokens": 0,
        "current_pepper": 0,
        "previous_pepper": 0,
        "other_pepper": 0,
        "rotating": True,
        "previous_pepper_can_be_dropped": True,
    }
    made = [await rot.create(A, f"old{i}") for i in range(3)]
    await rot.create(B, "made-during")  # created during the rotation: the new pepper
    await rot.create(TokenFormat(pepper=THIRD), "stray")
    assert await rot.status(B) == {
        "tokens": 5,
        "current_pepper": 1,
        "previous_pepper": 3,
        "other_pepper": 1,
        "rotating": True,
        "previous_pepper_can_be_dropped": False,
    }
    plane = await rot.plane(B)
    assert (await plane.call(made[0][1])).ok
    await plane.settle()
    status = await rot.status(B)
    assert (status["current_pepper"], status["previous_pepper"]) == (2, 2)
    # regenerating under the new pepper moves a token too ...
    await rot.service(B).regenerate(rot.w.alice, made[1][0].id)
    status = await rot.status(B)
    assert (status["current_pepper"], status["previous_pepper"]) == (3, 1)
    # ... but with a grace its previous secret needs the old pepper until the grace ends
    await rot.service(B).regenerate(rot.w.alice, made[2][0].id, grace_period=HOUR)
    status = await rot.status(B)
    assert (status["current_pepper"], status["previous_pepper"]) == (3, 1)
    assert status["previous_pepper_can_be_dropped"] is False
    rot.w.clock.now = T0 + HOUR
    status = await rot.status(B)
    assert (status["current_pepper"], status["previous_pepper"]) == (4, 0)
    assert status["other_pepper"] == 1
    assert status["previous_pepper_can_be_dropped"] is True
    # Not rotating: nothing to drop, and the old pepper's tokens count as "other".
    plain = await rot.status(TokenFormat(pepper=NEW))
    assert plain["rotating"] is False
    assert plain["previous_pepper_can_be_dropped"] is False


# -- the format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pepper", "previous"),
    [(b"same", b"same"), (None, UNPEPPERED), (b"", UNPEPPERED)],
)
def test_the_previous_pepper_must_differ_from_the_current(
    pepper: bytes | None, previous: bytes
) -> None:
    with pytest.raises(ValueError, match="previous pepper"):
        TokenFormat(pepper=pepper, previous_pepper=previous)


def test_the_formats_pepper_ids_and_previous_digest() -> None:
    secret = B.generate()
    assert B.digest(secret) == _hmac(NEW, secret)
    assert B.previous_digest(secret) == _hmac(OLD, secret) == A.digest(secret)
    assert A.previous_digest(secret) is None
    assert not A.rotating
    assert B.rotating
    assert B.previous_pepper_id == A.pepper_id
    assert B.pepper_id == TokenFormat(pepper=NEW).pepper_id != A.pepper_id
    assert TokenFormat().pepper_id is None
    assert (
        TokenFormat(pepper=NEW, previous_pepper=UNPEPPERED).previous_digest(secret)
        == hashlib.sha256(secret.encode()).digest()
    )
    # the fingerprint is 16 bits
    assert B.pepper_id is not None
    assert 0 <= B.pepper_id < 2**16


# -- the runtime ---------------------------------------------------------------------------


async def test_a_runtime_configured_for_a_rotation_reindexes(
    rot: Rotation, settings: Settings
) -> None:
    token, secret = await rot.create(A)
    runtime = Runtime(settings.evolve(pepper=NEW, previous_pepper=OLD), policy=make_policy())
    assert runtime.token_format == B
    await runtime.start()
    try:
        headers = [(b"authorization", b"Bearer " + secret.encode())]
        resolved = await runtime.authenticator.authenticate(
            "GET", "/threads/1", headers, {"client": ("192.0.2.1", 1)}
        )
        assert resolved is not None
        assert resolved.identity.token_id == token.id
    finally:
        await runtime.aclose()  # lets the re-index write in flight finish
    stored = await rot.record(token.id)
    assert (stored.digest, stored.pepper_id) == (_hmac(NEW, secret), B.pepper_id)
    sample = runtime.metrics.registry.get_sample_value("patgate_pepper_reindexed_total")
    assert sample == 1


def test_a_runtime_refuses_a_previous_pepper_equal_to_the_current() -> None:
    with pytest.raises(ConfigError, match="previous pepper"):
        Runtime(DataPlaneConfig(redis_url="redis://127.0.0.1:1", pepper=b"x", previous_pepper=b"x"))
