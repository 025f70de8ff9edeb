"""Limits, uniqueness and read-modify-write under concurrency (atomic in Redis)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import pytest

from patgate.gateway.lifecycle import Actor, TokenService
from patgate.middleware.errors import Conflict, LimitReached, NotFound
from patgate.middleware.records import Token
from patgate.middleware.store import Buried, Found, TokenStore
from tests.gateway.lifecycle._world import make_world

OWN = frozenset({"tokens:read:own", "tokens:write:own"})
ALICE = Actor("user", "alice", "acme", "member", OWN)


@pytest.fixture
async def tokens(store: TokenStore) -> TokenService:
    return (await make_world(store)).tokens  # acme's default limit: 10 active tokens


def _outcomes(results: Sequence[object]) -> Counter[str]:
    return Counter("ok" if isinstance(r, tuple) else type(r).__name__ for r in results)


@pytest.mark.anyio
async def test_fifty_concurrent_creates_against_a_limit_of_ten(
    tokens: TokenService, store: TokenStore
) -> None:
    results = await asyncio.gather(
        *(tokens.create(ALICE, name=f"t{i}") for i in range(50)), return_exceptions=True
    )
    assert _outcomes(results) == {"ok": 10, "LimitReached": 40}
    assert all(r.status_code == 409 for r in results if isinstance(r, LimitReached))
    assert await store.count(store.keys_for("acme").owner_tokens("u:acme/alice")) == 10
    assert await store.client.hlen(store.keys_for("acme").tokens) == 10
    assert await store.client.hlen(store.keys_for("acme").index) == 10
    assert await store.client.scard(store.keys_for("acme").owner_names("u:acme/alice")) == 10
    created = sum(b'"token.created"' in b for _, b in await store.events("acme", count=1000))
    assert created == 10


@pytest.mark.anyio
async def test_twenty_concurrent_creates_with_one_name(
    tokens: TokenService, store: TokenStore
) -> None:
    names = ["Deploy" if i % 2 else "deploy" for i in range(20)]
    results = await asyncio.gather(
        *(tokens.create(ALICE, name=n) for n in names), return_exceptions=True
    )
    assert _outcomes(results) == {"ok": 1, "Conflict": 19}
    assert all(r.status_code == 409 for r in results if isinstance(r, Conflict))
    assert await store.count(store.keys_for("acme").owner_tokens("u:acme/alice")) == 1
    assert await store.client.hlen(store.keys_for("acme").index) == 1


@pytest.mark.anyio
async def test_concurrent_patch_and_revoke_are_both_applied(
    tokens: TokenService, store: TokenStore
) -> None:
    for _ in range(5):
        token, _ = await tokens.create(ALICE, name="t")
        updated, revoked = await asyncio.gather(
            tokens.update(ALICE, token.id, {"description": "edited", "scopes": ["x:read"]}),
            tokens.revoke(ALICE, token.id),
        )
        assert updated.description == "edited"
        assert revoked.revoked_at is not None
        final = await store.get_token(token.id)
        assert final is not None
        assert final.description == "edited"
        assert final.scopes == ("x:read",)
        assert final.revoked_at is not None
        await tokens.delete(ALICE, token.id)


@pytest.mark.anyio
async def test_concurrent_scope_adds_lose_nothing(tokens: TokenService, store: TokenStore) -> None:
    token, _ = await tokens.create(ALICE, name="t", scopes=[])
    await asyncio.gather(*(tokens.add_scopes(ALICE, token.id, [f"r{i}:read"]) for i in range(6)))
    final = await store.get_token(token.id)
    assert final is not None
    assert set(final.scopes) == {f"r{i}:read" for i in range(6)}
    changes = [b for _, b in await store.events("acme", count=1000) if b"token.scopes_changed" in b]
    assert len(changes) == 6


@pytest.mark.anyio
async def test_heavy_contention_fails_loudly_never_silently(
    tokens: TokenService, store: TokenStore
) -> None:
    # More writers than CAS retries: some may give up with 409 "conflict", but every
    # reported success is in the record and nothing else is.
    token, _ = await tokens.create(ALICE, name="t", scopes=[])
    results = await asyncio.gather(
        *(tokens.add_scopes(ALICE, token.id, [f"r{i}:read"]) for i in range(20)),
        return_exceptions=True,
    )
    ok = {f"r{i}:read" for i, r in enumerate(results) if not isinstance(r, BaseException)}
    failed = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, Conflict) and r.code == "conflict" for r in failed)
    assert len(ok) >= 8  # each CAS round has a winner
    final = await store.get_token(token.id)
    assert final is not None
    assert set(final.scopes) == ok
    changes = [b for _, b in await store.events("acme", count=1000) if b"token.scopes_changed" in b]
    assert len(changes) == len(ok)


@pytest.mark.anyio
async def test_concurrent_regenerates_leave_exactly_one_working_secret(
    tokens: TokenService, store: TokenStore
) -> None:
    token, first = await tokens.create(ALICE, name="t")
    results = await asyncio.gather(*(tokens.regenerate(ALICE, token.id) for _ in range(5)))
    fmt = tokens.format
    working = [
        s
        for _, s in results
        if isinstance(await store.lookup(fmt.digest(s), fmt.partition(s)), Found)
    ]
    assert len(working) == 1
    # The first secret is gone from the index; its tombstone remains (reuse tripwire).
    assert isinstance(await store.lookup(fmt.digest(first), fmt.partition(first)), Buried)
    assert await store.client.hlen(store.keys_for("acme").index) == 1
    final = await store.get_token(token.id)
    assert final is not None
    assert final.digest == fmt.digest(working[0])


@pytest.mark.anyio
async def test_delete_racing_an_update_leaves_no_orphans(
    tokens: TokenService, store: TokenStore
) -> None:
    token, secret = await tokens.create(ALICE, name="t")
    results = await asyncio.gather(
        tokens.update(ALICE, token.id, {"name": "renamed"}),
        tokens.delete(ALICE, token.id),
        return_exceptions=True,
    )
    assert results[1] is None
    assert isinstance(results[0], Token | NotFound)
    assert await store.get_token(token.id) is None
    gone = await store.lookup(tokens.format.digest(secret), tokens.format.partition(secret))
    assert isinstance(gone, Buried)
    for key in (store.keys_for("acme").tokens, store.keys_for("acme").index):
        assert await store.client.hlen(key) == 0, key
    assert await store.client.exists(store.keys_for("acme").owner_names("u:acme/alice")) == 0
    assert await store.client.exists(store.keys_for("acme").org_owners(token.org_id)) == 0
