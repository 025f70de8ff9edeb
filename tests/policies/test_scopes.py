"""Scope syntax, presets and the matcher, including a hypothesis cross-check."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.policies.scopes import (
    ACTIONS,
    MANAGEMENT_SCOPES,
    MAX_SCOPES,
    PRESETS,
    ScopeSet,
    grants,
    validate_required,
    validate_scopes,
)


@pytest.mark.parametrize(
    ("given_scopes", "expected"),
    [
        (["threads:read"], ("threads:read",)),
        (["Threads:READ", "threads:read"], ("threads:read",)),
        (["b:read", "a:list:own", "*"], ("*", "a:list:own", "b:read")),
        (["all", "read-only", "Restricted"], ("all", "read-only", "restricted")),
        (["threads:*", "*:read", "*:*:own"], ("*:*:own", "*:read", "threads:*")),
        (["my-res_2:unshare"], ("my-res_2:unshare",)),
        (list(MANAGEMENT_SCOPES), tuple(sorted(MANAGEMENT_SCOPES))),
        ([], ()),
    ],
)
def test_validate_scopes_normalizes(given_scopes: list[str], expected: tuple[str, ...]) -> None:
    assert validate_scopes(given_scopes) == expected


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ([""], "empty scope"),
        (["threads: read"], "whitespace"),
        (["threads:read "], "whitespace"),
        (["threads"], "invalid scope 'threads'"),
        (["threads:read:all"], "invalid scope"),
        (["threads:fly"], "unknown action 'fly'"),
        (["1threads:read"], "invalid scope"),
        (["thr eads"], "whitespace"),
        (["threads:read:own:own"], "invalid scope"),
        (["thréads:read"], "invalid scope"),
        (["a" * 96 + ":read"], "longer than 100"),
        ([f"r{i}:read" for i in range(MAX_SCOPES + 1)], "too many scopes"),
        ([3], "not a string"),
    ],
)
def test_validate_scopes_rejects(bad: list[str], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        validate_scopes(bad)


def test_validate_scopes_rejects_a_bare_string() -> None:
    with pytest.raises(ValueError, match="not a single string"):
        validate_scopes("threads:read")


def test_required_scopes_cannot_be_presets() -> None:
    assert validate_required("Threads:Read:Own") == "threads:read:own"
    with pytest.raises(ValueError, match="preset 'all'"):
        validate_required("all")


@pytest.mark.parametrize(
    ("granted", "required", "owner_match", "expected"),
    [
        ({"threads:read"}, "threads:read", False, True),
        ({"threads:read"}, "threads:list", False, False),
        ({"threads:read"}, "messages:read", False, False),
        ({"threads:*"}, "threads:delete", False, True),
        ({"threads:*"}, "messages:delete", False, False),
        ({"*:read"}, "anything:read", False, True),
        ({"*:read"}, "anything:update", False, False),
        ({"*"}, "users:admin", False, True),
        ({"*:*"}, "users:admin", False, True),
        # :own grants need the rule's owner binding to agree
        ({"threads:read:own"}, "threads:read", False, False),
        ({"threads:read:own"}, "threads:read", True, True),
        ({"threads:*:own"}, "threads:update", True, True),
        ({"*:*:own"}, "x:delete", True, True),
        ({"*:*:own"}, "x:delete", False, False),
        # a required :own scope is satisfied by the :own grant or the plain one
        ({"tokens:read:own"}, "tokens:read:own", False, True),
        ({"tokens:read"}, "tokens:read:own", False, True),
        ({"tokens:write:own"}, "tokens:read:own", False, False),
        # only wildcards and presets expand: admin and write are literal actions
        ({"tokens:admin"}, "tokens:read:own", False, False),
        ({"tokens:admin"}, "tokens:write", False, False),
        ({"tokens:admin"}, "tokens:admin", False, True),
        ({"threads:write"}, "threads:create", False, False),
        # presets
        ({"all"}, "users:admin", False, True),
        ({"read-only"}, "threads:read", False, True),
        ({"read-only"}, "threads:list", False, True),
        ({"read-only"}, "threads:update", False, False),
        ({"restricted"}, "threads:read", False, False),
        ({"restricted"}, "threads:read", True, True),
        ({"restricted"}, "threads:list", True, True),
        ({"restricted"}, "threads:delete", True, False),
        # wildcard requirements need a grant at least as broad
        ({"threads:read"}, "threads:*", False, False),
        ({"threads:*"}, "threads:*", False, True),
        ({"threads:*"}, "*", False, False),
        ({"*:read"}, "*:read", False, True),
        ({"*:read"}, "*", False, False),
        # garbage grants nothing
        ({"not a scope", "threads"}, "threads:read", False, False),
        (set(), "threads:read", True, False),
    ],
)
def test_grants(granted: set[str], required: str, owner_match: bool, expected: bool) -> None:
    assert grants(frozenset(granted), required, owner_match=owner_match) is expected
    assert ScopeSet.from_scopes(granted).grants(required, owner_match) is expected


def test_presets_are_documented_values() -> None:
    assert PRESETS == {
        "all": ("*",),
        "read-only": ("*:read", "*:list"),
        "restricted": ("*:read:own", "*:list:own"),
    }


# --- property: ScopeSet agrees with a direct reading of the rules ----------------------

_RESOURCES = ["threads", "messages", "tokens", "*"]
_ACTIONS = [*sorted(ACTIONS)[:5], "admin", "*"]


def _reference(granted: set[str], required: str, owner_match: bool) -> bool:
    """The matching rules written as plainly as possible (the spec, not the fast form)."""
    parts = required.split(":")
    if parts[-1] == "own":
        parts, owner_match = parts[:-1], True
    req = ["*", "*"] if parts == ["*"] else parts
    expanded = [s for g in granted for s in PRESETS.get(g, (g,))]
    for scope in expanded:
        gparts = scope.split(":")
        own = gparts[-1] == "own" and len(gparts) == 3
        if own:
            gparts = gparts[:-1]
        if gparts == ["*"]:
            gparts = ["*", "*"]
        if own and not owner_match:
            continue
        if all(g == "*" or g == r for g, r in zip(gparts, req, strict=True)):
            return True
    return False


_scope = st.builds(
    lambda r, a, own: f"{r}:{a}{':own' if own else ''}",
    st.sampled_from(_RESOURCES),
    st.sampled_from(_ACTIONS),
    st.booleans(),
)
_granted = st.sets(_scope | st.sampled_from(["*", *PRESETS]), max_size=6)


@settings(max_examples=500, deadline=None)
@given(granted=_granted, required=_scope | st.just("*"), owner_match=st.booleans())
def test_scopeset_matches_reference(granted: set[str], required: str, owner_match: bool) -> None:
    expected = _reference(granted, required, owner_match)
    assert ScopeSet.from_scopes(granted).grants(required, owner_match) is expected


@settings(max_examples=300, deadline=None)
@given(granted=_granted, extra=_granted, required=_scope, owner_match=st.booleans())
def test_more_scopes_never_grant_less(
    granted: set[str], extra: set[str], required: str, owner_match: bool
) -> None:
    small = ScopeSet.from_scopes(granted)
    big = ScopeSet.from_scopes(granted | extra)
    if small.grants(required, owner_match):
        assert big.grants(required, owner_match)
    if small.grants(required, False):
        assert small.grants(required, True)


@settings(max_examples=300, deadline=None)
@given(scopes=st.lists(_scope | st.sampled_from(["*", "ALL", "Read-Only"]), max_size=10))
def test_validate_scopes_is_idempotent(scopes: list[str]) -> None:
    once = validate_scopes(scopes)
    assert validate_scopes(once) == once
    assert list(once) == sorted(set(once))
    assert all(s == s.lower() for s in once)
