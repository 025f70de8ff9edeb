"""Expiry presets, explicit times and the organization's lifetime policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from patgate.gateway.lifecycle import Actor, Directory, TokenService
from patgate.gateway.lifecycle.expiry import PRESETS, parse_duration, resolve_expiry
from patgate.gateway.lifecycle.tokens import DEFAULT_LIFETIME
from patgate.middleware.errors import InvalidToken, Unprocessable, ValidationFailed
from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import TokenStore
from patgate.middleware.validate import usable_identity
from tests.gateway._clock import T0, Clock
from tests.gateway.lifecycle._world import make_world

DAY = 86_400.0
JAN_15 = datetime(2027, 1, 15, 12, 0, 0, 250_000, tzinfo=UTC).timestamp()
FREE = Org("acme", "Acme")
STRICT = Org("acme", "Acme", max_lifetime=90 * DAY, allow_never=False)
NO_NEVER = Org("acme", "Acme", allow_never=False)


def _resolve(
    org: Org = FREE,
    *,
    expiration: str | None = None,
    expires_at: object = None,
    default: float | None = 30 * DAY,
) -> float | None:
    return resolve_expiry(
        expiration=expiration,
        expires_at=expires_at,  # type: ignore[arg-type]
        default=default,
        org=org,
        now=T0,
    )


def test_presets_are_the_documented_set() -> None:
    assert list(PRESETS) == ["1d", "7d", "30d", "60d", "90d", "180d", "1y", "never"]


@pytest.mark.parametrize(
    ("org", "kwargs", "expected"),
    [
        (FREE, {}, T0 + 30 * DAY),
        (FREE, {"default": None}, None),
        (FREE, {"expiration": "never"}, None),
        (FREE, {"expiration": "1y"}, T0 + 365 * DAY),
        (STRICT, {"expiration": "90d"}, T0 + 90 * DAY),
        (STRICT, {"expiration": "1d"}, T0 + DAY),
        (STRICT, {"expires_at": T0 + 90 * DAY}, T0 + 90 * DAY),
        (NO_NEVER, {"expiration": "1y"}, T0 + 365 * DAY),
        (FREE, {"expires_at": "2027-01-15T12:00:00.250Z"}, JAN_15),
        (FREE, {"expires_at": "2027-01-15T13:00:00.250+01:00"}, JAN_15),
    ],
)
def test_resolve_expiry_accepts(
    org: Org, kwargs: dict[str, object], expected: float | None
) -> None:
    assert _resolve(org, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("org", "kwargs", "error"),
    [
        (STRICT, {"expiration": "180d"}, Unprocessable),
        (STRICT, {"expiration": "1y"}, Unprocessable),
        (STRICT, {"expiration": "never"}, Unprocessable),
        (STRICT, {"default": None}, Unprocessable),
        (STRICT, {"expires_at": T0 + 91 * DAY}, Unprocessable),
        (NO_NEVER, {"expiration": "never"}, Unprocessable),
        (FREE, {"expires_at": T0}, ValidationFailed),
        (FREE, {"expires_at": T0 - 0.001}, ValidationFailed),
        (FREE, {"expiration": "30d", "expires_at": T0 + 10}, ValidationFailed),
        (FREE, {"expiration": "forever"}, ValidationFailed),
        (FREE, {"expires_at": "2030-13-01T00:00:00Z"}, ValidationFailed),
        (FREE, {"expires_at": {"at": 1}}, ValidationFailed),
        (FREE, {"expires_at": float("nan")}, ValidationFailed),
        (FREE, {"expires_at": float("inf")}, ValidationFailed),
        (NO_NEVER, {"expires_at": float("inf")}, ValidationFailed),
        (FREE, {"expires_at": 1e20}, ValidationFailed),
    ],
)
def test_resolve_expiry_refuses(
    org: Org, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error) as exc:
        _resolve(org, **kwargs)  # type: ignore[arg-type]
    if error is Unprocessable:
        assert exc.value.code == "lifetime"  # type: ignore[attr-defined]
        assert exc.value.status_code == 422  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("never", None), ("90d", 90 * DAY), (3600, 3600.0), (0.5, 0.5)],
)
def test_parse_duration(value: object, expected: float | None) -> None:
    assert parse_duration(value, "max_lifetime") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -5, True, "2w", float("nan"), float("inf"), [30], {}])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValidationFailed, match="max_lifetime"):
        parse_duration(value, "max_lifetime")  # type: ignore[arg-type]


# -- through the service -----------------------------------------------------------------


@pytest.fixture
async def svc(store: TokenStore) -> tuple[TokenService, Directory, Clock]:
    w = await make_world(store)
    return w.tokens, w.directory, w.clock


ALICE = Actor("user", "alice", "acme", "member", frozenset({"tokens:read:own", "tokens:write:own"}))


@pytest.mark.anyio
async def test_org_policy_applies_to_create_and_changes_nothing(
    svc: tuple[TokenService, Directory, Clock], store: TokenStore
) -> None:
    tokens, directory, _ = svc
    await directory.put_org(Actor.system(), "acme", {"max_lifetime": "7d", "allow_never": False})
    for kwargs in ({"expiration": "30d"}, {"expiration": "never"}, {"expires_at": T0 + 8 * DAY}):
        with pytest.raises(Unprocessable):
            await tokens.create(ALICE, name="t", **kwargs)
    assert await store.count(store.keys_for("acme").owner_tokens("u:acme/alice")) == 0
    ok, _ = await tokens.create(ALICE, name="t", expiration="7d")
    assert ok.expires_at == T0 + 7 * DAY
    # no expiry named: the default lifetime, shortened to the org's maximum
    short, _ = await tokens.create(ALICE, name="default")
    assert short.expires_at == T0 + 7 * DAY


@pytest.mark.anyio
async def test_default_lifetime_without_policy(svc: tuple[TokenService, Directory, Clock]) -> None:
    tokens, _, _ = svc
    token, _ = await tokens.create(ALICE, name="t")
    assert token.expires_at == T0 + DEFAULT_LIFETIME == T0 + 30 * DAY


@pytest.mark.anyio
async def test_regenerate_follows_the_current_policy(
    svc: tuple[TokenService, Directory, Clock], store: TokenStore
) -> None:
    tokens, directory, clock = svc
    token, _ = await tokens.create(ALICE, name="t", expiration="never")
    await directory.put_org(Actor.system(), "acme", {"allow_never": False})
    with pytest.raises(Unprocessable):
        await tokens.regenerate(ALICE, token.id)  # the old lifetime (never) is refused
    assert await store.get_token(token.id) == token
    clock.now += 100
    new, _ = await tokens.regenerate(ALICE, token.id, expiration="60d")
    assert new.expires_at == T0 + 100 + 60 * DAY


@pytest.mark.anyio
async def test_expired_token_fails_authentication_at_the_exact_second(
    svc: tuple[TokenService, Directory, Clock], store: TokenStore
) -> None:
    tokens, _, clock = svc
    token, secret = await tokens.create(ALICE, name="t", expires_at=T0 + 60)
    found = await store.lookup(tokens.format.digest(secret), tokens.format.partition(secret))
    assert found is not None
    record, user = Token.decode(found[0]), User.decode(found[1] or b"")
    usable_identity(record, user, T0 + 59.999)
    with pytest.raises(InvalidToken) as exc:
        usable_identity(record, user, T0 + 60)
    assert exc.value.reason == "expired"
    clock.now = T0 + 60
    assert (await tokens.get(ALICE, token.id)).status(clock()) == "expired"
