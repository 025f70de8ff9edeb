"""msgpack records: round trips, old-version decoding, computed status, public views."""

from __future__ import annotations

import msgpack
import pytest

from middleware.records import LastUsed, Org, Token, User, owner_key


def _token(**changes: object) -> Token:
    base = Token(
        id="tok_1",
        name="ci",
        description="deploys",
        owner_kind="user",
        owner_id="alice",
        org_id="acme",
        type="personal",
        scopes=("threads:read", "threads:write"),
        workspaces=("ws1", "ws2"),
        expires_at=2000.0,
        created_at=1000.0,
        created_by="alice",
        revoked_at=None,
        prefix="pat_abcd",
        digest=bytes(range(32)),
        updated_at=1500.0,
        issued_at=1200.0,
    )
    return base.evolve(**changes)


@pytest.mark.parametrize(
    "token",
    [
        _token(),
        _token(workspaces=None, expires_at=None),
        _token(revoked_at=1800.0, owner_kind="org", owner_id="acme", type="service"),
        _token(scopes=(), description="ünïcode ✓"),
    ],
)
def test_token_round_trip(token: Token) -> None:
    assert Token.decode(token.encode()) == token


def test_token_with_last_used() -> None:
    used = LastUsed(at=1700.0, method="GET", path="/v1/x", ip="10.0.0.1", user_agent="curl")
    decoded = Token.decode(_token().encode(), used.encode())
    assert decoded.last_used == used
    assert decoded.to_json(1000.0)["last_used"] == {
        "at": 1700.0,
        "method": "GET",
        "path": "/v1/x",
        "ip": "10.0.0.1",
        "user_agent": "curl",
    }


def test_token_decodes_shorter_arrays_from_older_versions() -> None:
    fields = msgpack.unpackb(_token().encode(), raw=False)
    old = msgpack.packb(fields[:15], use_bin_type=True)
    decoded = Token.decode(old)
    assert decoded.updated_at == decoded.created_at == 1000.0
    assert decoded.issued_at == 1000.0


@pytest.mark.parametrize(
    ("changes", "now", "status"),
    [
        ({}, 1999.9, "active"),
        ({}, 2000.0, "expired"),
        ({"expires_at": None}, 1e12, "active"),
        ({"revoked_at": 1500.0}, 1600.0, "revoked"),
        ({"revoked_at": 1500.0}, 3000.0, "revoked"),
    ],
)
def test_status_is_computed(changes: dict[str, object], now: float, status: str) -> None:
    assert _token(**changes).status(now) == status


def test_public_view_has_no_digest_and_no_secret() -> None:
    token = _token()
    view = token.to_json(1000.0)
    assert "digest" not in view
    assert "token" not in view
    assert token.digest.hex() not in repr(view)
    assert view["owner"] == {"type": "user", "id": "alice"}
    assert view["workspaces"] == ["ws1", "ws2"]
    assert _token(workspaces=None).to_json(0)["workspaces"] == ["*"]


def test_token_record_is_compact() -> None:
    # SPEC target: ≤ 400 B per token in Redis; the record is most of it.
    assert len(_token().encode()) < 200


def test_user_and_org_round_trip() -> None:
    user = User("bob", "acme", "bob@example.com", "Bob", "admin", False, True, 1.0, 2.0)
    assert User.decode(user.encode()) == user
    assert not user.can_authenticate
    assert not user.evolve(enabled=True, can_manage_tokens=False).can_authenticate
    assert user.evolve(enabled=True).can_authenticate
    org = Org("acme", "Acme", 5, 86400.0, False, 1.0, 2.0)
    assert Org.decode(org.encode()) == org
    assert org.to_json()["token_limit"] == 5
    assert user.to_json()["role"] == "admin"


def test_owner_key() -> None:
    assert owner_key("user", "alice") == "u:alice"
    assert owner_key("org", "acme") == "o:acme"
    assert _token().owner_key == "u:alice"
