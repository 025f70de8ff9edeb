"""Per-token IP allowlists (issue 12) enforced on every path that accepts a token, end to
end: the gateway proxy, forward-auth (``/authz``), ``POST /v1/verify`` and the management
API — as ``patgate gateway`` builds them (``build_listeners``), on real loopback servers
over the session's Valkey — and the ASGI middleware in an application of its own.

Loopback clients are 127.0.0.1, so "inside" is an allowlist naming it and "outside" one
that does not; other addresses arrive as ``X-Forwarded-For`` through a trusted proxy, or
as the peer an in-process ASGI transport reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService, bootstrap
from patgate.gateway.server import build_listeners
from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve
from tests.middleware._tokens import MEMBER_SCOPES, make_policy

pytestmark = pytest.mark.anyio

#: the challenge of a request from outside the token's allowlist.
CHALLENGE = (
    'Bearer realm="patgate", error="insufficient_scope", '
    'error_description="the token may not be used from this address"'
)
BODY = {"error": "ip_not_allowed", "detail": "the token may not be used from this address"}
#: a network the loopback test client is not in, and an address in it / outside it.
OUTSIDE = "203.0.113.0/24"
INSIDE_XFF = "203.0.113.9"
ELSEWHERE = "198.51.100.7"


def assert_refused(response: httpx.Response) -> None:
    """The allowlist's refusal: 403, its challenge, its JSON body."""
    assert response.status_code == 403, response.text
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.headers["content-type"] == "application/json"
    assert response.json() == BODY


class _Upstream:
    """Records what reaches it; answers 200 with the identity headers it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            headers = {k.decode(): v.decode() for k, v in request.scope["headers"]}
            self.seen.append(headers)
            return JSONResponse({"token_id": headers.get("x-patgate-token-id")})

        return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@dataclass
class World:
    gw: httpx.AsyncClient
    admin: httpx.AsyncClient
    runtime: Runtime[Settings]
    upstream: _Upstream
    tokens: TokenService
    admin_secret: str
    names: list[str] = field(default_factory=list)

    async def mint(
        self,
        allowed_ips: list[str] | None,
        *,
        scopes: tuple[str, ...] = ("threads:read",),
        user: str = "alice",
    ) -> tuple[str, str]:
        """A token of ``user`` with this allowlist: (id, secret)."""
        token, secret = await self.tokens.create(
            Actor.system(),
            name=f"t{len(self.names)}",
            owner=Owner("user", user, "acme"),
            scopes=list(scopes),
            allowed_ips=allowed_ips,
        )
        self.names.append(token.name)
        return token.id, secret

    def denials(self, reason: str = "ip_not_allowed") -> float:
        value = self.runtime.metrics.registry.get_sample_value(
            "patgate_decisions_total", {"outcome": "deny", "reason": reason}
        )
        return value or 0.0

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_secret}"}


def bearer(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


def nginx(uri: str, method: str = "GET") -> dict[str, str]:
    """What nginx's auth_request sends about the original request."""
    return {"X-Original-Method": method, "X-Original-URI": uri}


@contextlib.asynccontextmanager
async def world(settings: Settings, **changes: Any) -> AsyncIterator[World]:
    """``patgate gateway``'s listeners (gateway; admin = /authz + management API) over
    one runtime, on loopback, with org acme: its bootstrap admin and member alice."""
    upstream = _Upstream()
    async with serve(upstream.app(), lifespan="off") as up_port:
        s = settings.evolve(
            upstream_url=f"http://127.0.0.1:{up_port}", lastused_interval=60, **changes
        )
        runtime = Runtime(s, policy=make_policy())
        (gateway_app, _), (admin_app, _) = build_listeners(s, "gateway", runtime)
        async with (
            serve(gateway_app) as gw_port,
            serve(admin_app) as admin_port,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{gw_port}", timeout=10, trust_env=False
            ) as gw,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{admin_port}", timeout=10, trust_env=False
            ) as admin,
        ):
            tokens = TokenService(runtime.store, runtime.token_format)
            directory = Directory(runtime.store, default_org="acme")
            _, admin_secret = await bootstrap(tokens, directory, org_id="acme")
            system = Actor.system()
            await directory.put_org(system, "acme", {"member_scopes": MEMBER_SCOPES})
            await directory.put_user(
                system, "alice", {"org_id": "acme", "email": "alice@acme.io", "name": "Alice"}
            )
            yield World(gw, admin, runtime, upstream, tokens, admin_secret)


async def eventually(
    request: Callable[[], Awaitable[httpx.Response]], status: int, within: float = 2.0
) -> tuple[httpx.Response, int]:
    """Repeat ``request`` until it answers ``status`` (or ``within`` s pass): the last
    response and how many requests it took."""
    deadline = time.monotonic() + within
    tries = 0
    while True:
        tries += 1
        response = await request()
        if response.status_code == status or time.monotonic() > deadline:
            return response, tries
        await asyncio.sleep(0.005)


# -- the gateway proxy -------------------------------------------------------------------


async def test_gateway_allows_inside_and_refuses_outside(settings: Settings) -> None:
    async with world(settings) as w:
        inside_id, inside = await w.mint(["127.0.0.1"])
        net_id, in_net = await w.mint(["127.0.0.0/8", "2001:db8::/32"])
        _, outside = await w.mint([OUTSIDE])
        _, v6_only = await w.mint(["::1"])  # loopback, but the client came over IPv4
        _, anywhere = await w.mint(None)

        for token_id, secret in ((inside_id, inside), (net_id, in_net)):
            response = await w.gw.get("/threads/1", headers=bearer(secret))
            assert response.status_code == 200, response.text
            assert response.json() == {"token_id": token_id}
        assert (await w.gw.get("/threads/1", headers=bearer(anywhere))).status_code == 200
        reached = len(w.upstream.seen)
        assert reached == 3

        before = w.denials()
        for secret in (outside, v6_only):
            assert_refused(await w.gw.get("/threads/1", headers=bearer(secret)))
        assert len(w.upstream.seen) == reached  # a refusal never reaches the upstream
        assert w.denials() == before + 2
        assert w.denials("insufficient_scope") == 0


async def test_gateway_checks_scope_before_the_allowlist(settings: Settings) -> None:
    # Status, then policy, then address: a token outside its allowlist that also lacks
    # the scope is told about the scope (no oracle for the allowlist either way).
    async with world(settings) as w:
        _, outside = await w.mint([OUTSIDE])
        response = await w.gw.post("/threads", headers=bearer(outside))
        assert response.status_code == 403
        assert response.json()["error"] == "insufficient_scope"
        assert w.denials() == 0
        # an unknown secret is 401 whatever the address
        response = await w.gw.get("/threads/1", headers=bearer(outside + "x"))
        assert response.status_code == 401


async def test_gateway_believes_x_forwarded_for_from_a_trusted_proxy(settings: Settings) -> None:
    # The default trusted proxies are 127.0.0.1 and ::1: the loopback client is one.
    async with world(settings) as w:
        _, secret = await w.mint([OUTSIDE])
        response = await w.gw.get(
            "/threads/1", headers=bearer(secret, **{"X-Forwarded-For": INSIDE_XFF})
        )
        assert response.status_code == 200, response.text
        before = w.denials()
        for xff in (
            ELSEWHERE,
            # read right to left: the first untrusted hop is the client; what is left of
            # it was written by that client
            f"{INSIDE_XFF}, {ELSEWHERE}",
        ):
            assert_refused(
                await w.gw.get("/threads/1", headers=bearer(secret, **{"X-Forwarded-For": xff}))
            )
        assert w.denials() == before + 2
        # a trusted hop on the right is skipped over to the client
        response = await w.gw.get(
            "/threads/1",
            headers=bearer(secret, **{"X-Forwarded-For": f"{INSIDE_XFF}, 127.0.0.1"}),
        )
        assert response.status_code == 200


async def test_gateway_ignores_x_forwarded_for_from_an_untrusted_peer(
    settings: Settings,
) -> None:
    # The loopback client is no trusted proxy here: its X-Forwarded-For is its own claim.
    async with world(settings, trusted_proxies=("10.9.9.9",)) as w:
        _, outside = await w.mint([OUTSIDE])
        _, inside = await w.mint(["127.0.0.1"])
        spoof = {"X-Forwarded-For": INSIDE_XFF}
        before = w.denials()
        assert_refused(await w.gw.get("/threads/1", headers=bearer(outside, **spoof)))
        assert_refused(await w.gw.get("/threads/1", headers=bearer(outside)))
        assert w.denials() == before + 2
        # ... and the real peer is what is matched, whatever the header claims
        response = await w.gw.get("/threads/1", headers=bearer(inside, **spoof))
        assert response.status_code == 200
        assert len(w.upstream.seen) == 1


# -- forward-auth ------------------------------------------------------------------------


async def test_forward_auth_enforces_the_allowlist(settings: Settings) -> None:
    async with world(settings) as w:
        inside_id, inside = await w.mint(["127.0.0.1"])
        outside_id, outside = await w.mint([OUTSIDE])

        response = await w.admin.get("/authz", headers=bearer(inside, **nginx("/threads/1")))
        assert response.status_code == 200, response.text
        assert response.headers["x-patgate-token-id"] == inside_id

        before = w.denials()
        response = await w.admin.get("/authz", headers=bearer(outside, **nginx("/threads/1")))
        assert_refused(response)
        assert not any(name.startswith("x-patgate-") for name in response.headers)
        # Envoy style (the original path under the prefix): the same refusal
        assert_refused(await w.admin.get("/authz/threads/1", headers=bearer(outside)))
        assert w.denials() == before + 2

        # nginx in front (a trusted proxy) names the client in X-Forwarded-For
        response = await w.admin.get(
            "/authz",
            headers=bearer(outside, **nginx("/threads/1"), **{"X-Forwarded-For": INSIDE_XFF}),
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-patgate-token-id"] == outside_id
        response = await w.admin.get(
            "/authz",
            headers=bearer(outside, **nginx("/threads/1"), **{"X-Forwarded-For": ELSEWHERE}),
        )
        assert_refused(response)
        assert w.denials() == before + 3


async def test_forward_auth_from_an_untrusted_peer_gets_nothing(settings: Settings) -> None:
    # Forward-auth answers only trusted proxies: a spoofed X-Forwarded-For from anyone
    # else is refused before any token is looked at, never allowed.
    async with world(settings, trusted_proxies=("10.9.9.9",)) as w:
        _, outside = await w.mint([OUTSIDE])
        response = await w.admin.get(
            "/authz",
            headers=bearer(outside, **nginx("/threads/1"), **{"X-Forwarded-For": INSIDE_XFF}),
        )
        assert response.status_code == 403
        assert response.json()["error"] == "untrusted_proxy"
        assert "x-patgate-token-id" not in response.headers


# -- POST /v1/verify ---------------------------------------------------------------------


async def test_verify_takes_the_described_requests_address(settings: Settings) -> None:
    async with world(settings) as w:
        token_id, secret = await w.mint([OUTSIDE, "2001:db8::/32"])
        _, anywhere = await w.mint(None)

        async def verify(**extra: Any) -> dict[str, Any]:
            body = {"token": secret, "method": "GET", "path": "/threads/1", **extra}
            response = await w.admin.post("/v1/verify", headers=w.as_admin(), json=body)
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        for ip in (INSIDE_XFF, "::ffff:203.0.113.9", "2001:db8::5", "[2001:db8::5]"):
            allowed = await verify(ip=ip)
            assert allowed["allowed"] is True, ip
            assert allowed["identity"]["token_id"] == token_id

        refused = {
            "allowed": False,
            "status": 403,
            "error": "insufficient_scope",
            "reason": "ip_not_allowed",
            "detail": "the token may not be used from this address",
            "scope": None,
            "identity": None,
        }
        before = w.denials()
        assert await verify(ip=ELSEWHERE) == refused
        # no "ip": a token with an allowlist cannot be vouched for
        assert await verify() == refused
        assert await verify(ip=None) == refused
        # the caller's own address (127.0.0.1) is not the described request's
        assert await verify(ip="2001:db9::1") == refused
        assert w.denials() == before + 4

        # a token without an allowlist needs no "ip"
        body = {"token": anywhere, "method": "GET", "path": "/threads/1"}
        response = await w.admin.post("/v1/verify", headers=w.as_admin(), json=body)
        assert response.json()["allowed"] is True


@pytest.mark.parametrize("ip", ["garbage", "", "fe80::1%eth0", "203.0.113.9:443", 7, ["1.2.3.4"]])
async def test_verify_refuses_a_malformed_ip(settings: Settings, ip: object) -> None:
    async with world(settings) as w:
        _, secret = await w.mint([OUTSIDE])
        body = {"token": secret, "method": "GET", "path": "/threads/1", "ip": ip}
        response = await w.admin.post("/v1/verify", headers=w.as_admin(), json=body)
        assert response.status_code == 400
        assert response.json() == {
            "error": "validation",
            "detail": "ip: expected the client's IP address",
        }
        assert w.denials() == 0


# -- the management API ------------------------------------------------------------------


async def test_management_api_enforces_the_callers_allowlist(settings: Settings) -> None:
    async with world(settings) as w:
        inside_id, inside = await w.mint(["127.0.0.1"], scopes=("tokens:read:own",))
        _, outside = await w.mint([OUTSIDE], scopes=("tokens:read:own",))

        response = await w.admin.get("/v1/me", headers=bearer(inside))
        assert response.status_code == 200, response.text
        assert response.json()["token_id"] == inside_id

        assert_refused(await w.admin.get("/v1/me", headers=bearer(outside)))
        assert_refused(await w.admin.get("/v1/tokens", headers=bearer(outside)))
        # refused before anything is done: the token list is untouched
        response = await w.admin.post(
            "/v1/tokens", headers=bearer(outside), json={"name": "sneaky", "scopes": []}
        )
        assert_refused(response)
        assert "sneaky" not in [
            t["name"]
            for t in (await w.admin.get("/v1/tokens", headers=bearer(inside))).json()["items"]
        ]

        # through a trusted proxy (loopback) naming a client inside
        response = await w.admin.get(
            "/v1/me", headers=bearer(outside, **{"X-Forwarded-For": INSIDE_XFF})
        )
        assert response.status_code == 200
        assert_refused(
            await w.admin.get("/v1/me", headers=bearer(outside, **{"X-Forwarded-For": ELSEWHERE}))
        )


async def test_management_api_ignores_x_forwarded_for_from_an_untrusted_peer(
    settings: Settings,
) -> None:
    async with world(settings, trusted_proxies=("10.9.9.9",)) as w:
        _, outside = await w.mint([OUTSIDE], scopes=("tokens:read:own",))
        _, inside = await w.mint(["127.0.0.1"], scopes=("tokens:read:own",))
        spoof = {"X-Forwarded-For": INSIDE_XFF}
        assert_refused(await w.admin.get("/v1/me", headers=bearer(outside, **spoof)))
        assert (await w.admin.get("/v1/me", headers=bearer(inside, **spoof))).status_code == 200


async def test_an_allowlist_edit_applies_to_the_next_request(settings: Settings) -> None:
    async with world(settings) as w:
        token_id, secret = await w.mint([OUTSIDE])
        # the owner edits (PATCH is on one's own tokens), with a management token
        _, owner = await w.mint(None, scopes=("tokens:read:own", "tokens:write:own"))

        async def gateway() -> httpx.Response:
            return await w.gw.get("/threads/1", headers=bearer(secret))

        async def patch(allowed: list[str] | None, token: str = token_id) -> None:
            response = await w.admin.patch(
                f"/v1/tokens/{token}", headers=bearer(owner), json={"allowed_ips": allowed}
            )
            assert response.status_code == 200, response.text
            assert response.json()["allowed_ips"] == allowed

        assert_refused(await gateway())
        assert len(w.runtime.cache) == 1  # the refused token is cached, allowlist and all

        # Each edit is a commit that invalidates the cached entry; the first request
        # after it sees the new allowlist. (Bounded retry: the invalidation travels over
        # pub/sub; its lag, not a TTL, is all that may separate edit and effect.)
        await patch(["127.0.0.1"])
        response, tries = await eventually(gateway, 200)
        assert response.status_code == 200
        assert tries <= 3
        await patch(["198.51.100.0/24", "::1"])
        response, tries = await eventually(gateway, 403)
        assert_refused(response)
        assert tries <= 3
        await patch(None)  # null: any address
        response, tries = await eventually(gateway, 200)
        assert response.status_code == 200
        assert tries <= 3
        stored = await w.runtime.store.get_token(token_id)
        assert stored is not None
        assert stored.allowed_ips is None

        # The management API reads fresh: an edit is seen there at once.
        mgmt_id, mgmt = await w.mint(["127.0.0.1"], scopes=("tokens:read:own",))
        assert (await w.admin.get("/v1/me", headers=bearer(mgmt))).status_code == 200
        await patch([OUTSIDE], mgmt_id)
        assert_refused(await w.admin.get("/v1/me", headers=bearer(mgmt)))


# -- the ASGI middleware -----------------------------------------------------------------


@requires("threads:read")
async def _read(request: Request) -> JSONResponse:
    return JSONResponse({"token_id": request.user.identity})


@requires("threads:read")
async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(websocket.user.identity)
    await websocket.close()


def _app(runtime: Runtime[Settings]) -> Starlette:
    return Starlette(
        routes=[Route("/threads/{id}", _read), WebSocketRoute("/threads/{id}", _ws)],
        middleware=[Middleware(PatgateMiddleware, runtime=runtime)],
    )


async def test_asgi_middleware_over_http(settings: Settings) -> None:
    # The app's own runtime (its lifespan starts it); tokens from the lifecycle service.
    async with world(settings) as w:
        inside_id, inside = await w.mint(["127.0.0.1"])
        _, outside = await w.mint([OUTSIDE])
        runtime = Runtime(w.runtime.settings, policy=make_policy())
        async with (
            serve(_app(runtime)) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
        ):
            response = await client.get("/threads/1", headers=bearer(inside))
            assert response.status_code == 200
            assert response.json() == {"token_id": inside_id}
            assert_refused(await client.get("/threads/1", headers=bearer(outside)))
            forwarded = bearer(outside, **{"X-Forwarded-For": INSIDE_XFF})
            assert (await client.get("/threads/1", headers=forwarded)).status_code == 200
            count = runtime.metrics.registry.get_sample_value(
                "patgate_decisions_total", {"outcome": "deny", "reason": "ip_not_allowed"}
            )
            assert count == 1


@pytest.mark.parametrize(
    ("peer", "trusted", "xff", "allowed"),
    [
        ("203.0.113.9", ("127.0.0.1",), None, True),
        ("::ffff:203.0.113.9", ("127.0.0.1",), None, True),  # a dual-stack listener's peer
        ("198.51.100.7", ("127.0.0.1",), None, False),
        ("2001:db8::1", ("127.0.0.1",), None, False),
        # an untrusted peer's X-Forwarded-For is ignored, in either direction
        ("198.51.100.7", ("127.0.0.1",), "203.0.113.9", False),
        ("203.0.113.9", ("127.0.0.1",), "198.51.100.7", True),
        # a trusted peer's is believed, in either direction
        ("10.1.2.3", ("10.0.0.0/8",), "203.0.113.9", True),
        ("10.1.2.3", ("10.0.0.0/8",), "198.51.100.7", False),
        ("10.1.2.3", ("10.0.0.0/8",), None, False),
    ],
)
async def test_asgi_middleware_by_peer_address(
    settings: Settings, peer: str, trusted: tuple[str, ...], xff: str | None, allowed: bool
) -> None:
    runtime = Runtime(
        settings.evolve(lastused_interval=60, trusted_proxies=trusted), policy=make_policy()
    )
    tokens = TokenService(runtime.store, runtime.token_format)
    directory = Directory(runtime.store, default_org="acme")
    await bootstrap(tokens, directory, org_id="acme")
    await directory.put_org(Actor.system(), "acme", {"member_scopes": MEMBER_SCOPES})
    token, secret = await tokens.create(
        Actor.system(),
        name="ci",
        owner=Owner("user", "admin", "acme"),
        scopes=["threads:read"],
        allowed_ips=[OUTSIDE],
    )
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=_app(runtime), client=(peer, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            headers = bearer(secret) if xff is None else bearer(secret, **{"X-Forwarded-For": xff})
            response = await client.get("/threads/1", headers=headers)
    finally:
        await runtime.aclose()
    if allowed:
        assert response.status_code == 200, response.text
        assert response.json() == {"token_id": token.id}
    else:
        assert_refused(response)
    count = runtime.metrics.registry.get_sample_value(
        "patgate_decisions_total", {"outcome": "deny", "reason": "ip_not_allowed"}
    )
    assert (count or 0.0) == (0.0 if allowed else 1.0)


async def test_asgi_middleware_websocket_handshake(settings: Settings) -> None:
    async with world(settings) as w:
        inside_id, inside = await w.mint(["127.0.0.1"])
        _, outside = await w.mint([OUTSIDE])
        runtime = Runtime(w.runtime.settings, policy=make_policy())
        async with serve(_app(runtime), ws="websockets-sansio") as port:
            url = f"ws://127.0.0.1:{port}/threads/1"
            async with ws_connect(url, additional_headers=bearer(inside)) as ws:
                assert await ws.recv() == inside_id
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(url, additional_headers=bearer(outside)):
                    pass
            assert info.value.response.status_code == 403
            count = runtime.metrics.registry.get_sample_value(
                "patgate_decisions_total", {"outcome": "deny", "reason": "ip_not_allowed"}
            )
            assert count == 1
