"""``POST /v1/admin/tokens`` (issue 13): an admin registers a token issued elsewhere; it
then authenticates like patgate's own (here: as a management API caller), is listed and
filtered by type in the admin view, and is revoked the same way."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from tests.gateway.api._world import Api

pytestmark = pytest.mark.anyio


def _body(value: str, **extra: object) -> dict[str, object]:
    return {
        "name": "okta-sync",
        "value": value,
        "issuer": "okta",
        "owner": {"type": "user", "id": "alice"},
        "scopes": ["tokens:read:own"],
        **extra,
    }


async def test_register_use_list_and_revoke(api: Api) -> None:
    value = "okta_" + secrets.token_urlsafe(30)
    r = await api.call("POST", "/v1/admin/tokens", json=_body(value))
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    token = r.json()
    assert "token" not in token  # no secret to show: the caller already has it
    assert (token["type"], token["external"], token["issuer"]) == ("oauth", True, "okta")
    assert token["prefix"] == value[:9]
    assert value not in r.text

    api.secrets["okta"] = value
    me = await api.call("GET", "/v1/me", "okta")
    assert me.status_code == 200, me.text
    assert me.json()["token_id"] == token["id"]

    listed = await api.call("GET", "/v1/admin/tokens", params={"type": "oauth"})
    assert [t["id"] for t in listed.json()["items"]] == [token["id"]]

    r = await api.call("POST", f"/v1/admin/tokens/{token['id']}/revoke")
    assert r.status_code == 200, r.text
    again = await api.call("GET", "/v1/me", "okta")
    assert again.status_code == 401
    assert 'error="invalid_token"' in again.headers["www-authenticate"]


async def test_register_by_sha256_for_the_org(api: Api) -> None:
    value = secrets.token_hex(24)
    body = {
        "name": "ci-service",
        "sha256": hashlib.sha256(value.encode()).hexdigest(),
        "owner": {"type": "org"},
        "scopes": ["tokens:read:own"],
    }
    r = await api.call("POST", "/v1/admin/tokens", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["type"], r.json()["issuer"], r.json()["prefix"]) == (
        "service",
        "external",
        "",
    )
    api.secrets["svc"] = value
    assert (await api.call("GET", "/v1/me", "svc")).status_code == 200


@pytest.mark.parametrize(
    ("who", "body", "status", "code"),
    [
        ("alice", _body("x" * 40), 403, "forbidden"),
        ("admin", _body("short"), 400, "validation"),
        ("admin", {**_body("x" * 40), "sha256": "ab" * 32}, 400, "validation"),
        ("admin", {**_body("x" * 40), "token": "extra"}, 400, "validation"),
        ("admin", _body("x" * 40, type="personal"), 400, "validation"),
        ("admin", _body("x" * 40, scopes=["users:admin"]), 403, "scope_not_grantable"),
    ],
)
async def test_refusals(
    api: Api, who: str, body: dict[str, object], status: int, code: str
) -> None:
    r = await api.call("POST", "/v1/admin/tokens", who, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code


async def test_a_value_is_registered_once(api: Api) -> None:
    value = secrets.token_urlsafe(32)
    assert (await api.call("POST", "/v1/admin/tokens", json=_body(value))).status_code == 201
    r = await api.call("POST", "/v1/admin/tokens", json=_body(value, name="other"))
    assert r.status_code == 409
    assert r.json()["error"] == "already_registered"
