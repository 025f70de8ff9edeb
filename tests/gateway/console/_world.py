"""The console's in-process test world (issue 15), shared by the console's unit tests.

Org ``acme`` with its bootstrap admin ``admin`` and members alice and bob, each with a
management token (``secrets``); the console mounted at ``/console`` over the session's
real Valkey, with the controllable clock of ``tests/gateway/_clock.py``; one httpx
client per browser (its cookie jar keeps that browser's session).

Host mode (``host=True``): the console asks a hook who is signed in; the hook reads the
``x-test-user: <org>/<user>`` header of each request.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from patgate.gateway.console import Console, ConsoleConfig, ConsoleUser
from patgate.gateway.lifecycle import Actor, Directory, Filters, Owner, TokenService, bootstrap
from patgate.gateway.notify.setup import Notifications
from patgate.middleware.auth import Authenticator
from patgate.middleware.records import Token
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests.gateway._clock import T0, Clock
from tests.middleware._tokens import MEMBER_SCOPES

__all__ = [
    "BASE",
    "OWN",
    "T0",
    "Browser",
    "ConsoleWorld",
    "hidden",
    "host_world_fixture",
    "make_console",
    "sign_in",
    "world_fixture",
]

BASE = "http://testserver"
OWN = ["tokens:read:own", "tokens:write:own"]
ORG = {
    "member_scopes": list(MEMBER_SCOPES),
    "resources": ["threads", "messages"],
    "roles": {"Developer": ["threads:read", "threads:list"]},
    "max_grace_period": 86_400,
    "token_limit": None,
}
_HIDDEN = re.compile(r'<input type="hidden" name="([\w-]+)" value="([^"]*)">')


def hidden(page: str, name: str) -> str:
    """The first hidden input ``name`` of a page (``csrf``, ``form_id``)."""
    for key, value in _HIDDEN.findall(page):
        if key == name:
            return html.unescape(value)
    raise AssertionError(f"no hidden {name!r} on the page")


@dataclass
class Browser:
    """One browser: a cookie jar, and what it last saw."""

    client: httpx.AsyncClient
    user: str | None = None  # host mode: the x-test-user header it sends

    def _headers(self, headers: Any) -> httpx.Headers:
        h = httpx.Headers(headers)
        if self.user is not None and "x-test-user" not in h:
            h["x-test-user"] = self.user
        return h

    async def get(self, path: str, *, headers: Any = None, **kw: Any) -> httpx.Response:
        return await self.client.get("/console" + path, headers=self._headers(headers), **kw)

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, headers: Any = None, **kw: Any
    ) -> httpx.Response:
        return await self.client.post(
            "/console" + path, data=data or {}, headers=self._headers(headers), **kw
        )

    async def csrf(self, path: str = "/tokens") -> str:
        r = await self.get(path)
        assert r.status_code == 200, r.text
        return hidden(r.text, "csrf")

    async def form(self, path: str) -> tuple[str, str]:
        """(csrf, form_id) of a page with a one-time form."""
        r = await self.get(path)
        assert r.status_code == 200, r.text
        return hidden(r.text, "csrf"), hidden(r.text, "form_id")

    async def act(self, path: str, data: dict[str, Any] | None = None) -> httpx.Response:
        """A POST with this session's CSRF token (read from the token list)."""
        return await self.post(path, {"csrf": await self.csrf(), **(data or {})})

    @property
    def cookie(self) -> str | None:
        return self.client.cookies.get("patgate_console")


@dataclass
class ConsoleWorld:
    console: Console
    app: Starlette
    store: TokenStore
    fmt: TokenFormat
    clock: Clock
    tokens: TokenService
    directory: Directory
    host: bool
    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    def browser(self, user: str | None = None) -> Browser:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE, follow_redirects=False
        )
        self._clients.append(client)
        return Browser(client, user)

    async def add_caller(
        self, name: str, user_id: str, scopes: list[str], *, org: str = "acme", **kw: Any
    ) -> str:
        token, secret = await self.tokens.create(
            Actor.system(), name=f"mgmt-{name}", owner=Owner("user", user_id, org), scopes=scopes,
            **kw,
        )  # fmt: skip
        self.secrets[name], self.ids[name] = secret, token.id
        return secret

    async def signed_in(self, who: str = "alice") -> Browser:
        """A browser signed in (standalone) with ``who``'s management token."""
        b = self.browser()
        r = await sign_in(b, self.secrets[who])
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/console/tokens"
        return b

    async def all_tokens(self) -> list[Token]:
        page = await self.tokens.list_org(
            Actor.system(), "acme", Filters.parse(status="all", limit=200)
        )
        return list(page.items)

    async def names(self) -> list[str]:
        return sorted(t.name for t in await self.all_tokens())

    async def token(self, token_id: str) -> Token:
        return await self.tokens.get(Actor.system(), token_id)

    async def event_count(self) -> int:
        return len(await self.store.events("acme", count=10_000))

    async def events(self) -> list[bytes]:
        return [blob for _, blob in await self.store.events("acme", count=10_000)]

    async def create(self, who: str, name: str, **kw: Any) -> Token:
        """A token of user ``who``'s (or the org's, ``who="org"``), made by the operator."""
        owner = Owner("org", "acme") if who == "org" else Owner("user", who, "acme")
        token, _ = await self.tokens.create(Actor.system(), name=name, owner=owner, **kw)
        return token


async def sign_in(b: Browser, secret: str, *, csrf: str | None = None) -> httpx.Response:
    r = await b.get("/login")
    assert r.status_code == 200, r.text
    token = hidden(r.text, "csrf") if csrf is None else csrf
    return await b.post("/login", {"csrf": token, "token": secret})


def _host_hook() -> Any:
    async def signed_in(request: Request) -> ConsoleUser | None:
        raw = request.headers.get("x-test-user")
        if not raw:
            return None
        org, _, user = raw.partition("/")
        return ConsoleUser(org, user)

    return signed_in


@contextlib.asynccontextmanager
async def make_console(
    store: TokenStore,
    *,
    host: bool = False,
    config: ConsoleConfig | None = None,
    notifications: Notifications | None = None,
) -> AsyncIterator[ConsoleWorld]:
    clock, fmt, system = Clock(), TokenFormat(), Actor.system()
    tokens = TokenService(store, fmt, clock=clock)
    directory = Directory(store, clock=clock, default_org="acme")
    admin_token, admin_secret = await bootstrap(tokens, directory, org_id="acme")
    await directory.put_org(system, "acme", ORG)
    for uid in ("alice", "bob"):
        await directory.put_user(
            system, uid, {"org_id": "acme", "email": f"{uid}@acme.io", "name": uid.title()}
        )
    console = Console(
        store,
        Authenticator.uncached(store, fmt, clock=clock),
        client_ip=lambda scope: "127.0.0.1",
        clock=clock,
        config=config,
        signed_in=_host_hook() if host else None,
        notifications=notifications,
    )
    app = Starlette(routes=[Mount("/console", console)])
    world = ConsoleWorld(console, app, store, fmt, clock, tokens, directory, host)
    world.secrets["admin"], world.ids["admin"] = admin_secret, admin_token.id
    await world.add_caller("alice", "alice", OWN)
    await world.add_caller("bob", "bob", OWN)
    try:
        yield world
    finally:
        for client in world._clients:
            await client.aclose()


@pytest.fixture(name="world")
async def world_fixture(store: TokenStore) -> AsyncIterator[ConsoleWorld]:
    """Standalone: sign in with a management token."""
    async with make_console(store) as w:
        yield w


@pytest.fixture(name="host_world")
async def host_world_fixture(store: TokenStore) -> AsyncIterator[ConsoleWorld]:
    """Host mode: the ``x-test-user`` header names the signed-in user."""
    async with make_console(store, host=True) as w:
        yield w
