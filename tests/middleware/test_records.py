"""msgpack records: round trips, old-version decoding, computed status, public views."""

from __future__ import annotations

import msgpack
import pytest

from patgate.middleware.records import LastUsed, Org, Token, User, owner_key


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


def _v1_fields(token: Token) -> list[object]:
    """The first record layout: every field in declaration order, kind and type as text."""
    return [
        token.id, token.name, token.description, token.owner_kind, token.owner_id,
        token.org_id, token.type, list(token.scopes),
        None if token.workspaces is None else list(token.workspaces), token.expires_at,
        token.created_at, token.created_by, token.revoked_at, token.prefix, token.digest,
        token.updated_at, token.issued_at,
    ]  # fmt: skip


def test_token_decodes_shorter_arrays_from_older_versions() -> None:
    old = msgpack.packb(_v1_fields(_token())[:15], use_bin_type=True)
    decoded = Token.decode(old)
    assert decoded.updated_at == decoded.created_at == 1000.0
    assert decoded.issued_at == 1000.0
    assert decoded == _token(updated_at=1000.0, issued_at=1000.0)


@pytest.mark.parametrize(
    "token",
    [_token(), _token(revoked_at=1800.0, owner_kind="org", owner_id="acme", type="service")],
)
def test_token_decodes_the_first_full_layout(token: Token) -> None:
    blob = msgpack.packb(_v1_fields(token), use_bin_type=True)
    assert Token.decode(blob) == token
    # Re-encoding writes the current layout, which decodes to the same token.
    assert Token.decode(Token.decode(blob).encode()) == token


@pytest.mark.parametrize(
    "token",
    [
        _token(),
        _token(created_at=1_700_000_000.123456, expires_at=1_700_000_000.123456 + 86_400.0),
        _token(created_at=0.1, expires_at=0.3, updated_at=0.7, issued_at=0.2),
        _token(expires_at=999.5, created_by="bob", description="", workspaces=None),
        _token(created_at=5.0, expires_at=-3.0),
        _token(created_at=5.0, expires_at=5.0, updated_at=5.0, issued_at=5.0),
    ],
)
def test_token_encoding_is_lossless_and_stable(token: Token) -> None:
    # The store's compare-and-set compares a re-encoded record byte for byte.
    blob = token.encode()
    decoded = Token.decode(blob)
    assert decoded == token
    assert decoded.encode() == blob
    assert all(isinstance(getattr(decoded, f), float) for f in ("created_at", "updated_at"))


def test_fresh_token_record_trims_its_defaults() -> None:
    # What a create writes: no description, every workspace, created by its owner, and
    # updated/issued at creation; the optional fields are trimmed off the array.
    now = 1_700_000_000.25
    fresh = _token(
        description="", workspaces=None, created_at=now, updated_at=now, issued_at=now,
        expires_at=now + 30 * 86_400.0,
    )  # fmt: skip
    fields = msgpack.unpackb(fresh.encode(), raw=False)
    assert len(fields) == 10
    assert fields[2] == 0  # user-owned personal token
    assert fields[7] == -30 * 86_400  # the lifetime, exactly
    assert Token.decode(fresh.encode()) == fresh
    assert len(fresh.encode()) < len(msgpack.packb(_v1_fields(fresh), use_bin_type=True)) - 40


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
    # User ids are scoped per org (issue 9), so the org is part of a user's owner key.
    assert owner_key("user", "alice", "acme") == "u:acme/alice"
    assert owner_key("org", "acme", "acme") == "o:acme"
    assert _token().owner_key == "u:" + _token().org_id + "/alice"
