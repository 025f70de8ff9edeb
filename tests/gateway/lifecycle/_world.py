"""The lifecycle tests' one world: orgs, users, the services over the session's real
Valkey, and the actors that call them. Modules that need other data (emails a search
matches, a higher token limit, a ticking clock) pass it to :func:`make_world`; the
``w`` fixture in ``conftest.py`` is the default world."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from patgate.gateway.lifecycle import Actor, Directory, TokenService
from patgate.middleware.errors import InvalidToken
from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import Found, TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.middleware.validate import usable_identity
from patgate.policies.scopes import MANAGEMENT_SCOPES
from tests.gateway._clock import Clock
from tests.middleware._tokens import MEMBER_SCOPES

__all__ = ["OWN", "USERS", "World", "admin", "make_world", "member"]

OWN = frozenset({"tokens:read:own", "tokens:write:own"})

#: (id, org, role, email, name)
USERS: tuple[tuple[str, str, str, str, str], ...] = (
    ("root", "acme", "admin", "root@acme.io", "Root"),
    ("alice", "acme", "member", "a@acme.io", "Alice"),
    ("bob", "acme", "member", "bob@acme.io", "Bob"),
    ("eve", "other", "admin", "e@other.io", "Eve"),
)
ORGS: Mapping[str, Mapping[str, Any]] = {
    "acme": {"name": "Acme", "member_scopes": MEMBER_SCOPES},
    "other": {"name": "Other", "member_scopes": MEMBER_SCOPES},
}


def member(uid: str, org: str = "acme", **kw: Any) -> Actor:
    """A member acting through a token with the self-service scopes."""
    return Actor("user", uid, org, "member", OWN, **kw)


def admin(uid: str, org: str = "acme", **kw: Any) -> Actor:
    """An admin acting through a token with every management scope."""
    return Actor("user", uid, org, "admin", frozenset(MANAGEMENT_SCOPES), **kw)


@dataclass
class World:
    store: TokenStore
    fmt: TokenFormat
    clock: Clock
    tokens: TokenService
    directory: Directory
    system: Actor
    admin: Actor
    alice: Actor
    bob: Actor
    orgs: tuple[str, ...] = tuple(ORGS)

    async def resolves(self, secret: str) -> Token | None:
        """What the data plane would find for ``secret`` (None: unknown)."""
        found = await self.store.lookup(self.fmt.digest(secret), self.fmt.partition(secret))
        return Token.decode(found.record) if isinstance(found, Found) else None

    async def reason(self, secret: str) -> str | None:
        """None if the secret authenticates, else the data plane's reason."""
        found = await self.store.lookup(self.fmt.digest(secret), self.fmt.partition(secret))
        if not isinstance(found, Found):
            return "unknown"
        user = None if found[1] is None else User.decode(found[1])
        org = None if found[2] is None else Org.decode(found[2])
        try:
            usable_identity(Token.decode(found[0]), user, self.clock(), org)
        except InvalidToken as exc:
            return exc.reason
        return None

    async def usable(self, secret: str) -> bool:
        assert await self.resolves(secret) is not None
        return await self.reason(secret) is None

    async def events(self) -> list[dict[str, Any]]:
        """Every audit event of the world's orgs, oldest first (each org's stream is its
        partition's; the partitions' events are merged on their times, then stream ids:
        the test clock gives many events the same ``at``)."""
        rows: list[tuple[float, tuple[int, ...], dict[str, Any]]] = []
        # one read per partition: two orgs of one partition share its stream
        for org in {self.store.keys_for(o).partition: o for o in self.orgs}.values():
            for stream_id, blob in await self.store.events(org, count=10_000):
                event = json.loads(blob)
                if event.get("org_id") in self.orgs:
                    rows.append((event["at"], tuple(map(int, stream_id.split("-"))), event))
        return [e for _, _, e in sorted(rows, key=lambda r: r[:2])]


async def make_world(
    store: TokenStore,
    *,
    users: Sequence[tuple[str, str, str, str, str]] = USERS,
    orgs: Mapping[str, Mapping[str, Any]] = ORGS,
    clock: Clock | None = None,
) -> World:
    clock = clock if clock is not None else Clock()
    fmt, system = TokenFormat(), Actor.system()
    directory = Directory(store, clock=clock, default_org="acme")
    for org_id, body in orgs.items():
        await directory.put_org(system, org_id, dict(body))
    for uid, org, role, email, name in users:
        await directory.put_user(
            system, uid, {"org_id": org, "email": email, "role": role, "name": name}
        )
    return World(
        store,
        fmt,
        clock,
        TokenService(store, fmt, clock=clock),
        directory,
        system,
        admin("root"),
        member("alice"),
        member("bob"),
        tuple(orgs),
    )
