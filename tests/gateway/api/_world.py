"""The management API's test world, shared by every test module of ``tests/gateway/api``
(and the lifecycle reveal test): org ``acme`` with its bootstrap admin and members alice
and bob, the API app in-process over the session's real Valkey, and a store snapshot for
"a refused request changes nothing"."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aioredis

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService, bootstrap
from patgate.middleware.records import Token
from patgate.middleware.store import Found, TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests.gateway._clock import T0, Clock
from tests.middleware._tokens import MEMBER_SCOPES

__all__ = ["DAY", "FEB_1", "OWN", "T0", "Api", "make_api", "snapshot"]

DAY = 86_400.0
FEB_1 = datetime(2027, 2, 1, tzinfo=UTC).timestamp()
OWN = ["tokens:read:own", "tokens:write:own"]


@dataclass
class Api:
    """An API client plus the service objects behind it, and one secret per caller."""

    client: httpx.AsyncClient
    store: TokenStore
    fmt: TokenFormat
    clock: Clock
    tokens: TokenService
    directory: Directory
    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, who: str | None = "admin", *, headers: Any = None, **kw: Any
    ) -> httpx.Response:
        h = httpx.Headers(headers)
        if who is not None:
            h["authorization"] = "Bearer " + self.secrets[who]
        return await self.client.request(method, path, headers=h, **kw)

    async def add_caller(
        self, name: str, user_id: str, scopes: list[str], *, org: str = "acme", **kw: Any
    ) -> str:
        """A management token for ``user_id`` of ``org``; its secret is kept as ``name``."""
        token, secret = await self.tokens.create(
            Actor.system(),
            name=f"mgmt-{name}",
            owner=Owner("user", user_id, org),
            scopes=scopes,
            **kw,
        )
        self.secrets[name], self.ids[name] = secret, token.id
        return secret

    async def resolves(self, secret: str) -> Token | None:
        found = await self.store.lookup(self.fmt.digest(secret), self.fmt.partition(secret))
        return Token.decode(found.record) if isinstance(found, Found) else None


@contextlib.asynccontextmanager
async def make_api(store: TokenStore) -> AsyncIterator[Api]:
    """Org ``acme`` with admin ``admin`` (bootstrap token) and members alice and bob."""
    clock, fmt, system = Clock(), TokenFormat(), Actor.system()
    tokens = TokenService(store, fmt, clock=clock)
    directory = Directory(store, clock=clock, default_org="acme")
    admin_token, admin_secret = await bootstrap(tokens, directory, org_id="acme")
    await directory.put_org(system, "acme", {"member_scopes": MEMBER_SCOPES})
    for uid in ("alice", "bob"):
        await directory.put_user(
            system, uid, {"org_id": "acme", "email": f"{uid}@acme.io", "name": uid.title()}
        )
    app = create_api_app(store, fmt, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as client:
        api = Api(client, store, fmt, clock, tokens, directory)
        api.secrets["admin"], api.ids["admin"] = admin_secret, admin_token.id
        await api.add_caller("alice", "alice", OWN)
        await api.add_caller("bob", "bob", OWN)
        yield api


async def snapshot(client: aioredis.Redis, namespace: str) -> dict[bytes, Any]:
    """Everything stored under the namespace, in a comparable form."""
    out: dict[bytes, Any] = {}
    # every partition's keys, ``{<namespace>:<p>}:…`` (and the legacy ``{<namespace>}:…``)
    async for key in client.scan_iter(match="{" + namespace + "[:}]*", count=1000):
        raw = await client.type(key)
        kind = raw.decode() if isinstance(raw, bytes) else raw
        if kind == "hash":
            out[key] = sorted((await client.hgetall(key)).items())
        elif kind == "set":
            out[key] = sorted(await client.smembers(key))
        elif kind == "zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = await client.xrange(key)
        elif kind == "string":
            out[key] = await client.get(key)
        else:  # pragma: no cover - the store uses no other types
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return out
