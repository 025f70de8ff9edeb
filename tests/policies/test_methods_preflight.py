"""TRACE/CONNECT refused unless a rule names them, and the ``preflight`` switch (issue 9)."""

from __future__ import annotations

from typing import cast

import pytest

from patgate.middleware.records import Identity
from patgate.policies.engine import EXPLICIT_METHODS, Policy, default_policy, parse_policy
from patgate.policies.errors import PolicyError

_BASE = """
version = 1
default = "{default}"
{preflight}

[[rules]]
name = "any-method"
methods = "*"
path = "/api/**"
scopes = ["api:read"]

[[rules]]
name = "public"
path = "/public"
public = true

[[rules]]
name = "debug-trace"
methods = ["TRACE"]
path = "/debug/{{x}}"
scopes = ["debug:read"]
"""


def _policy(default: str = "deny", preflight: str = "") -> Policy:
    return parse_policy(_BASE.format(default=default, preflight=preflight), "m.toml")


@pytest.mark.parametrize(
    ("method", "path", "denied", "rule"),
    [
        ("TRACE", "/api/x", "method_not_allowed", "any-method"),  # "*" does not count
        ("trace", "/api/x", "method_not_allowed", "any-method"),
        ("CONNECT", "/api/x", "method_not_allowed", ""),  # no rule names CONNECT
        ("CONNECT", "example.com:443", "method_not_allowed", ""),  # authority-form
        ("TRACE", "/public", "method_not_allowed", "public"),  # public rules too
        ("TRACE", "/nowhere", "method_not_allowed", "(default)"),
        ("TRACE", "/debug/1", None, "debug-trace"),  # named explicitly
        ("TRACE", "/debug/%2f", "bad_path", ""),  # a bad path stays a bad path
        ("GET", "/api/x", None, "any-method"),
        ("DELETE", "/api/x", None, "any-method"),
        ("OPTIONS", "/api/x", None, "any-method"),
    ],
)
def test_trace_and_connect_need_a_rule_naming_them(
    method: str, path: str, denied: str | None, rule: str
) -> None:
    match = _policy().route(method, path)
    assert match.denied == denied
    assert not (denied and match.public)
    if rule:
        assert match.rule == rule


@pytest.mark.parametrize("default", ["deny", "authenticated"])
def test_default_rule_does_not_allow_them(default: str) -> None:
    policy = _policy(default)
    for method in EXPLICIT_METHODS:
        assert policy.route(method, "/elsewhere").denied == "method_not_allowed"
    built_in = default_policy()
    assert built_in.route("TRACE", "/x").denied == "method_not_allowed"
    assert built_in.route("GET", "/x").denied is None


def test_authorize_reports_the_refusal() -> None:
    policy = _policy()
    # A denied match is decided without looking at the identity.
    decision = policy.authorize(policy.route("TRACE", "/api/x"), cast(Identity, None))
    assert (decision.allowed, decision.reason) == (False, "method_not_allowed")


_PREFLIGHT = [(b"origin", b"https://app.example"), (b"access-control-request-method", b"PUT")]


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        (_PREFLIGHT, True),
        ([*_PREFLIGHT, (b"access-control-request-headers", b"authorization")], True),
        (_PREFLIGHT[:1], False),  # no Access-Control-Request-Method: not a preflight
        (_PREFLIGHT[1:], False),  # no Origin
        ([*_PREFLIGHT, (b"authorization", b"Bearer x")], False),  # credentials: decide
        ([], False),
    ],
)
def test_allows_preflight(headers: list[tuple[bytes, bytes]], allowed: bool) -> None:
    assert _policy(preflight='preflight = "allow"').allows_preflight(headers) is allowed
    # The default, and "authenticate", never let one through.
    assert _policy().allows_preflight(headers) is False
    assert _policy(preflight='preflight = "authenticate"').allows_preflight(headers) is False
    assert default_policy().allows_preflight(headers) is False


@pytest.mark.parametrize("value", ['"yes"', "true", '"ALLOW"', "1"])
def test_preflight_value_is_validated(value: str) -> None:
    with pytest.raises(PolicyError, match=r"m.toml: field 'preflight'"):
        _policy(preflight=f"preflight = {value}")
