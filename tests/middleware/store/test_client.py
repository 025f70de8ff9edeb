"""TokenStore against the real Valkey server: atomic COMMIT, LOOKUP, touch, paging."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import msgpack
import pytest
import redis.asyncio as aioredis

from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import Conflict, StoreUnavailable
from patgate.middleware.keys import Keyspace, partition_of_org
from patgate.middleware.records import LastUsed, Token, User
from patgate.middleware.store import StaleWrite, TokenStore
from patgate.middleware.store.plan import (
    org_message,
    parse_message,
    stamp,
    token_message,
    user_message,
)
from patgate.middleware.tokenformat import TokenFormat
from tests._topologies import ALL_BACKENDS
from tests.middleware._pubsub import ShardListener

FMT = TokenFormat()
#: the store tests run on standalone, Sentinel and Cluster (tests/conftest.py).
BACKENDS = ALL_BACKENDS
#: the partition of the test org, "acme": its tokens' ids and secrets' hints name it.
ACME = partition_of_org("acme")


def _id(n: int) -> str:
    """Token id ``n`` of acme (``tok_<3 hex partition><13 hex>``)."""
    return f"tok_{ACME:03x}{n:013d}"


def _token(n: int = 1, *, owner: str = "alice", kind: str = "user", name: str = "") -> Token:
    secret = FMT.generate(ACME)
    return Token(
        id=_id(n),
        name=name or f"t{n}",
        description="",
        owner_kind=kind,  # type: ignore[arg-type]
        owner_id=owner,
        org_id="acme",
        type="personal" if kind == "user" else "service",
        scopes=("threads:read",),
        workspaces=None,
        expires_at=None,
        created_at=1000.0 + n,
        created_by=owner,
        revoked_at=None,
        prefix=FMT.display_prefix(secret),
        digest=FMT.digest(secret),
    )


async def _put(store: TokenStore, token: Token) -> None:
    plan = store.plan("acme")
    plan.put_token(None, token)
    await store.commit(plan)


async def _put_user(store: TokenStore, user_id: str = "alice", **kw: object) -> User:
    user = User(user_id, "acme", f"{user_id}@example.com", user_id, **kw)  # type: ignore[arg-type]
    plan = store.plan("acme")
    plan.put_user(None, user)
    await store.commit(plan)
    return user


@pytest.mark.anyio
async def test_lookup_returns_token_and_owner_in_one_call(store: TokenStore) -> None:
    user = await _put_user(store)
    token = _token()
    await _put(store, token)
    found = await store.lookup(token.digest, ACME)
    assert found is not None
    assert Token.decode(found[0]) == token
    assert found[1] is not None
    assert User.decode(found[1]) == user
    assert await store.lookup(b"\x00" * 32, ACME) is None


@pytest.mark.anyio
@pytest.mark.parametrize("owner_kind", ["user", "org"])
async def test_lookup_reads_records_of_the_first_layout_and_old_index_values(
    store: TokenStore, owner_kind: str
) -> None:
    """LOOKUP reads the owner and the org out of the record (scripts.py): records of the
    first layout (kind as text) and index values of earlier versions ("<id> <org> <user>")
    still resolve, with their owner's user record."""
    user = await _put_user(store)
    token = _token(kind=owner_kind, owner="alice" if owner_kind == "user" else "acme")
    v1 = [
        token.id, token.name, token.description, token.owner_kind, token.owner_id,
        token.org_id, token.type, list(token.scopes), None, token.expires_at,
        token.created_at, token.created_by, token.revoked_at, token.prefix, token.digest,
        token.updated_at, token.issued_at,
    ]  # fmt: skip
    k = store.keys_for("acme")
    old_value = f"{token.id} acme alice" if owner_kind == "user" else f"{token.id} acme"
    await store.client.hset(k.tokens, token.id, msgpack.packb(v1, use_bin_type=True))
    await store.client.hset(k.index, token.digest, old_value)
    found = await store.lookup(token.digest, ACME)
    assert found is not None
    assert Token.decode(found[0]) == token
    if owner_kind == "user":
        assert found[1] is not None
        assert User.decode(found[1]) == user
    else:
        assert found[1] is None
    assert found[2] is None  # no org record written here


@pytest.mark.anyio
async def test_lookup_of_org_token_has_no_user(store: TokenStore) -> None:
    token = _token(kind="org", owner="acme")
    await _put(store, token)
    found = await store.lookup(token.digest, ACME)
    assert found is not None
    assert found[1] is None


@pytest.mark.anyio
async def test_lookup_of_user_token_whose_user_is_gone(store: TokenStore) -> None:
    token = _token()
    await _put(store, token)
    found = await store.lookup(token.digest, ACME)
    assert found is not None
    assert found[1] is None


@pytest.mark.anyio
async def test_stale_write_changes_nothing(store: TokenStore, redis_client: aioredis.Redis) -> None:
    token = _token()
    await _put(store, token)
    plan = store.plan("acme")
    plan.put_token(token.evolve(name="other"), token.evolve(name="renamed"))
    plan.audit("{}")
    with pytest.raises(StaleWrite):
        await store.commit(plan)
    assert await store.get_token(token.id) == token
    assert await redis_client.xlen(store.keys_for("acme").events) == 0
    assert not await redis_client.sismember(
        store.keys_for("acme").owner_names("u:acme/alice"), "renamed"
    )


@pytest.mark.anyio
async def test_name_uniqueness_is_case_insensitive_per_owner(store: TokenStore) -> None:
    await _put(store, _token(1, name="Deploy"))
    with pytest.raises(Conflict):
        await _put(store, _token(2, name="dEPLOY"))
    assert await store.get_token(_id(2)) is None
    await _put(store, _token(3, name="deploy", owner="bob"))
    assert await store.count(store.keys_for("acme").owner_tokens("u:acme/alice")) == 1


@pytest.mark.anyio
async def test_roster_reads_every_owners_tokens_with_the_version(store: TokenStore) -> None:
    await _put(store, _token(1))
    await _put(store, _token(2, owner="bob"))
    version, tokens = await store.roster("acme")
    assert version is None
    assert sorted(t.id for t in tokens) == [_id(1), _id(2)]
    assert await store.roster("other") == (None, [])


@pytest.mark.anyio
async def test_the_active_version_makes_the_second_of_two_counted_writes_stale(
    store: TokenStore,
) -> None:
    """Two writers that counted the same tokens: the first commits and bumps the
    version, the second is stale and writes nothing (gateway.lifecycle.limits)."""
    version, _ = await store.roster("acme")
    first, second = store.plan("acme"), store.plan("acme")
    for plan, n in ((first, 1), (second, 2)):
        plan.put_token(None, _token(n))
        plan.hold_active_count("acme", version)
    await store.commit(first)
    with pytest.raises(StaleWrite):
        await store.commit(second)
    assert await store.get_token(_id(2)) is None
    version, tokens = await store.roster("acme")
    assert version == b"1"
    assert [t.id for t in tokens] == [_id(1)]


@pytest.mark.anyio
async def test_commit_publishes_and_appends_events(
    store: TokenStore, redis_client: aioredis.Redis
) -> None:
    pubsub = ShardListener(redis_client)
    await pubsub.ssubscribe(store.keys_for("acme").channel)
    try:
        assert (await pubsub.get(seconds=1.0) or {}).get("type") == "ssubscribe"
        plan = store.plan("acme")
        plan.put_token(None, _token())
        plan.invalidate_token(b"\xab\xcd")
        plan.audit(json.dumps({"type": "token.created", "n": 1}))
        plan.audit(json.dumps({"type": "token.updated", "n": 2}))
        await store.commit(plan, durable=True)
        message = None
        with anyio.fail_after(2):
            while message is None:
                message = await pubsub.get(ignore_subscribe_messages=True, seconds=1.0)
        assert message["type"] == "smessage"  # COMMIT publishes with SPUBLISH
        # as written by the plan (b"t abcd"), stamped by COMMIT with its position and time
        stamped = parse_message(message["data"])
        assert stamped.position == 1
        assert stamped.committed_us is not None
        assert (
            message["data"] == stamp(token_message(b"\xab\xcd"), 1, stamped.committed_us).encode()
        )
    finally:
        await pubsub.aclose()
    events = await store.events("acme")
    assert [json.loads(b)["n"] for _, b in events] == [2, 1]
    older = await store.events("acme", before=events[0][0])
    assert [json.loads(b)["n"] for _, b in older] == [1]


async def _messages(pubsub: ShardListener, n: int) -> list[bytes]:
    out: list[bytes] = []
    with anyio.fail_after(2):
        while len(out) < n:
            m = await pubsub.get(ignore_subscribe_messages=True, seconds=1.0)
            if m is not None:
                assert m["type"] == "smessage"
                out.append(m["data"])
    return out


@pytest.mark.anyio
async def test_commit_stamps_server_time_and_increasing_positions(
    store: TokenStore, redis_client: aioredis.Redis
) -> None:
    """Issue 11: every message carries the commit's server time (µs) and a position that
    counts the partition's invalidations; a commit without messages does not count."""
    pubsub = ShardListener(redis_client)
    await pubsub.ssubscribe(store.keys_for("acme").channel)
    digest = bytes(range(32))
    written = [token_message(digest), user_message("acme/alice"), org_message("acme")]
    try:
        assert (await pubsub.get(seconds=1.0) or {}).get("type") == "ssubscribe"
        before = time.time()
        plan = store.plan("acme")
        plan.invalidate_token(digest)
        plan.invalidate_user("acme/alice")
        plan.invalidate_org("acme")
        await store.commit(plan)
        quiet = store.plan("acme")
        quiet.put_token(None, _token())  # no invalidation: the position stays
        await store.commit(quiet)
        again = store.plan("acme")
        again.invalidate_token(digest)
        await store.commit(again)
        after = time.time()
        data = await _messages(pubsub, 4)
    finally:
        await pubsub.aclose()
    parsed = [parse_message(d) for d in data]
    assert [m.kind for m in parsed] == ["token", "owner", "flush", "token"]
    assert [m.position for m in parsed] == [1, 2, 3, 4]
    assert await redis_client.get(store.keys_for("acme").position) == b"4"
    times = [m.committed_us or 0 for m in parsed]
    first_us, last_us = times[0], times[-1]
    # the server runs on this host: its clock agrees with ours to well within a second
    assert before - 1 < first_us / 1e6 <= last_us / 1e6 < after + 1
    assert times[0] == times[1] == times[2]  # one commit, one time
    assert data[:3] == [stamp(m, n, first_us).encode() for n, m in enumerate(written, 1)]


@pytest.mark.anyio
async def test_delete_token_removes_every_trace(
    store: TokenStore, redis_client: aioredis.Redis
) -> None:
    token = _token()
    await _put(store, token)
    assert await store.touch([(ACME, token.id, LastUsed(5.0, "GET", "/", None, None))]) == 1
    plan = store.plan("acme")
    plan.delete_token(token)
    await store.commit(plan)
    assert await store.lookup(token.digest, ACME) is None
    k = store.keys_for("acme")
    for key in (k.tokens, k.index, k.last_used):
        assert await redis_client.hlen(key) == 0, key
    assert await redis_client.scard(k.owner_names("u:acme/alice")) == 0
    assert await redis_client.zcard(k.owner_tokens("u:acme/alice")) == 0
    assert await redis_client.scard(k.org_owners("acme")) == 0


@pytest.mark.anyio
async def test_touch_skips_deleted_tokens(store: TokenStore, redis_client: aioredis.Redis) -> None:
    token = _token()
    await _put(store, token)
    used = LastUsed(7.0, "POST", "/x", "127.0.0.1", "ua")
    assert await store.touch([(ACME, token.id, used), (ACME, "tok_gone", used)]) == 1
    assert await store.touch([]) == 0
    got = await store.get_token(token.id)
    assert got is not None
    assert got.last_used == used
    assert not await redis_client.hexists(store.keys_for("acme").last_used, "tok_gone")


@pytest.mark.anyio
async def test_get_tokens_keeps_order_and_skips_missing(store: TokenStore) -> None:
    for n in (1, 2, 3):
        await _put(store, _token(n))
    got = await store.get_tokens("acme", [_id(3), _id(9999), _id(1)])
    assert [t.id for t in got] == [_id(3), _id(1)]
    assert await store.get_tokens("acme", []) == []


@pytest.mark.anyio
async def test_token_page_with_many_ties_has_no_gaps_and_no_duplicates(
    store: TokenStore, redis_client: aioredis.Redis
) -> None:
    # 150 members on one millisecond (more than the page-over-fetch margin) plus some
    # older ones: paging 10 at a time must visit each exactly once, newest first.
    zkey = store.keys_for("acme").owner_tokens("u:ties")
    await redis_client.zadd(zkey, {f"tok_{i:04d}": 5000 for i in range(150)})
    await redis_client.zadd(zkey, {f"tok_old{i}": 4000 - i for i in range(7)})
    seen: list[str] = []
    before = None
    while True:
        rows = await store.token_page(zkey, before=before, count=10)
        if not rows:
            break
        seen += [i for i, _ in rows]
        before = (rows[-1][1], rows[-1][0])
    expected = [f"tok_{i:04d}" for i in reversed(range(150))] + [f"tok_old{i}" for i in range(7)]
    assert seen == expected


@pytest.mark.anyio
async def test_unreachable_store_raises_store_unavailable() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        store = TokenStore(client, Keyspace("x"))
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.lookup(b"\x00" * 32, ACME)
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_session_server_has_aof_so_durable_commits_work(
    store: TokenStore, redis_client: aioredis.Redis
) -> None:
    assert (await redis_client.config_get("appendonly"))["appendonly"] == "yes"
    plan = store.plan("acme")
    plan.put_token(None, _token())
    await store.commit(plan, durable=True)
    assert await store.ping()


@pytest.mark.anyio
async def test_durable_commit_on_a_server_without_aof_is_a_clear_error(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "noaof") as server:
        assert server.url is not None
        client = aioredis.from_url(server.url)
        try:
            await client.config_set("appendonly", "no")
            store = TokenStore(client, Keyspace("x"))
            plan = store.plan("acme")
            plan.put_token(None, _token())
            with pytest.raises(StoreUnavailable, match="PATGATE_DURABLE_WRITES"):
                await store.commit(plan, durable=True)
            # Refused before the write: no token exists whose secret nobody saw.
            assert await store.get_token(_token().id) is None
            assert await client.hlen(store.keys_for("acme").index) == 0
            lenient = TokenStore(client, Keyspace("y"), durable_writes=False)
            plan = lenient.plan("acme")
            plan.put_token(None, _token())
            await lenient.commit(plan, durable=True)
        finally:
            await client.aclose()
