"""Issue 9, item 1: no scope or workspace escalation, at write time and at decision time.

A real management API and a real gateway (uvicorn on loopback, one shared Runtime, real
Valkey) in front of an echo upstream. Org ``acme`` lets members grant
``threads:read:own`` and ``items:read``; ``alice`` is a member in workspace ``w1``,
``root`` an admin. Every management scope, role and edit route is tried, including the
exact requests of the issue, and the effect is checked through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.api import create_api_app
from patgate.gateway.app import create_gateway_app
from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService
from patgate.gateway.settings import Settings
from patgate.middleware.records import Token
from patgate.middleware.runtime import Runtime
from patgate.policies.engine import parse_policy
from tests.middleware._servers import serve

pytestmark = pytest.mark.anyio

POLICY = """
version = 1
default = "deny"

[[rules]]
name = "admin"
path = "/admin/**"
scopes = ["admin:read"]

[[rules]]
name = "user-threads"
methods = ["GET"]
path = "/users/{uid}/threads"
scopes = ["threads:read"]
own = "uid"

[[rules]]
name = "items"
methods = ["GET"]
path = "/workspaces/{ws}/items"
scopes = ["items:read"]
workspace_param = "ws"
"""

OWN = ["tokens:read:own", "tokens:write:own"]
#: scopes no member may ever grant: the management admin scopes and what implies them,
#: and resources outside the org's member catalogue.
FORBIDDEN_TO_MEMBERS = [
    "admin:*",
    "admin:read",
    "tokens:admin",
    "users:admin",
    "*",
    "all",
    "tokens:*",
    "users:*",
    "*:admin",
    "*:*",
    "read-only",
    "threads:read",  # the catalogue has threads:read:own only
]


@dataclass
class Stack:
    api: httpx.AsyncClient
    gw: httpx.AsyncClient
    runtime: Runtime
    tokens: TokenService
    seen: list[dict[str, str]]
    secrets: dict[str, str] = field(default_factory=dict)

    async def call(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": "Bearer " + self.secrets[who]}
        return await self.api.request(method, path, headers=headers, **kw)

    async def through(self, secret: str, path: str) -> httpx.Response:
        return await self.gw.get(path, headers={"authorization": "Bearer " + secret})

    async def stored(self) -> list[bytes]:
        """Every token record, to prove a refused request changed nothing."""
        r: Any = self.runtime.redis
        return sorted((await r.hgetall(self.runtime.store.keys_for("acme").tokens)).values())


@contextlib.asynccontextmanager
async def _stack(settings: Settings) -> AsyncIterator[Stack]:
    seen: list[dict[str, str]] = []

    async def echo(request: Request) -> JSONResponse:
        headers = {k.decode(): v.decode() for k, v in request.scope["headers"]}
        seen.append(headers)
        return JSONResponse({"path": request.url.path})

    upstream = Starlette(routes=[Route("/{path:path}", echo)])
    async with serve(upstream, lifespan="off") as up_port:
        runtime = Runtime(
            settings.evolve(upstream_url=f"http://127.0.0.1:{up_port}", lastused_interval=60),
            policy=parse_policy(POLICY, "escalation.toml"),
        )
        store, fmt, system = runtime.store, runtime.token_format, Actor.system()
        directory = Directory(store, default_org="acme")
        tokens = TokenService(store, fmt)
        await directory.put_org(
            system, "acme", {"member_scopes": ["threads:read:own", "items:read"]}
        )
        for uid, role, extra in (
            ("root", "admin", {}),
            ("ops", "admin", {}),
            ("alice", "member", {"workspaces": ["w1"]}),
            ("bob", "member", {}),
        ):
            body = {"org_id": "acme", "email": f"{uid}@acme.io", "role": role, **extra}
            await directory.put_user(system, uid, body)
        api_app = create_api_app(store, fmt)
        async with (
            serve(api_app) as api_port,
            serve(create_gateway_app(runtime)) as gw_port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", trust_env=False) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", trust_env=False) as gw,
        ):
            stack = Stack(api, gw, runtime, tokens, seen)
            for who, scopes in (
                ("root", [*OWN, "tokens:admin", "users:admin"]),
                ("ops", [*OWN, "tokens:admin", "users:admin", "admin:read"]),
                ("alice", OWN),
            ):
                _, secret = await tokens.create(
                    system, name="mgmt", scopes=scopes, owner=Owner("user", who, "acme")
                )
                stack.secrets[who] = secret
            yield stack


async def _forge(stack: Stack, owner: str, scopes: list[str], workspaces: Any = None) -> str:
    """A token record written around the service layer (as a pre-fix bug, a restore or a
    hand edit could leave one): only decision-time bounding stands between it and the
    upstream."""
    fmt, now = stack.runtime.token_format, time.time()
    partition = stack.runtime.store.keys_for("acme").partition
    secret = fmt.generate(partition)
    token = Token(
        id=f"tok_{partition:03x}forged{owner}",
        name="forged",
        description="",
        owner_kind="user",
        owner_id=owner,
        org_id="acme",
        type="personal",
        scopes=tuple(scopes),
        workspaces=workspaces,
        expires_at=None,
        created_at=now,
        created_by=owner,
        revoked_at=None,
        prefix=fmt.display_prefix(secret),
        digest=fmt.digest(secret),
        updated_at=now,
        issued_at=now,
    )
    plan = stack.runtime.store.plan("acme")
    plan.put_token(None, token)
    await stack.runtime.store.commit(plan)
    return secret


# -- write time --------------------------------------------------------------------------


@pytest.mark.parametrize("scope", FORBIDDEN_TO_MEMBERS)
async def test_a_member_cannot_mint_or_add_what_they_may_not_grant(
    settings: Settings, scope: str
) -> None:
    async with _stack(settings) as s:
        ok = await s.call("alice", "POST", "/v1/tokens", json={"name": "base"})
        assert ok.status_code == 201, ok.text
        tid = ok.json()["id"]
        before = await s.stored()
        attempts = [
            ("POST", "/v1/tokens", {"name": "x", "scopes": [scope]}),
            ("POST", f"/v1/tokens/{tid}/scopes", {"scopes": [scope]}),
            ("PATCH", f"/v1/tokens/{tid}", {"scopes": [scope]}),
            ("PATCH", f"/v1/tokens/{tid}", {"scopes": ["items:read", scope]}),
        ]
        for method, path, body in attempts:
            r = await s.call("alice", method, path, json=body)
            assert r.status_code == 403, (method, path, body, r.text)
            assert r.json()["error"] == "scope_not_grantable"
        assert await s.stored() == before


@pytest.mark.parametrize("workspaces", [["w2"], ["w1", "w2"], "*", ["*"]])
async def test_a_member_cannot_widen_workspaces(settings: Settings, workspaces: Any) -> None:
    async with _stack(settings) as s:
        ok = await s.call("alice", "POST", "/v1/tokens", json={"name": "ws", "workspaces": ["w1"]})
        assert ok.status_code == 201, ok.text
        before = await s.stored()
        for method, path, body in (
            ("POST", "/v1/tokens", {"name": "x", "workspaces": workspaces}),
            ("PATCH", f"/v1/tokens/{ok.json()['id']}", {"workspaces": workspaces}),
        ):
            r = await s.call("alice", method, path, json=body)
            assert r.status_code == 403, (body, r.text)
            assert r.json()["error"] == "workspace_not_grantable"
        assert await s.stored() == before


async def test_members_grant_their_catalogue_and_self_service(settings: Settings) -> None:
    async with _stack(settings) as s:
        r = await s.call(
            "alice",
            "POST",
            "/v1/tokens",
            json={"name": "fine", "scopes": ["threads:read:own", "items:read", *OWN]},
        )
        assert r.status_code == 201, r.text
        secret = r.json()["token"]
        assert (await s.through(secret, "/users/alice/threads")).status_code == 200
        assert (await s.through(secret, "/workspaces/w1/items")).status_code == 200
        assert (await s.through(secret, "/users/bob/threads")).status_code == 403
        assert (await s.through(secret, "/workspaces/w2/items")).status_code == 403


@pytest.mark.parametrize("scope", ["tokens:admin", "users:admin", "admin:*", "*"])
async def test_an_admin_cannot_give_a_member_more_than_the_member_may_hold(
    settings: Settings, scope: str
) -> None:
    async with _stack(settings) as s:
        r = await s.call(
            "root",
            "POST",
            "/v1/tokens",
            json={"name": "for-alice", "owner": {"type": "user", "id": "alice"}, "scopes": [scope]},
        )
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "scope_not_grantable"
        # ...while granting it to themselves is their right.
        mine = await s.call("root", "POST", "/v1/tokens", json={"name": "own", "scopes": [scope]})
        assert mine.status_code == 201, mine.text


async def test_an_admin_cannot_mint_beyond_the_orgs_admin_catalogue(settings: Settings) -> None:
    async with _stack(settings) as s:
        r = await s.call(
            "root",
            "PUT",
            "/v1/orgs/acme",
            json={"admin_scopes": ["tokens:*", "users:*", "admin:read"]},
        )
        assert r.status_code == 200, r.text
        for owner in (None, {"type": "org", "id": "acme"}):
            body: dict[str, Any] = {"name": f"x-{owner is None}", "scopes": ["billing:read"]}
            if owner is not None:
                body["owner"] = owner
            refused = await s.call("root", "POST", "/v1/tokens", json=body)
            assert refused.status_code == 403, refused.text


# -- decision time -----------------------------------------------------------------------


async def test_a_forged_token_does_only_what_its_owner_may_grant(settings: Settings) -> None:
    """The issue's exploit, had the write slipped through: ``*`` for a member."""
    async with _stack(settings) as s:
        secret = await _forge(s, "alice", ["*", "admin:*", "tokens:admin"])
        assert (await s.through(secret, "/admin/secret")).status_code == 403
        assert (await s.through(secret, "/users/bob/threads")).status_code == 403
        assert (await s.through(secret, "/workspaces/w2/items")).status_code == 403
        assert (await s.through(secret, "/users/alice/threads")).status_code == 200
        assert (await s.through(secret, "/workspaces/w1/items")).status_code == 200
        # what the upstream is told is the bounded set, never admin
        scopes = s.seen[-1]["x-patgate-scopes"].split()
        assert sorted(scopes) == ["items:read", "threads:read:own", *OWN]
        # and the management API sees the same bounded caller
        me = await s.api.get("/v1/me", headers={"authorization": "Bearer " + secret})
        assert me.status_code == 200
        assert "tokens:admin" not in me.json()["scopes"]
        admin_view = await s.api.get(
            "/v1/admin/tokens", headers={"authorization": "Bearer " + secret}
        )
        assert admin_view.status_code == 403


async def _until(predicate: Any, seconds: float = 1.0) -> float:
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < seconds, "not within the bound"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_demotion_shrinks_tokens_within_milliseconds(settings: Settings) -> None:
    async with _stack(settings) as s:
        ops = s.secrets["ops"]
        assert (await s.through(ops, "/admin/x")).status_code == 200  # cached now
        r = await s.call("root", "PUT", "/v1/users/ops", json={"role": "member"})
        assert r.status_code == 200, r.text

        async def refused() -> bool:
            return (await s.through(ops, "/admin/x")).status_code == 403

        assert await _until(refused) < 0.2
        # regenerating would re-issue power the owner no longer has: refused, unchanged
        before = await s.stored()
        regen = await s.call("ops", "POST", f"/v1/tokens/{await _id_of(s, 'ops')}/regenerate")
        assert regen.status_code == 403, regen.text
        assert regen.json()["error"] == "scope_not_grantable"
        assert await s.stored() == before


async def _id_of(s: Stack, who: str) -> str:
    fmt = s.runtime.token_format
    found = await s.runtime.store.lookup(fmt.digest(s.secrets[who]), fmt.partition(s.secrets[who]))
    assert found is not None
    return Token.decode(found[0]).id


async def test_shrinking_the_org_catalogue_shrinks_tokens_within_milliseconds(
    settings: Settings,
) -> None:
    async with _stack(settings) as s:
        made = await s.call(
            "alice", "POST", "/v1/tokens", json={"name": "items", "scopes": ["items:read"]}
        )
        secret = made.json()["token"]
        assert (await s.through(secret, "/workspaces/w1/items")).status_code == 200
        r = await s.call(
            "root", "PUT", "/v1/orgs/acme", json={"member_scopes": ["threads:read:own"]}
        )
        assert r.status_code == 200, r.text

        async def refused() -> bool:
            return (await s.through(secret, "/workspaces/w1/items")).status_code == 403

        assert await _until(refused) < 0.2


async def test_withdrawing_a_workspace_shrinks_tokens(settings: Settings) -> None:
    async with _stack(settings) as s:
        made = await s.call(
            "alice", "POST", "/v1/tokens", json={"name": "items", "scopes": ["items:read"]}
        )
        secret = made.json()["token"]
        assert made.json()["workspaces"] == ["w1"]  # no workspaces named: the owner's
        assert (await s.through(secret, "/workspaces/w1/items")).status_code == 200
        r = await s.call("root", "PUT", "/v1/users/alice", json={"workspaces": ["w3"]})
        assert r.status_code == 200, r.text

        async def refused() -> bool:
            return (await s.through(secret, "/workspaces/w1/items")).status_code == 403

        assert await _until(refused) < 0.2


# -- the grant settings themselves -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/orgs/acme", {"member_scopes": ["*"]}),
        ("/v1/orgs/acme", {"member_scopes": ["tokens:*"]}),
        ("/v1/orgs/acme", {"member_scopes": ["users:admin"]}),
        ("/v1/orgs/acme", {"member_scopes": ["bad scope"]}),
        ("/v1/orgs/acme", {"admin_scopes": ["threads:*"]}),  # admins would lock themselves out
        ("/v1/users/bob", {"grantable_scopes": ["*"]}),  # bob is a member
        ("/v1/users/bob", {"grantable_scopes": ["tokens:admin"]}),
        ("/v1/users/bob", {"workspaces": ["not a workspace!"]}),
    ],
)
async def test_grant_settings_refuse_admin_only_scopes_for_members(
    settings: Settings, path: str, body: dict[str, Any]
) -> None:
    async with _stack(settings) as s:
        r = await s.call("root", "PUT", path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "validation"


async def test_a_member_cannot_change_grant_settings(settings: Settings) -> None:
    async with _stack(settings) as s:
        for path, body in (
            ("/v1/orgs/acme", {"member_scopes": ["admin:read"]}),
            ("/v1/users/alice", {"grantable_scopes": ["admin:read"]}),
            ("/v1/users/alice", {"workspaces": "*"}),
        ):
            r = await s.call("alice", "PUT", path, json=body)
            assert r.status_code == 403, (path, r.text)


async def test_host_synced_grantable_scopes_bound_one_user(settings: Settings) -> None:
    async with _stack(settings) as s:
        r = await s.call(
            "root", "PUT", "/v1/users/alice", json={"grantable_scopes": ["items:read"]}
        )
        assert r.status_code == 200, r.text
        refused = await s.call(
            "alice", "POST", "/v1/tokens", json={"name": "t", "scopes": ["threads:read:own"]}
        )
        assert refused.status_code == 403
        fine = await s.call(
            "alice", "POST", "/v1/tokens", json={"name": "t", "scopes": ["items:read"]}
        )
        assert fine.status_code == 201, fine.text


# -- one wording for unknown tokens (issue 9, item 8) ------------------------------------


async def test_unknown_and_malformed_tokens_get_one_answer_at_every_front_door(
    settings: Settings,
) -> None:
    async with _stack(settings) as s:
        unknown = s.runtime.token_format.generate()
        malformed = "pat_" + "x" * 10
        answers = set()
        for secret in (unknown, malformed):
            for response in (
                await s.through(secret, "/users/alice/threads"),
                await s.api.get("/v1/me", headers={"authorization": "Bearer " + secret}),
            ):
                assert response.status_code == 401
                answers.add((response.headers["www-authenticate"], response.json()["detail"]))
        assert answers == {
            (
                'Bearer realm="patgate", error="invalid_token", '
                'error_description="invalid or unknown token"',
                "invalid or unknown token",
            )
        }
