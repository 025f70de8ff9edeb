"""The management API's value parsers take any JSON value or query string and either
return a value or raise ``ValidationFailed`` — never another exception (issue 9: huge
numbers raised OverflowError, a ``0-0`` events cursor a Redis error)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.gateway.lifecycle.audit import _check_cursor
from patgate.gateway.lifecycle.expiry import MAX_LIFETIME, parse_duration, resolve_expiry
from patgate.gateway.lifecycle.listing import Filters, decode_cursor, encode_cursor
from patgate.middleware.errors import Unprocessable, ValidationFailed
from patgate.middleware.records import Org

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**450), max_value=10**450)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
    | st.sampled_from(["1d", "never", "2027-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59"])
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_ORG = Org(id="acme", name="acme")
_NOW = 1_800_000_000.0


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_parse_duration_takes_any_json_value(value: Any) -> None:
    try:
        seconds = parse_duration(value, "max_lifetime")
    except ValidationFailed:
        return
    assert seconds is None or 0 < seconds <= MAX_LIFETIME


@settings(max_examples=400, deadline=None)
@given(JSON, st.sampled_from([None, "1d", "never", "2w"]))
def test_resolve_expiry_takes_any_json_value(value: Any, expiration: str | None) -> None:
    try:
        at = resolve_expiry(
            expiration=expiration, expires_at=value, default=30 * 86_400.0, org=_ORG, now=_NOW
        )
    except (ValidationFailed, Unprocessable):  # bad input, or the org's lifetime policy
        return
    assert at is None or _NOW < at <= 253_402_300_799


_QUERY = st.none() | st.text(max_size=40) | st.from_regex(r"[0-9]{1,30}", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(_QUERY, _QUERY, _QUERY, _QUERY, _QUERY)
def test_filters_parse_takes_any_query(
    status: str | None, q: str | None, type_: str | None, limit: str | None, cursor: str | None
) -> None:
    try:
        f = Filters.parse(status=status, q=q, type=type_, limit=limit, cursor=cursor)
    except ValidationFailed:
        return
    assert 1 <= f.limit <= 200
    if f.cursor is not None:
        score, token_id = decode_cursor(f.cursor)
        assert 0 <= score <= 2**53
        assert token_id


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**53), st.from_regex(r"tok_[0-9a-f]{16}", fullmatch=True)
)
def test_cursors_round_trip(score: int, token_id: str) -> None:
    assert decode_cursor(encode_cursor(score, token_id)) == (score, token_id)


@settings(max_examples=400, deadline=None)
@given(
    st.text(max_size=50)
    | st.builds(lambda a, b: f"{a}-{b}", st.integers(-5, 2**70), st.integers(-5, 2**70))
)
def test_event_cursors_are_stream_ids_above_zero(cursor: str) -> None:
    try:
        _check_cursor(cursor)
    except ValidationFailed:
        return
    ms, seq = (int(p) for p in cursor.split("-"))
    assert (ms, seq) > (0, 0)
    assert max(ms, seq) < 2**64


@pytest.mark.parametrize(
    "cursor", ["0-0", "00-1", "1-01", "18446744073709551616-0", "1-18446744073709551616", "-1-0"]
)
def test_event_cursors_refused(cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        _check_cursor(cursor)


@pytest.mark.parametrize("cursor", ["0-1", "1-0", "18446744073709551615-18446744073709551615"])
def test_event_cursors_accepted(cursor: str) -> None:
    assert _check_cursor(cursor) == cursor
