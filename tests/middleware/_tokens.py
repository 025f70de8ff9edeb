"""Test helpers for the data plane: write users and tokens the way the service layer
does — a :class:`Plan` committed by the real store, publishing the same invalidation
messages — without depending on the service layer itself."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.policies.engine import Policy, parse_policy
from patgate.policies.scopes import ACTIONS

#: what members of the test org may grant: every action on every resource except the
#: admin action (issue 9: members never hold admin-only scopes).
MEMBER_SCOPES = (*sorted(f"*:{a}" for a in ACTIONS if a != "admin"), "threads:*")

#: routes used across the data-plane tests.
POLICY_TOML = """
version = 1
default = "deny"

[[rules]]
name = "health"
methods = ["GET"]
path = "/public"
public = true

[[rules]]
name = "threads-read"
methods = ["GET"]
path = "/threads/{id}"
scopes = ["threads:read"]

[[rules]]
name = "threads-write"
methods = ["POST"]
path = "/threads"
scopes = ["threads:create"]

[[rules]]
name = "me"
methods = ["GET"]
path = "/me"
"""


def make_policy() -> Policy:
    return parse_policy(POLICY_TOML, "test-policy.toml")


@dataclass(frozen=True)
class Issued:
    secret: str
    token: Token

    @property
    def digest(self) -> bytes:
        return self.token.digest

    @property
    def header(self) -> tuple[bytes, bytes]:
        return (b"authorization", b"Bearer " + self.secret.encode())


async def add_org(
    store: TokenStore, org: str = "o1", *, member_scopes: tuple[str, ...] = MEMBER_SCOPES
) -> Org:
    """The org record, unless it exists: its catalogue bounds what tokens may do."""
    existing = await store.get_org(org)
    if existing is not None:
        return existing
    now = time.time()
    record = Org(org, org, member_scopes=member_scopes, created_at=now, updated_at=now)
    plan = store.plan(org)
    plan.put_org(None, record)
    await store.commit(plan)
    return record


async def add_user(
    store: TokenStore, user_id: str = "u1", *, org: str = "o1", role: str = "member"
) -> User:
    await add_org(store, org)
    now = time.time()
    user = User(
        user_id,
        org,
        f"{user_id}@example.test",
        user_id,
        role=role,  # type: ignore[arg-type]
        created_at=now,
        updated_at=now,
    )
    plan = store.plan(org)
    plan.put_user(None, user)
    await store.commit(plan)
    return user


async def update_user(store: TokenStore, old: User, **changes: object) -> User:
    """Change a user and publish ``u <id>`` as the service layer does."""
    new = old.evolve(**changes, updated_at=time.time())
    plan = store.plan(new.org_id)
    plan.put_user(old, new)
    plan.invalidate_user(new.key)
    await store.commit(plan)
    return new


async def issue(
    store: TokenStore,
    fmt: TokenFormat,
    *,
    owner: str = "u1",
    owner_kind: str = "user",
    scopes: tuple[str, ...] = ("threads:read",),
    expires_at: float | None = None,
    name: str | None = None,
) -> Issued:
    partition = store.keys_for("o1").partition
    secret = fmt.generate(partition)
    now = time.time()
    token = Token(
        id=f"tok_{partition:03x}" + uuid.uuid4().hex[:13],
        name=name or "t-" + uuid.uuid4().hex[:8],
        description="",
        owner_kind=owner_kind,  # type: ignore[arg-type]
        owner_id=owner,
        org_id="o1",
        type="personal" if owner_kind == "user" else "service",
        scopes=scopes,
        workspaces=None,
        expires_at=expires_at,
        created_at=now,
        created_by=owner,
        revoked_at=None,
        prefix=fmt.display_prefix(secret),
        digest=fmt.digest(secret),
        updated_at=now,
    )
    await add_org(store, "o1")
    plan = store.plan(token.org_id)
    plan.put_token(None, token)
    await store.commit(plan)
    return Issued(secret, token)


async def change(store: TokenStore, issued: Issued, **changes: object) -> Issued:
    """Rewrite a token (revoke, scope change, ...) and publish ``t <digest>``."""
    new = issued.token.evolve(**changes, updated_at=time.time())
    plan = store.plan(new.org_id)
    plan.put_token(issued.token, new)
    plan.invalidate_token(issued.digest)
    await store.commit(plan)
    return Issued(issued.secret, new)


async def revoke(store: TokenStore, issued: Issued) -> Issued:
    return await change(store, issued, revoked_at=time.time())


async def delete(store: TokenStore, issued: Issued) -> None:
    plan = store.plan(issued.token.org_id)
    plan.delete_token(issued.token)
    plan.invalidate_token(issued.digest)
    await store.commit(plan)
