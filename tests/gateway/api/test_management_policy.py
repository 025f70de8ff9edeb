"""The example management policy and the management API agree on who may do what.

``policies/examples/management.toml`` is what an operator puts in front of the admin
listener (issue 9: it said ``/v1/orgs/**`` was admin-only while the API let members
read their org). For every management route and two callers, a member holding
``tokens:read:own`` + ``tokens:write:own`` and the bootstrapped admin, the policy's
decision must match what the API itself answers: allowed (anything but 401/403) or
refused (403). Targets are in the caller's own org: the policy cannot see orgs, so
tenant isolation is the handlers' job (``test_errors.py`` covers it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from patgate.gateway.api import create_api_app
from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService, bootstrap
from patgate.middleware.records import Identity
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.policies.engine import Policy, load_policy

POLICY = Path(__file__).resolve().parents[3] / "policies" / "examples" / "management.toml"
OWN = ["tokens:read:own", "tokens:write:own"]

# (method, path, json body); {mine} is a spare token of the caller, {bob_t} one of bob's,
# {me} the caller's user id.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/openapi.json", None),
    ("GET", "/v1/me", None),
    ("POST", "/v1/tokens", {"name": "fresh", "scopes": ["x:read"]}),
    ("GET", "/v1/tokens", None),
    ("DELETE", "/v1/tokens", None),
    ("GET", "/v1/tokens/{mine}", None),
    ("PATCH", "/v1/tokens/{mine}", {"description": "edited"}),
    ("DELETE", "/v1/tokens/{mine}", None),
    ("POST", "/v1/tokens/{mine}/scopes", {"scopes": ["x:list"]}),
    ("DELETE", "/v1/tokens/{mine}/scopes", None),
    ("DELETE", "/v1/tokens/{mine}/scopes/x:read", None),
    ("POST", "/v1/tokens/{mine}/revoke", None),
    ("POST", "/v1/tokens/{mine}/regenerate", {"expiration": "7d"}),
    ("GET", "/v1/admin/tokens", None),
    ("POST", "/v1/admin/tokens/{bob_t}/revoke", None),
    ("GET", "/v1/users", None),
    ("GET", "/v1/users/{me}", None),
    ("GET", "/v1/users/bob", None),
    ("PUT", "/v1/users/bob", {"name": "Robert"}),
    ("PUT", "/v1/users/{me}", {"name": "Renamed"}),
    ("DELETE", "/v1/users/bob", None),
    ("GET", "/v1/orgs/acme", None),
    ("PUT", "/v1/orgs/acme", {"token_limit": 20}),
    ("GET", "/v1/events", None),
    ("POST", "/v1/verify", {"token": "pat_x", "method": "GET", "path": "/"}),
]
#: a member with the self-service scopes, an admin, and a member whose token holds no
#: management scope at all (the API must refuse it everything the policy refuses).
CALLERS = ("alice", "admin", "bob")


@dataclass
class World:
    client: httpx.AsyncClient
    secrets: dict[str, str]
    identities: dict[str, Identity]
    ids: dict[str, str]


def _identity(token_id: str, owner: str, scopes: list[str]) -> Identity:
    return Identity(
        token_id=token_id,
        token_name="mgmt",
        token_type="personal",
        owner_kind="user",
        owner_id=owner,
        org_id="acme",
        scopes=frozenset(scopes),
        workspaces=None,
        expires_at=None,
    )


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY)


@pytest.fixture
async def world(store: TokenStore) -> AsyncIterator[World]:
    fmt, system = TokenFormat(), Actor.system()
    tokens, directory = TokenService(store, fmt), Directory(store)
    admin, admin_secret = await bootstrap(tokens, directory, org_id="acme")
    # Members may grant x:* here, so a refusal below is about the route, not the scope.
    await directory.put_org(system, "acme", {"member_scopes": ["x:*"]})
    for uid in ("alice", "bob"):
        await directory.put_user(system, uid, {"org_id": "acme", "email": f"{uid}@acme.io"})
    alice, alice_secret = await tokens.create(
        system, name="mgmt", owner=Owner("user", "alice", org_id="acme"), scopes=OWN
    )
    ids: dict[str, str] = {}
    for who in CALLERS:
        spare, _ = await tokens.create(
            system, name="spare", owner=Owner("user", who, org_id="acme"), scopes=["x:read"]
        )
        ids[who] = spare.id
    bob_t, _ = await tokens.create(
        system, name="bob-t", owner=Owner("user", "bob", org_id="acme"), scopes=["x:read"]
    )
    ids["bob_t"] = bob_t.id
    bob, bob_secret = await tokens.create(
        system, name="no-mgmt", owner=Owner("user", "bob", org_id="acme"), scopes=["x:read"]
    )
    transport = httpx.ASGITransport(app=create_api_app(store, fmt))
    async with httpx.AsyncClient(transport=transport, base_url="http://patgate.test") as client:
        yield World(
            client,
            {"admin": admin_secret, "alice": alice_secret, "bob": bob_secret},
            {
                "admin": _identity(admin.id, "admin", list(admin.scopes)),
                "alice": _identity(alice.id, "alice", OWN),
                "bob": _identity(bob.id, "bob", ["x:read"]),
            },
            ids,
        )


@pytest.mark.anyio
@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_policy_and_api_agree(
    world: World,
    policy: Policy,
    who: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    url = path.format(mine=world.ids[who], bob_t=world.ids["bob_t"], me=who)
    decision = policy.authorize(policy.route(method, url), world.identities[who])
    r = await world.client.request(
        method, url, json=body, headers={"authorization": "Bearer " + world.secrets[who]}
    )
    assert r.status_code != 401, r.text
    api_allows = r.status_code != 403
    assert api_allows == decision.allowed, (
        f"{who} {method} {url}: policy {decision} but the API answered {r.status_code} {r.text}"
    )
    assert r.status_code < 500, r.text


def test_the_member_reads_its_org_but_writes_stay_admin_only(policy: Policy) -> None:
    """The decision of issue 9, spelled out."""
    member = _identity("t", "alice", OWN)
    assert policy.authorize(policy.route("GET", "/v1/orgs/acme"), member).allowed
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        assert not policy.authorize(policy.route(method, "/v1/orgs/acme"), member).allowed
    assert not policy.authorize(policy.route("GET", "/v1/users"), member).allowed
