"""The console's display filters: relative times that read right, audit data without
Python reprs, tokens masked (never a secret: only the display prefix)."""

from __future__ import annotations

import pytest

from patgate.gateway.console.render import ago, masked, shown, when

DAY = 86_400.0


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (7 * DAY - 1, "in 7 days"),  # made "for 7 days" a second ago
        (1.4 * DAY, "in 1 day"),
        (23.9 * 3600, "in 1 day"),
        (3599, "in 1 hour"),
        (90, "in 2 minutes"),
        (59, "in under a minute"),
        (-7200, "2 hours ago"),
        (-30, "just now"),
    ],
)
def test_ago(delta: float, text: str) -> None:
    assert ago(1_000_000 + delta, 1_000_000) == text


@pytest.mark.parametrize(
    ("value", "key", "text"),
    [
        (None, "role", "—"),
        (True, "allow_never", "yes"),
        (["a:read", "b:list"], "scopes", "a:read, b:list"),
        ([], "allowed_ips", "none"),
        (1798804121.6, "expires_at", "2027-01-01 11:48 UTC"),
        (1798804121.6, "count", "1798804121.6"),
        ({"token_limit": None}, "changes", "token_limit: —"),
    ],
)
def test_shown(value: object, key: str, text: str) -> None:
    assert shown(value, key) == text


def test_when_and_masked() -> None:
    assert when(None) == "never"
    assert when(0) == "1970-01-01 00:00 UTC"
    assert masked("pat_3kF9") == "pat_3kF9…••••••••"
