"""Expiry presets and the org lifetime policy."""

from __future__ import annotations

import math
from datetime import datetime

from patgate.middleware.errors import Unprocessable, ValidationFailed
from patgate.middleware.records import Org

__all__ = ["MAX_LIFETIME", "PRESETS", "parse_duration", "resolve_expiry"]

_DAY = 86_400.0
#: 9999-12-31T23:59:59Z: later times cannot be shown as dates (datetime overflows).
_MAX_TIME = 253_402_300_799.0
#: the longest lifetime an org may set: 100 years.
MAX_LIFETIME = 100 * 365 * _DAY
#: the presets the settings page offers; ``never`` is ``None``.
PRESETS: dict[str, float | None] = {
    "1d": _DAY,
    "7d": 7 * _DAY,
    "30d": 30 * _DAY,
    "60d": 60 * _DAY,
    "90d": 90 * _DAY,
    "180d": 180 * _DAY,
    "1y": 365 * _DAY,
    "never": None,
}


def _in_range(value: int | float, low: float, high: float) -> bool:
    """``low <= value <= high`` for any JSON number, without converting it to float first.

    Python's json turns ``1`` followed by 400 zeros into an int that ``float()`` and
    ``math.isfinite()`` refuse with OverflowError, and ``1e400`` into ``inf``; NaN
    compares false with everything, so it would pass every lifetime check."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return low <= value <= high  # int/float comparison is exact in Python, never raises


def parse_duration(value: str | float | int | None, field: str) -> float | None:
    """A preset name or a number of seconds (> 0, at most 100 years); ``None``/``never``
    mean no limit."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationFailed(f"{field}: expected a preset or seconds, got {value!r}")
    if isinstance(value, int | float):
        if not _in_range(value, 0, MAX_LIFETIME) or value == 0:
            raise ValidationFailed(
                f"{field}: must be a positive number of seconds, at most "
                f"{MAX_LIFETIME:.0f} (100 years)"
            )
        return float(value)
    if isinstance(value, str) and value in PRESETS:
        return PRESETS[value]
    raise ValidationFailed(
        f"{field}: unknown preset {_shown(value)}; use one of {', '.join(PRESETS)} or seconds"
    )


def _shown(value: object) -> str:
    """A bad value quoted in an error message: repr, cut short (it may be 64 KiB)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_time(value: object, field: str) -> float:
    if isinstance(value, bool):
        raise ValidationFailed(f"{field}: expected an ISO 8601 time")
    if isinstance(value, int | float):
        # NaN/Infinity (Python's json accepts them) would make a token that never expires
        # while passing every lifetime check, since NaN compares false with everything.
        if not _in_range(value, 0, _MAX_TIME):
            raise ValidationFailed(f"{field}: expected epoch seconds up to year 9999")
        return float(value)
    if not isinstance(value, str):
        raise ValidationFailed(f"{field}: expected an ISO 8601 time or epoch seconds")
    if len(value) > 64:
        raise ValidationFailed(f"{field}: not an ISO 8601 time (too long)")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(f"{field}: {_shown(value)} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValidationFailed(f"{field}: {_shown(value)} needs a time zone (e.g. Z)")
    # Aware: timestamp() is plain arithmetic; a zone offset can push it past year 9999.
    at = parsed.timestamp()
    if not 0 <= at <= _MAX_TIME:
        raise ValidationFailed(f"{field}: must be between 1970 and the end of year 9999 UTC")
    return at


def resolve_expiry(
    *,
    expiration: str | None,
    expires_at: str | float | int | None,
    default: float | None,
    org: Org,
    now: float,
) -> float | None:
    """The absolute expiry for a new secret, checked against the org's lifetime policy.

    ``expiration`` is a preset (``30d``, ``never`` ...), ``expires_at`` an explicit time;
    giving both is an error. With neither, ``default`` seconds (None = never) apply.
    """
    if expiration is not None and expires_at is not None:
        raise ValidationFailed("give either expiration (a preset) or expires_at, not both")
    if expires_at is not None:
        at: float | None = _parse_time(expires_at, "expires_at")
        assert at is not None
        if at <= now:
            raise ValidationFailed("expires_at must be in the future")
    else:
        if expiration is not None and expiration not in PRESETS:
            raise ValidationFailed(
                f"expiration: unknown preset {_shown(expiration)}; use one of {', '.join(PRESETS)}"
            )
        lifetime = default if expiration is None else PRESETS[expiration]
        at = None if lifetime is None else now + lifetime
    if at is None:
        if not org.allow_never or org.max_lifetime is not None:
            raise Unprocessable(
                f"organization {org.id} does not allow tokens that never expire", code="lifetime"
            )
        return None
    if org.max_lifetime is not None and at - now > org.max_lifetime + 1:
        days = org.max_lifetime / _DAY
        raise Unprocessable(
            f"organization {org.id} allows token lifetimes up to {days:g} days", code="lifetime"
        )
    return at
