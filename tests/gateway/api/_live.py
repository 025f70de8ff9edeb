"""The management API as ``patgate serve --role api`` runs it, on a real loopback port.

The app comes from :func:`gateway.server.build_listeners` (the admin listener: the API
plus ``/metrics``, ``/healthz``, ``/authz``) over a :class:`gateway.runtime.Runtime` on
the session's real Valkey, served by uvicorn on 127.0.0.1. Org ``acme`` has the
bootstrapped admin ``admin`` and a member ``alice`` with a ``tokens:*:own`` token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService, bootstrap
from patgate.gateway.server import build_listeners
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from patgate.middleware.store import TokenStore
from patgate.policies.scopes import MANAGEMENT_SCOPES
from tests.middleware._servers import serve

OWN = ["tokens:read:own", "tokens:write:own"]


#: the stand-in secret a fuzzer sends; :class:`RenewingAdmin` swaps in a live admin's.
FUZZ_SECRET = "fuzz-admin"
_MAX_RENEWALS = 5000


class RenewingAdmin:
    """Test instrumentation for a fuzzer that authenticates as an admin.

    A fuzzer acting as an admin will, sooner or later, regenerate, revoke or strip the
    very token it authenticates with (it learns ids from responses), or demote or remove
    its user, and every request after that would be a 401. Requests carrying exactly
    ``Bearer fuzz-admin`` get the current admin secret instead; when one of them is
    refused (401/403) and that secret no longer lists the org's tokens, a fresh admin
    user and token are minted for the next request. Other requests pass untouched."""

    def __init__(self, app: ASGIApp, tokens: TokenService, directory: Directory) -> None:
        self.app = app
        self.tokens = tokens
        self.directory = directory
        self.secret = ""
        self.renewals = 0

    async def renew(self) -> None:
        assert self.renewals < _MAX_RENEWALS, "the fuzzer keeps locking itself out"
        self.renewals += 1
        user_id = f"fuzz-admin-{self.renewals}"
        system = Actor.system()
        await self.directory.put_user(
            system, user_id, {"org_id": "acme", "email": f"{user_id}@acme.io", "role": "admin"}
        )
        _, self.secret = await self.tokens.create(
            system,
            name="fuzz",
            owner=Owner("user", user_id, org_id="acme"),
            scopes=list(MANAGEMENT_SCOPES),
        )

    async def _still_admin(self) -> bool:
        status = 0

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        probe: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/admin/tokens",
            "raw_path": b"/v1/admin/tokens",
            "query_string": b"limit=1",
            "root_path": "",
            "headers": [(b"authorization", b"Bearer " + self.secret.encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await self.app(probe, receive, send)
        return status == 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stand_in = (b"authorization", b"Bearer " + FUZZ_SECRET.encode())
        if scope["type"] != "http" or stand_in not in scope["headers"]:
            await self.app(scope, receive, send)
            return
        headers = [
            (b"authorization", b"Bearer " + self.secret.encode()) if h == stand_in else h
            for h in scope["headers"]
        ]
        refused = False

        async def watch(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                refused = True
            await send(message)

        await self.app({**scope, "headers": headers}, receive, watch)
        if refused and not await self._still_admin():
            await self.renew()


@dataclass
class LiveApi:
    port: int
    store: TokenStore
    secrets: dict[str, str]
    ids: dict[str, str]
    fuzz: RenewingAdmin

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def live_api(settings: Settings) -> AsyncIterator[LiveApi]:
    runtime = Runtime(settings.evolve(lastused_interval=60))
    ((app, _),) = build_listeners(settings, "api", runtime)
    try:
        tokens = TokenService(runtime.store, runtime.token_format)
        directory = Directory(runtime.store)
        system = Actor.system()
        admin, admin_secret = await bootstrap(tokens, directory, org_id="acme")
        await directory.put_user(
            system, "alice", {"org_id": "acme", "email": "alice@acme.io", "name": "Alice"}
        )
        alice, alice_secret = await tokens.create(
            system, name="mgmt-alice", owner=Owner("user", "alice", org_id="acme"), scopes=OWN
        )
    except BaseException:
        await runtime.aclose()  # the server's lifespan never ran to close it
        raise
    fuzz = RenewingAdmin(app, tokens, directory)
    fuzz.secret = admin_secret
    async with serve(fuzz) as port:
        yield LiveApi(
            port,
            runtime.store,
            {"admin": admin_secret, "alice": alice_secret},
            {"admin": admin.id, "alice": alice.id},
            fuzz,
        )


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class RawConnection:
    """One keep-alive HTTP/1.1 connection, written and read byte by byte (no client
    library that might reconnect behind the test's back)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def request(
        self, method: str, target: str, *, secret: str | None = None, body: bytes = b""
    ) -> RawResponse:
        head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        if secret is not None:
            head.append(f"Authorization: Bearer {secret}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()
        return await asyncio.wait_for(self._read(method), 10)

    async def _read(self, method: str) -> RawResponse:
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ", 2)[1])
        assert "transfer-encoding" not in headers, headers  # the API always sends a length
        length = 0 if method == "HEAD" or status == 204 else int(headers["content-length"])
        body = await self._reader.readexactly(length)
        return RawResponse(status, headers, body)
