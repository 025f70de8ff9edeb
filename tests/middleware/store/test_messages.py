"""The invalidation wire format (middleware/store/plan.py): what the plan writes, what
COMMIT stamps onto it, and what every process parses — stamped or not (issue 11)."""

from __future__ import annotations

import pytest

from patgate.middleware.store.plan import (
    Invalidation,
    org_message,
    parse_message,
    stamp,
    token_message,
    user_message,
)

DIGEST = bytes(range(32))
US = 1_764_626_051_123_456


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (token_message(DIGEST), Invalidation("token", digest=DIGEST)),
        (user_message("acme/alice"), Invalidation("owner", owner="acme/alice")),
        (user_message("acme/a.b@c-d"), Invalidation("owner", owner="acme/a.b@c-d")),
        (org_message("acme"), Invalidation("flush")),
    ],
)
@pytest.mark.parametrize(("position", "committed_us"), [(1, US), (10**12, 0), (7, 10**17)])
def test_round_trip(message: str, expected: Invalidation, position: int, committed_us: int) -> None:
    stamped = stamp(message, position, committed_us).encode()
    assert parse_message(stamped) == expected._replace(position=position, committed_us=committed_us)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # the format before issue 11: no stamp, same meaning
        (token_message(DIGEST).encode(), Invalidation("token", digest=DIGEST)),
        (user_message("acme/alice").encode(), Invalidation("owner", owner="acme/alice")),
        (org_message("acme").encode(), Invalidation("flush")),
        (b"*", Invalidation("flush")),
        # a user id may end in digits: one trailing number is not a stamp
        (user_message("acme/42").encode(), Invalidation("owner", owner="acme/42")),
    ],
)
def test_unstamped_messages_still_parse(data: bytes, expected: Invalidation) -> None:
    assert parse_message(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"t",
        b"t nothex",
        b"t " + b"ab" * 16,  # a digest of the wrong length
        b"t nothex 5 " + str(US).encode(),
        b"u ",
        b"u  1 2",
        b"x something",
        b"\xff\xfe",
    ],
)
def test_malformed_messages_are_a_flush(data: bytes) -> None:
    assert parse_message(data).kind == "flush"


@pytest.mark.parametrize(
    "data",
    [
        token_message(DIGEST).encode() + b" 5",  # only one number
        token_message(DIGEST).encode() + b" -5 " + str(US).encode(),
        token_message(DIGEST).encode() + b" 5 1.5",
        token_message(DIGEST).encode() + b" \xd9\xa3 1",  # a non-ASCII digit
    ],
)
def test_a_malformed_stamp_is_no_stamp(data: bytes) -> None:
    parsed = parse_message(data)
    assert parsed.position is None
    assert parsed.committed_us is None
    assert parsed.kind == "flush"  # the digest part no longer parses: forget everything
