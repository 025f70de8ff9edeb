"""Bulk data for the benchmarks, written the way the service layer writes it.

Tokens go in through :meth:`middleware.store.Plan.put_token` and ``store.commit`` — the
same Lua ``COMMIT`` the lifecycle service uses, so the keys, encodings and index entries
are exactly what production holds — in batches of ``batch`` tokens per commit, without
the audit event and without ``WAITAOF`` (a benchmark does not need each create on disk).
Tokens look like what ``TokenService.create`` makes: ``tok_`` + 16 hex id, a name unique
per owner, two scopes, the default 30-day expiry. With ``audit=True`` each token's commit
also appends the ``token.created`` event the service would write (:func:`created_event`),
so the partition streams hold what production's do.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.apps import SCOPE, naive_key
from patgate.gateway.lifecycle import Actor
from patgate.gateway.lifecycle.audit import event_json
from patgate.middleware.connect import StoreClient
from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

__all__ = [
    "ORG",
    "Owner",
    "Seeded",
    "created_event",
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
_ACTOR = Actor.system(user_agent="patgate-bench")


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


def created_event(token: Token, actor: Actor | None = None) -> str:
    """The ``token.created`` audit event ``TokenService.create`` writes for ``token``."""
    data = {"name": token.name, "scopes": list(token.scopes), "expires_at": token.expires_at}
    return event_json(
        "token.created", actor or _ACTOR, token.created_at, org_id=token.org_id,
        token_id=token.id, user_id=token.owner_id, data=data,
    )  # fmt: skip


async def seed_orgs(store: TokenStore, org_ids: Sequence[str]) -> None:
    now = time.time()
    plans = store.batch()
    for org in dict.fromkeys(org_ids):
        # Members may grant what the bench tokens carry (issue 9: nothing by default).
        plans.for_org(org).put_org(
            None,
            Org(org, org, token_limit=10_000, created_at=now, updated_at=now,
                member_scopes=_SCOPES),
        )  # fmt: skip
    await plans.commit()


async def seed_users(store: TokenStore, users: Sequence[Owner], *, batch: int = 1000) -> None:
    """The orgs and the users (enabled, allowed to hold tokens)."""
    await seed_orgs(store, [org for _, org in users])
    now = time.time()
    plans = store.batch()
    for start in range(0, len(users), batch):
        for uid, org in users[start : start + batch]:
            plans.for_org(org).put_user(
                None, User(uid, org, f"{uid}@example.test", f"User {uid}", created_at=now,
                           updated_at=now),
            )  # fmt: skip
        await plans.commit()


def _token(
    fmt: TokenFormat, owner: Owner, name: str, secret: str | None, now: float, partition: int
) -> Token:
    if secret is None:
        # Memory runs need the stored shape, not a usable secret: a random 32-byte digest
        # is what the index holds either way, and skips 30 secrets.choice() calls.
        digest = hashlib.sha256(os.urandom(16)).digest()
        prefix = fmt.prefix + "_" + secrets.token_hex(2)
    else:
        digest = fmt.digest(secret)
        prefix = fmt.display_prefix(secret)
    return Token(
        id=f"tok_{partition:03x}{secrets.token_hex(7)[:13]}", name=name, description="",
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
    audit: bool = False,
) -> Seeded:
    """``count`` tokens spread round-robin over ``users`` (already seeded), named
    ``<label>-<n>`` (names are unique per owner: use a new label for each call); with
    ``audit``, one ``token.created`` event per token in its partition's stream."""
    tokens: list[Token] = []
    kept: list[str] = []
    now = time.time()
    plans = store.batch()
    for start in range(0, count, batch):
        for n in range(start, min(count, start + batch)):
            owner = users[n % len(users)]
            partition = store.keys_for(owner[1]).partition
            secret = fmt.generate(partition) if keep_secrets else None
            token = _token(fmt, owner, f"{label}-{n:06d}", secret, now, partition)
            plan = plans.for_org(owner[1])
            plan.put_token(None, token)
            if audit:
                plan.audit(created_event(token))
            tokens.append(token)
            if secret is not None:
                kept.append(secret)
        await plans.commit()
    return Seeded(tokens, kept)


async def seed_naive(client: StoreClient, namespace: str, fmt: TokenFormat, seeded: Seeded) -> None:
    """The naive peer's copy of the same tokens: ``naive:<ns>:<sha256 hex>`` → JSON."""
    async with client.pipeline(transaction=False) as pipe:
        for token in seeded.tokens:
            record = {"id": token.id, "owner": token.owner_id, "scopes": list(token.scopes),
                      "expires_at": token.expires_at, "revoked": False}  # fmt: skip
            pipe.set(naive_key(namespace, token.digest.hex()), json.dumps(record))
        await pipe.execute()
