"""The grant algebra behind issue 9, proved over a small universe by hypothesis.

* ``intersect(T, B)`` grants a request exactly when both ``T`` and ``B`` grant it, so a
  token's effective scopes are never more than its owner may grant, and never less than
  what both allow;
* ``ungranted(S, B) == []`` exactly when everything ``S`` grants, ``B`` grants too, so the
  write-time check refuses precisely the escalations;
* ``is_admin_only`` flags every scope that reaches ``tokens:admin`` or ``users:admin``.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.policies.scopes import ScopeSet, intersect, is_admin_only, ungranted

_RESOURCES = ["threads", "tokens", "users", "*"]
_ACTIONS = ["read", "list", "admin", "*"]
_PRESETS = ["all", "read-only", "restricted", "*"]


def _scope(res: str, act: str, own: bool) -> str:
    return f"{res}:{act}" + (":own" if own else "")


_scopes = st.one_of(
    st.builds(_scope, st.sampled_from(_RESOURCES), st.sampled_from(_ACTIONS), st.booleans()),
    st.sampled_from(_PRESETS),
)
_sets = st.lists(_scopes, max_size=4)
#: every concrete request: (resource:action, owner_match). "other" and "share" stand for
#: the resources and actions no generated scope names (the real universe is open), so a
#: wildcard is only "covered" by a wildcard.
_REQUESTS = [
    (f"{r}:{a}", m)
    for r, a, m in itertools.product(
        [*_RESOURCES[:-1], "other"], [*_ACTIONS[:-1], "share"], (False, True)
    )
]


def _grants(scopes: list[str] | tuple[str, ...], request: tuple[str, bool]) -> bool:
    return ScopeSet.from_scopes(scopes).grants(request[0], request[1])


@settings(max_examples=500)
@given(_sets, _sets)
def test_intersection_grants_exactly_what_both_grant(token: list[str], bound: list[str]) -> None:
    effective = intersect(token, bound)
    for request in _REQUESTS:
        assert _grants(effective, request) == (
            _grants(token, request) and _grants(bound, request)
        ), (token, bound, effective, request)


@settings(max_examples=500)
@given(_sets, _sets)
def test_ungranted_is_empty_exactly_for_subsets(wanted: list[str], bound: list[str]) -> None:
    subset = all(_grants(bound, request) for request in _REQUESTS if _grants(wanted, request))
    assert (ungranted(wanted, bound) == []) == subset, (wanted, bound)


@pytest.mark.parametrize(
    ("scope", "admin_only"),
    [
        ("*", True),
        ("all", True),
        ("*:*", True),
        ("tokens:*", True),
        ("users:*", True),
        ("*:admin", True),
        ("tokens:admin", True),
        ("users:admin", True),
        ("tokens:admin:own", False),  # an :own grant never satisfies a plain requirement
        ("tokens:read:own", False),
        ("tokens:write:own", False),
        ("threads:*", False),
        ("read-only", False),
        ("restricted", False),
        ("*:read", False),
    ],
)
def test_admin_only_scopes(scope: str, admin_only: bool) -> None:
    assert is_admin_only(scope) is admin_only
