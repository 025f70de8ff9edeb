"""Bulk data for the benchmarks, written the way the service layer writes it.

Tokens go in through :meth:`middleware.store.Plan.put_token` and ``store.commit`` — the
same Lua ``COMMIT`` the lifecycle service uses, so the keys, encodings and index entries
are exactly what production holds — in batches of ``batch`` tokens per commit, without
the audit event and without ``WAITAOF`` (a benchmark does not need each create on disk).
Tokens look like what ``TokenService.create`` makes: ``tok_`` + 16 hex id, a name unique
per owner, two scopes, the default 30-day expiry.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench.apps import SCOPE, naive_key
from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = [
    "ORG",
    "Owner",
    "Seeded",
    "owners",
    "seed_naive",
    "seed_orgs",
    "seed_tokens",
    "seed_users",
]

ORG = "bench"
#: (user id, org id)
Owner = tuple[str, str]
_LIFETIME = 30 * 86_400.0
_SCOPES = (SCOPE, "threads:read")


@dataclass(frozen=True, slots=True)
class Seeded:
    """Tokens written by :func:`seed_tokens`: their records and (if kept) their secrets."""

    tokens: list[Token]
    secrets: list[str]


def owners(users: int, orgs: int = 1) -> list[Owner]:
    """``users`` users spread round-robin over ``orgs`` organizations."""
    if orgs == 1:
        return [(f"u{n:05d}", ORG) for n in range(users)]
    return [(f"u{n:05d}", f"{ORG}{n % orgs:03d}") for n in range(users)]


async def seed_orgs(store: TokenStore, org_ids: Sequence[str]) -> None:
    now = time.time()
    plan = store.plan()
    for org in dict.fromkeys(org_ids):
        # Members may grant what the bench tokens carry (issue 9: nothing by default).
        plan.put_org(
            None,
            Org(org, org, token_limit=10_000, created_at=now, updated_at=now,
                member_scopes=_SCOPES),
        )  # fmt: skip
    await store.commit(plan)


async def seed_users(store: TokenStore, users: Sequence[Owner], *, batch: int = 1000) -> None:
    """The orgs and the users (enabled, allowed to hold tokens)."""
    await seed_orgs(store, [org for _, org in users])
    now = time.time()
    for start in range(0, len(users), batch):
        plan = store.plan()
        for uid, org in users[start : start + batch]:
            plan.put_user(
                None, User(uid, org, f"{uid}@example.test", f"User {uid}", created_at=now,
                           updated_at=now),
            )  # fmt: skip
        await store.commit(plan)


def _token(fmt: TokenFormat, owner: Owner, name: str, secret: str | None, now: float) -> Token:
    if secret is None:
        # Memory runs need the stored shape, not a usable secret: a random 32-byte digest
        # is what the index holds either way, and skips 30 secrets.choice() calls.
        digest = hashlib.sha256(os.urandom(16)).digest()
        prefix = fmt.prefix + "_" + secrets.token_hex(2)
    else:
        digest = fmt.digest(secret)
        prefix = fmt.display_prefix(secret)
    return Token(
        id="tok_" + secrets.token_hex(8), name=name, description="",
        owner_kind="user", owner_id=owner[0], org_id=owner[1], type="personal", scopes=_SCOPES,
        workspaces=None, expires_at=now + _LIFETIME, created_at=now, created_by=owner[0],
        revoked_at=None, prefix=prefix, digest=digest, updated_at=now, issued_at=now,
    )  # fmt: skip


async def seed_tokens(
    store: TokenStore,
    fmt: TokenFormat,
    count: int,
    users: Sequence[Owner],
    *,
    label: str = "token",
    keep_secrets: bool = True,
    batch: int = 1000,
) -> Seeded:
    """``count`` tokens spread round-robin over ``users`` (already seeded), named
    ``<label>-<n>`` (names are unique per owner: use a new label for each call)."""
    tokens: list[Token] = []
    kept: list[str] = []
    now = time.time()
    for start in range(0, count, batch):
        plan = store.plan()
        for n in range(start, min(count, start + batch)):
            secret = fmt.generate() if keep_secrets else None
            token = _token(fmt, users[n % len(users)], f"{label}-{n:06d}", secret, now)
            plan.put_token(None, token)
            tokens.append(token)
            if secret is not None:
                kept.append(secret)
        await store.commit(plan)
    return Seeded(tokens, kept)


async def seed_naive(
    client: aioredis.Redis, namespace: str, fmt: TokenFormat, seeded: Seeded
) -> None:
    """The naive peer's copy of the same tokens: ``naive:<ns>:<sha256 hex>`` → JSON."""
    async with client.pipeline(transaction=False) as pipe:
        for token in seeded.tokens:
            record = {"id": token.id, "owner": token.owner_id, "scopes": list(token.scopes),
                      "expires_at": token.expires_at, "revoked": False}  # fmt: skip
            pipe.set(naive_key(namespace, token.digest.hex()), json.dumps(record))
        await pipe.execute()
