"""Per-token IP allowlists through the management API (issue 12): ``allowed_ips`` on
create and PATCH (normalized; refused with 400 and nothing stored when invalid), and the
caller's own allowlist, with the peer address set by the ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from patgate.gateway.api import create_api_app
from tests.gateway.api._world import OWN, Api, snapshot

pytestmark = pytest.mark.anyio

CHALLENGE = (
    'Bearer realm="patgate", error="insufficient_scope", '
    'error_description="the token may not be used from this address"'
)
BODY = {"error": "ip_not_allowed", "detail": "the token may not be used from this address"}

_HOSTS = "'10.0.0.1/24' has host bits set; the network is 10.0.0.0/24"
#: (allowed_ips given, the 400's detail).
INVALID: list[tuple[Any, str]] = [
    (["10.0.0.1/24"], f"allowed_ips: {_HOSTS}"),
    (["192.0.2.1", "10.0.0.1/24"], f"allowed_ips: {_HOSTS}"),
    ([], "allowed_ips: an empty allowlist allows no address; use null for any address"),
    ([f"10.0.0.{n}" for n in range(1, 34)], "allowed_ips: at most 32 entries"),
    (["fe80::1%eth0"], "allowed_ips: 'fe80::1%eth0' is not an IP address or CIDR network"),
    (["garbage"], "allowed_ips: 'garbage' is not an IP address or CIDR network"),
    (["10.0.0.0/33"], "allowed_ips: '10.0.0.0/33': prefix length over /32"),
    ([1], "allowed_ips: entries must be strings"),
    ([None], "allowed_ips: entries must be strings"),
    ("10.0.0.1", "allowed_ips: expected a list of IP addresses or CIDRs, or null"),
    ({"ip": "10.0.0.1"}, "allowed_ips: expected a list of IP addresses or CIDRs, or null"),
    (True, "allowed_ips: expected a list of IP addresses or CIDRs, or null"),
]


def _ids(cases: list[tuple[Any, str]]) -> list[str]:
    return [repr(given)[:40] for given, _ in cases]


async def test_create_stores_the_normalized_allowlist(api: Api) -> None:
    given = ["10.0.0.0/8", "2001:DB8::1/128", "::ffff:10.0.0.0/104", "192.0.2.7/32"]
    response = await api.call(
        "POST",
        "/v1/tokens",
        "alice",
        json={"name": "ci", "scopes": ["threads:read"], "allowed_ips": given},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["allowed_ips"] == ["10.0.0.0/8", "2001:db8::1", "192.0.2.7"]
    shown = await api.call("GET", f"/v1/tokens/{created['id']}", "alice")
    assert shown.json()["allowed_ips"] == ["10.0.0.0/8", "2001:db8::1", "192.0.2.7"]
    stored = await api.resolves(created["token"])
    assert stored is not None
    assert stored.allowed_ips == ("10.0.0.0/8", "2001:db8::1", "192.0.2.7")

    # no field, or null: any address
    for body in ({"name": "any"}, {"name": "any2", "allowed_ips": None}):
        response = await api.call("POST", "/v1/tokens", "alice", json=body)
        assert response.status_code == 201, response.text
        assert response.json()["allowed_ips"] is None
        token = await api.resolves(response.json()["token"])
        assert token is not None
        assert token.allowed_ips is None


@pytest.mark.parametrize(("given", "detail"), INVALID, ids=_ids(INVALID))
async def test_create_refuses_an_invalid_allowlist(
    api: Api, redis_client: aioredis.Redis, namespace: str, given: Any, detail: str
) -> None:
    before = await snapshot(redis_client, namespace)
    assert before
    response = await api.call(
        "POST", "/v1/tokens", "alice", json={"name": "ci", "allowed_ips": given}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "validation", "detail": detail}
    assert await snapshot(redis_client, namespace) == before


@pytest.mark.parametrize(("given", "detail"), INVALID, ids=_ids(INVALID))
async def test_patch_refuses_an_invalid_allowlist(
    api: Api, redis_client: aioredis.Redis, namespace: str, given: Any, detail: str
) -> None:
    created = await api.call(
        "POST", "/v1/tokens", "alice", json={"name": "ci", "allowed_ips": ["192.0.2.0/24"]}
    )
    token_id = created.json()["id"]
    before = await snapshot(redis_client, namespace)
    # Another valid change in the same PATCH is not applied either.
    response = await api.call(
        "PATCH", f"/v1/tokens/{token_id}", "alice", json={"name": "ci-2", "allowed_ips": given}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "validation", "detail": detail}
    assert await snapshot(redis_client, namespace) == before
    shown = (await api.call("GET", f"/v1/tokens/{token_id}", "alice")).json()
    assert (shown["name"], shown["allowed_ips"]) == ("ci", ["192.0.2.0/24"])


async def test_patch_replaces_and_clears_the_allowlist(api: Api) -> None:
    created = await api.call(
        "POST", "/v1/tokens", "alice", json={"name": "ci", "allowed_ips": ["192.0.2.0/24"]}
    )
    token_id, secret = created.json()["id"], created.json()["token"]
    path = f"/v1/tokens/{token_id}"

    response = await api.call(
        "PATCH", path, "alice", json={"allowed_ips": ["::ffff:198.51.100.1", "2001:db8::/32"]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["allowed_ips"] == ["198.51.100.1", "2001:db8::/32"]  # replaced
    stored = await api.resolves(secret)
    assert stored is not None
    assert stored.allowed_ips == ("198.51.100.1", "2001:db8::/32")

    # other edits leave it alone
    response = await api.call("PATCH", path, "alice", json={"description": "d"})
    assert response.json()["allowed_ips"] == ["198.51.100.1", "2001:db8::/32"]

    response = await api.call("PATCH", path, "alice", json={"allowed_ips": None})
    assert response.status_code == 200
    assert response.json()["allowed_ips"] is None
    stored = await api.resolves(secret)
    assert stored is not None
    assert stored.allowed_ips is None

    # the audit trail records both edits, in the stored spelling
    events = await api.call("GET", f"/v1/events?token_id={token_id}", "admin")
    assert events.status_code == 200, events.text
    changed = [
        e["data"]["allowed_ips"]
        for e in events.json()["items"]
        if e["type"] == "token.updated" and "allowed_ips" in e["data"]
    ]
    assert changed == [None, ["198.51.100.1", "2001:db8::/32"]]  # newest first


# -- the caller's own allowlist ----------------------------------------------------------


@pytest.fixture
async def from_peer(api: Api) -> AsyncIterator[Any]:
    """``open(peer)``: an API client whose requests come from ``peer``."""
    app = create_api_app(api.store, api.fmt, clock=api.clock)
    clients: list[httpx.AsyncClient] = []

    async def open_(peer: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(peer, 1234))
        client = httpx.AsyncClient(transport=transport, base_url="http://patgate.test")
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.aclose()


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.json() == BODY


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("203.0.113.9", True),
        ("203.0.113.255", True),
        ("::ffff:203.0.113.9", True),
        ("2001:db8::77", True),
        ("203.0.114.0", False),
        ("198.51.100.7", False),
        ("2001:db9::77", False),
        ("127.0.0.1", False),
    ],
)
async def test_a_management_token_works_only_from_its_allowlist(
    api: Api, from_peer: Any, peer: str, allowed: bool
) -> None:
    await api.add_caller("ops", "alice", OWN, allowed_ips=["203.0.113.0/24", "2001:db8::/32"])
    client = await from_peer(peer)
    bearer = {"authorization": "Bearer " + api.secrets["ops"]}
    response = await client.get("/v1/me", headers=bearer)
    if allowed:
        assert response.status_code == 200, response.text
        assert response.json()["token_id"] == api.ids["ops"]
    else:
        _refused(response)
    # The caller's other tokens (no allowlist) work from anywhere.
    other = await client.get("/v1/me", headers={"authorization": "Bearer " + api.secrets["alice"]})
    assert other.status_code == 200


async def test_a_refused_caller_changes_nothing(
    api: Api, from_peer: Any, redis_client: aioredis.Redis, namespace: str
) -> None:
    await api.add_caller("ops", "alice", OWN, allowed_ips=["203.0.113.0/24"])
    outside = await from_peer("198.51.100.7")
    bearer = {"authorization": "Bearer " + api.secrets["ops"]}
    before = await snapshot(redis_client, namespace)
    victim = api.ids["alice"]
    for method, path, body in (
        ("POST", "/v1/tokens", {"name": "x"}),
        ("PATCH", f"/v1/tokens/{victim}", {"allowed_ips": None}),
        ("PATCH", f"/v1/tokens/{api.ids['ops']}", {"allowed_ips": None}),  # widen itself
        ("POST", f"/v1/tokens/{victim}/revoke", None),
        ("DELETE", f"/v1/tokens/{victim}", None),
    ):
        response = await outside.request(method, path, headers=bearer, json=body)
        _refused(response)
    assert await snapshot(redis_client, namespace) == before
    # From inside the same calls work (the refusal was the address, nothing else).
    inside = await from_peer("203.0.113.9")
    response = await inside.post("/v1/tokens", headers=bearer, json={"name": "x"})
    assert response.status_code == 201, response.text


async def test_x_forwarded_for_is_no_address_without_trusted_proxies(
    api: Api, from_peer: Any
) -> None:
    # create_api_app's default client address is the peer; no header can change it.
    await api.add_caller("ops", "alice", OWN, allowed_ips=["203.0.113.0/24"])
    bearer = {"authorization": "Bearer " + api.secrets["ops"]}
    outside = await from_peer("198.51.100.7")
    _refused(await outside.get("/v1/me", headers={**bearer, "x-forwarded-for": "203.0.113.9"}))
    inside = await from_peer("203.0.113.9")
    response = await inside.get("/v1/me", headers={**bearer, "x-forwarded-for": "198.51.100.7"})
    assert response.status_code == 200
