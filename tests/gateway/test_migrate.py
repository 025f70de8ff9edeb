"""``patgate migrate`` (issue 11): data written in the layout before partitions — every
key under ``{<namespace>}`` — moves into partitions and keeps working: the same secrets
validate (through a forward where their hint names another partition), the same ids
address the tokens, revoked stays revoked, last-used and the audit trail survive.

The old layout is written here exactly as the store wrote it before issue 11 (the
``Plan`` writes of commit b0400c4: ``tok``/``idx``/``lu``/``users``/``orgs`` hashes,
``own:``/``orgusr:`` zsets, ``nm:``/``orgown:`` sets, one ``events`` stream), on a real
standalone Valkey and on a real Cluster.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from patgate.gateway.cli import main
from patgate.gateway.lifecycle import Actor, Directory, EventQuery, TokenService, query_events
from patgate.gateway.settings import Settings
from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import ConfigError
from patgate.middleware.keys import PARTITIONS, Keyspace, partition_of_org
from patgate.middleware.records import LastUsed, Org, Token, User, owner_key
from patgate.middleware.runtime import Runtime
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests._topologies import ALL_BACKENDS
from tests.middleware._tokens import MEMBER_SCOPES

BACKENDS = [b for b in ALL_BACKENDS if getattr(b, "values", (b,))[0] != "sentinel"]

pytestmark = pytest.mark.anyio

ORG = "acme"


@dataclass
class Legacy:
    secrets: dict[str, str]  # token id -> secret
    tokens: dict[str, Token]
    event_ids: list[str]


def _index_value(token: Token) -> str:
    head = token.id + " " + token.org_id
    return head + " " + token.owner_id if token.owner_kind == "user" else head


async def _write_legacy(client: StoreClient, namespace: str, fmt: TokenFormat) -> Legacy:
    """Users, an org and three tokens in the old layout: hints and ids chosen to name
    partitions other than the org's, as random ones almost always did."""
    k = Keyspace(namespace).legacy
    r: Any = client
    now = time.time()
    org = Org(ORG, "Acme", member_scopes=MEMBER_SCOPES, created_at=now, updated_at=now)
    alice = User("alice", ORG, "alice@acme.io", "Alice", created_at=now, updated_at=now)
    home = partition_of_org(ORG)
    await r.hset(k.orgs, ORG, org.encode())
    await r.hset(k.users, alice.key, alice.encode())
    await r.zadd(k.org_users(ORG), {"alice": int(now * 1000)})
    out = Legacy({}, {}, [])
    for n, name in enumerate(["deploy", "ci", "old"]):
        elsewhere = (home + 1 + n * 37) % PARTITIONS
        secret = fmt.generate(elsewhere)
        token_id = "tok_" + format((home + 5 + n) % PARTITIONS, "03x") + secrets.token_hex(7)[:13]
        token = Token(
            id=token_id, name=name, description="", owner_kind="user", owner_id="alice",
            org_id=ORG, type="personal", scopes=("threads:read",), workspaces=None,
            expires_at=now + 86400, created_at=now + n, created_by="alice",
            revoked_at=now if name == "old" else None, prefix=fmt.display_prefix(secret),
            digest=fmt.digest(secret), updated_at=now, issued_at=now,
        )  # fmt: skip
        own = owner_key("user", "alice", ORG)
        await r.hset(k.tokens, token.id, token.encode())
        await r.hset(k.index, token.digest, _index_value(token))
        await r.zadd(k.owner_tokens(own), {token.id: int(token.created_at * 1000)})
        await r.sadd(k.base + "nm:" + own, name)
        await r.sadd(k.base + "orgown:" + ORG, own)
        event = {"type": "token.created", "org_id": ORG, "token_id": token.id, "at": now + n}
        stream_id = await r.xadd(k.events, {"e": json.dumps(event)})
        out.event_ids.append(stream_id.decode())
        out.secrets[token.id] = secret
        out.tokens[token.id] = token
    first = next(iter(out.tokens))
    used = LastUsed(now, "GET", "/threads/1", "127.0.0.1", "curl/8")
    await r.hset(k.last_used, first, used.encode())
    return out


async def _cli(url: str, namespace: str, *argv: str) -> int:
    """The real CLI (its own event loop: in a thread, beside the test's)."""
    return await asyncio.to_thread(main, ["--redis-url", url, "--namespace", namespace, *argv])


async def test_old_data_is_refused_then_migrated_and_keeps_working(
    store: TokenStore,
    store_url: str,
    namespace: str,
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fmt = TokenFormat()
    legacy = await _write_legacy(store.client, namespace, fmt)
    settings = Settings(redis_url=store_url, namespace=namespace, data_dir=tmp_path / "d")

    # 1. The new version refuses to run on the old layout, saying what to run.
    runtime = Runtime(settings)
    with pytest.raises(ConfigError, match="patgate migrate"):
        await runtime.start()
    await runtime.aclose()

    # 2. A dry run counts and changes nothing.
    capsys.readouterr()
    assert await _cli(store_url, namespace, "--json", "migrate", "--dry-run") == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["orgs"], dry["users"], dry["tokens"], dry["events"]) == (1, 1, 3, 3)
    assert dry["forwards"] == 3
    assert dry["last_used"] == 1
    assert await store.get_org(ORG) is None
    assert await store.legacy_data()

    # 3. The migration moves everything and keeps a backup of the old keys.
    assert await _cli(store_url, namespace, "--json", "migrate") == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["tokens"], done["forwards"], done["already_migrated"]) == (3, 3, 0)
    assert done["backed_up_keys"] >= 10
    assert not await store.legacy_data()

    # 4. Every old secret resolves, through its hint's partition's forward.
    for token_id, secret in legacy.secrets.items():
        assert fmt.partition(secret) != store.keys_for(ORG).partition
        found = await store.lookup(fmt.digest(secret), fmt.partition(secret))
        assert found is not None
        assert Token.decode(found[0]).id == token_id
        assert found[1] is not None
        assert User.decode(found[1]).id == "alice"
        assert found[2] is not None
        assert Org.decode(found[2]).id == ORG
    # ... and every old id addresses its token without an org (the local operator).
    for token_id in legacy.tokens:
        token = await store.get_token(token_id)
        assert token is not None
        assert token.org_id == ORG
    revoked = next(t for t in legacy.tokens.values() if t.name == "old")
    again = await store.get_token(revoked.id, ORG)
    assert again is not None
    assert again.revoked_at is not None
    first = next(iter(legacy.tokens))
    with_use = await store.get_token(first, ORG)
    assert with_use is not None
    assert with_use.last_used is not None
    assert with_use.last_used.path == "/threads/1"
    events, _ = await query_events(store, EventQuery(org_id=ORG, limit=10))
    assert sorted(e["id"] for e in events) == sorted(legacy.event_ids)

    # A forwarded token's cache miss costs two round trips (docs/scale.md), counted by
    # the server; on a Cluster the two may land on different primaries.
    if backend == "standalone":
        secret = next(iter(legacy.secrets.values()))
        await store.client.config_resetstat()
        assert await store.lookup(fmt.digest(secret), fmt.partition(secret)) is not None
        stats = await store.client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 2

    # 5. The runtime starts, and the data plane accepts the old secrets end to end.
    runtime = Runtime(settings)
    await runtime.start()
    try:
        active = [i for i, t in legacy.tokens.items() if t.revoked_at is None]
        for token_id in active:
            resolved = await runtime.authenticator.resolve(legacy.secrets[token_id], fresh=True)
            assert resolved.token.id == token_id
    finally:
        await runtime.aclose()

    # 6. A second run finds everything in place and changes nothing.
    assert await _cli(store_url, namespace, "--json", "migrate") == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["tokens"], second["events"], second["backed_up_keys"]) == (0, 0, 0)

    # 7. Regenerate gives a secret whose hint is home (one round trip); delete removes
    #    the forwards the old secret and id left behind.
    service = TokenService(store, fmt)
    system = Actor.system()
    regen_id = active[0]
    _, secret = await service.regenerate(system, regen_id)
    assert fmt.partition(secret) == store.keys_for(ORG).partition
    if backend == "standalone":
        await store.client.config_resetstat()
        assert await store.lookup(fmt.digest(secret), fmt.partition(secret)) is not None
        stats = await store.client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1  # home again: one round trip
    old_secret = legacy.secrets[regen_id]
    assert await store.lookup(fmt.digest(old_secret), fmt.partition(old_secret)) is None
    hint_index = store.keyspace.partition(fmt.partition(old_secret)).index
    assert not await store.client.hexists(hint_index, fmt.digest(old_secret))
    gone_id = active[1]
    gone_secret = legacy.secrets[gone_id]
    await service.delete(system, gone_id)
    hint_index = store.keyspace.partition(fmt.partition(gone_secret)).index
    assert not await store.client.hexists(hint_index, fmt.digest(gone_secret))
    assert await store.get_token(gone_id) is None
    # The directory still lists alice in her org (users moved with their zset entry).
    users = await Directory(store, default_org=ORG).list_users(system, ORG)
    assert [u.id for u in users] == ["alice"]
