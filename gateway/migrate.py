"""``patgate migrate``: move data from the layout before partitions into partitions.

Before issue 11 every key of a namespace sat under one hash tag, ``{<namespace>}``
(:attr:`~patgate.middleware.keys.Keyspace.legacy`). The partitioned layout puts each org's
keys in its partition (:mod:`patgate.middleware.keys`). This moves every org, user,
token, last-used entry and audit event into its org's partition, then renames each old
key to ``{<namespace>}:pre-partitions:<name>`` (a backup in the same slot; nothing is
deleted), after which ``Runtime.start`` no longer refuses to run.

Tokens keep their ids and secrets. Two things about them are not where the new layout
expects, so the migration leaves forwards (docs/scale.md, "Moving old data"):

* the secret's partition hint (its first two body characters, also in the stored display
  prefix) was random: when it names another partition than the org's, that partition's
  index gets ``digest → "> <org's partition>"``, and a cache miss costs a second round
  trip for this token until it is regenerated;
* the id's head (``tok_<3 hex>``) was random too: when it names another partition, that
  partition's ``fwd`` hash maps the id to the org's, so the local operator can still
  address the token by id alone.

Idempotent: a record already in its partition is left alone, events already copied
(by stream id) are skipped; a run interrupted half-way is finished by running it again.
Stop the old gateways first: processes of the old version read only the old layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from patgate.middleware.keys import Keys, partition_of_id
from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import PlanBatch, TokenStore, redis_errors_wrapped
from patgate.middleware.tokenformat import partition_of_hint

__all__ = ["BACKUP", "Migration", "migrate"]

#: where the old keys go once moved: ``{<namespace>}:pre-partitions:<old name>``.
BACKUP = "pre-partitions:"
_BATCH = 500


@dataclass
class Migration:
    """What a run found and did (``dry_run``: what it would do)."""

    orgs: int = 0
    users: int = 0
    tokens: int = 0
    last_used: int = 0
    events: int = 0
    #: tokens whose secret hint or id names another partition than their org's.
    forwards: int = 0
    #: records that were already in their partition (a second run).
    already: int = 0
    backed_up: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "orgs": self.orgs,
            "users": self.users,
            "tokens": self.tokens,
            "last_used": self.last_used,
            "events": self.events,
            "forwards": self.forwards,
            "already_migrated": self.already,
            "backed_up_keys": len(self.backed_up),
        }


async def _hscan(store: TokenStore, key: str) -> list[tuple[bytes, bytes]]:
    r: Any = store.client
    out: list[tuple[bytes, bytes]] = []
    with redis_errors_wrapped():
        async for item in r.hscan_iter(key, count=1000):
            out.append(item)
    return out


async def migrate(store: TokenStore, *, dry_run: bool = False) -> Migration:
    """Move the namespace's old-layout data into partitions (see the module docstring)."""
    old = store.keyspace.legacy
    done = Migration(dry_run=dry_run)
    plans = store.batch()

    for _, blob in await _hscan(store, old.orgs):
        org = Org.decode(blob)
        if await store.get_org(org.id) is not None:
            done.already += 1
            continue
        done.orgs += 1
        if not dry_run:
            plans.for_org(org.id).put_org(None, org)
    if not dry_run:
        await plans.commit()

    users = [User.decode(blob) for _, blob in await _hscan(store, old.users)]
    for start in range(0, len(users), _BATCH):
        for user in users[start : start + _BATCH]:
            if await store.get_user(user.org_id, user.id) is not None:
                done.already += 1
                continue
            done.users += 1
            if not dry_run:
                plans.for_org(user.org_id).put_user(None, user)
        if not dry_run:
            await plans.commit()

    await _tokens(store, old, done, plans)
    await _events(store, old, done)
    if not dry_run:
        await _back_up(store, old, done)
    return done


async def _tokens(store: TokenStore, old: Keys, done: Migration, plans: PlanBatch) -> None:
    r: Any = store.client
    rows = await _hscan(store, old.tokens)
    for start in range(0, len(rows), _BATCH):
        chunk = [Token.decode(blob) for _, blob in rows[start : start + _BATCH]]
        with redis_errors_wrapped():
            used = await r.hmget(old.last_used, [t.id for t in chunk]) if chunk else []
        forwards: list[tuple[str, str, str, str]] = []
        last_used: list[tuple[str, str, bytes]] = []
        for token, lu in zip(chunk, used, strict=True):
            home = store.keys_for(token.org_id)
            if await store.get_token(token.id, token.org_id) is not None:
                done.already += 1
                continue
            done.tokens += 1
            if not done.dry_run:
                # No limit: the token already counted against it in the old layout.
                plans.for_org(token.org_id).put_token(None, token)
            if lu is not None:
                done.last_used += 1
                last_used.append((home.last_used, token.id, lu))
            moved = False
            hint = token.prefix.partition("_")[2][:2]
            if len(hint) == 2 and hint.isascii() and hint.isalnum():
                at = partition_of_hint(hint)
                if at != home.partition:
                    at_keys = store.keyspace.partition(at)
                    forwards.append((at_keys.index, "digest", str(home.partition), token.id))
                    moved = True
            at_id = partition_of_id(token.id)
            if at_id is not None and at_id != home.partition:
                at_keys = store.keyspace.partition(at_id)
                forwards.append((at_keys.forwards, "id", str(home.partition), token.id))
                moved = True
            done.forwards += moved
        if done.dry_run:
            continue
        await plans.commit()
        by_id = {t.id: t for t in chunk}
        with redis_errors_wrapped():
            for key, kind, to, token_id in forwards:
                fld: bytes | str = by_id[token_id].digest if kind == "digest" else token_id
                value = "> " + to if kind == "digest" else to
                await r.hset(key, fld, value)
            for key, token_id, blob in last_used:
                await r.hset(key, token_id, blob)


async def _events(store: TokenStore, old: Keys, done: Migration) -> None:
    """Copy the audit stream into the orgs' partition streams, keeping each event's id
    (so cursors and order survive); ids a partition's stream already has are skipped."""
    r: Any = store.client
    last: dict[str, bytes] = {}
    start = "-"
    while True:
        with redis_errors_wrapped():
            rows = await r.xrange(old.events, start, "+", count=1000)
        if not rows:
            return
        for stream_id, fields in rows:
            org = json.loads(fields[b"e"]).get("org_id")
            if not isinstance(org, str):
                continue
            key = store.keys_for(org).events
            if key not in last:
                with redis_errors_wrapped():
                    top = await r.xrevrange(key, "+", "-", count=1)
                last[key] = top[0][0] if top else b"0-0"
            if _stream_id(stream_id) <= _stream_id(last[key]):
                continue
            done.events += 1
            if not done.dry_run:
                with redis_errors_wrapped():
                    await r.xadd(key, {"e": fields[b"e"]}, id=stream_id)
            last[key] = stream_id
        start = "(" + rows[-1][0].decode()


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.decode().partition("-")
    return int(ms), int(seq or 0)


async def _back_up(store: TokenStore, old: Keys, done: Migration) -> None:
    """Rename every old key to its backup name (same hash tag: one slot, so RENAME is
    legal on a Cluster too). Already-renamed keys do not match the pattern."""
    r: Any = store.client
    backup = old.base + BACKUP
    with redis_errors_wrapped():
        # The tag holds no glob characters (settings check the namespace).
        names = [k async for k in r.scan_iter(match=old.base + "*", count=1000)]
        for name in names:
            text = name.decode()
            if text.startswith(backup):
                continue
            await r.rename(name, backup + text[len(old.base) :])
            done.backed_up.append(text)
