"""Security review of the fast route (issue 16): differential tests against the full route.

For every method and raw path, ``Policy.route`` must return exactly what the route did
before the fast route existed — same rule, params, denial reason, public flag and
exact-case twin (``also``); any difference is a potential authorization bypass. Two
oracles:

* :func:`_reference_route`: the pre-issue-16 engine, written out here (``Policy._route``
  and ``Policy._route_path`` with the old inline ``RouteTable.match`` walk, and the old
  "walk the exact-case trie whenever the path has an upper-case letter" test). It reads
  only the frozen tries of the policy under test, so it cannot share a memo with it.
* :class:`_FullOnly`: the current engine with ``_route_plain`` disabled, built from the
  same spec (same ``RuleSpec`` objects), i.e. today's ``_route_normalized`` alone.

The policy under test is long-lived (module-level), so its route memo and its directory
memo (``Policy._dirs``) are warmed — and cleared at 4096 entries — by earlier examples,
with other methods and other spellings: a stale or cross-method directory walk would
show up as a difference.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.policy_bench import generate_policy
from patgate.policies import engine, routes
from patgate.policies.engine import (
    DEFAULT_RULE,
    EXPLICIT_METHODS,
    Policy,
    RouteMatch,
    load_policy,
    parse_policy,
)
from patgate.policies.identity import Caller
from patgate.policies.paths import MAX_PATH_LENGTH, BadPath, is_plain, is_plain_segment, normalize
from patgate.policies.schema import RuleSpec

_EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


# --- the oracles ---------------------------------------------------------------------


class _FullOnly(Policy):
    """Today's engine without the fast route."""

    __slots__ = ()

    def _route_plain(self, method: str, path: str) -> RouteMatch | None:
        return None


def _reference_match(
    table: routes.RouteTable[Any], method: str, segments: Sequence[str], values: Sequence[str]
) -> tuple[Any, dict[str, str]] | None:
    """``RouteTable.match`` as it was before issue 16 (one inline walk)."""
    lit, param, rest, here = table._root
    bound: list[str] = []
    hit = None
    fallback = None
    fallback_len = 0
    search = False
    for i, seg in enumerate(segments):
        child = lit.get(seg)
        if child is not None and param is not None:
            search = True
        else:
            if rest is not None and (
                (found := rest.get(method) or rest.get(routes._ANY_METHOD)) is not None
            ):
                fallback, fallback_len, search = found, len(bound), False
            if child is None:
                if param is None or not seg:
                    break
                child = param
                bound.append(values[i])
        lit, param, rest, here = child
    else:
        if here is not None:
            hit = here.get(method) or here.get(routes._ANY_METHOD)
        if hit is None and rest is not None:
            hit = rest.get(method) or rest.get(routes._ANY_METHOD)
    if hit is None:
        if search:
            positions: list[int] = []
            hit = routes._walk(table._root, segments, 0, len(segments), method, positions)
            if hit is None:
                return None
            bound = [values[i] for i in positions]
        elif fallback is None:
            return None
        else:
            hit = fallback
            del bound[fallback_len:]
    target, binds, _ = hit
    return target, {name: v for name, v in zip(binds, bound, strict=True) if name}


def _reference_route(policy: Policy, method: str, raw_path: str) -> RouteMatch:
    """``Policy._route`` + ``_route_path`` as they were before issue 16."""
    if not method.isupper():
        method = method.upper()
    if method in EXPLICIT_METHODS and method not in policy._explicit:
        detail = engine._METHOD_DETAIL.format(method)
        return RouteMatch(False, "method_not_allowed", "", {}, "", None, detail, None)
    match = _reference_route_path(policy, method, raw_path)
    if (
        method in EXPLICIT_METHODS
        and match.denied != "bad_path"
        and not engine._names(match, method)
    ):
        detail = engine._METHOD_DETAIL.format(method)
        return match._replace(denied="method_not_allowed", public=False, detail=detail)
    return match


def _reference_route_path(policy: Policy, method: str, raw_path: str) -> RouteMatch:
    norm = normalize(raw_path)
    if isinstance(norm, BadPath):
        return RouteMatch(False, "bad_path", "", {}, "", None, norm.detail, None)
    hit = _reference_match(policy._table, method, norm.segments, norm.values)
    if norm.raw_segments is not None:
        raw = norm.raw_segments
        lowered = "/".join(raw).lower().split("/") if raw else []
        raw_hit = _reference_match(policy._table, method, lowered, raw)
        if not engine._same(hit, raw_hit):
            detail = "path is ambiguous (its raw and normalized forms match differently)"
            return RouteMatch(False, "bad_path", "", {}, norm.path, None, detail, None)
    match = policy._match(hit, norm.path)
    segments, values = norm.segments, norm.values
    if policy._mixed_case or (segments is not values and segments != values):
        exact_hit = _reference_match(policy._exact, method, values, values)
        if not engine._same(hit, exact_hit):
            also = policy._match(exact_hit, norm.path)
            if also.denied is not None:
                detail = "its exact-case spelling matches no rule"
                return match._replace(denied=also.denied, public=False, detail=detail)
            return match._replace(public=match.public and also.public, also=also)
    return match


def _fields(m: RouteMatch | None) -> Any:
    """Everything a caller can read from a match (``spec`` by identity), recursively."""
    if m is None:
        return None
    params: Mapping[str, str] = m.params
    return (
        m.public,
        m.denied,
        m.rule,
        dict(params),
        m.path,
        id(m.spec),
        m.spec,
        m.detail,
        _fields(m.also),
    )


_CALLERS = (
    Caller("u1", frozenset({"*"})),
    Caller("u1", frozenset({"*"}), frozenset({"w1"})),
    Caller("u1", frozenset({"read-only"})),
    Caller("u1", frozenset({"restricted"}), frozenset()),
    Caller("u2", frozenset({"threads:read", "profile:read:own", "tokens:read:own"})),
    Caller("u1", frozenset()),
)


class _Case:
    """A long-lived policy under test and its two oracles (same ``RuleSpec`` objects)."""

    def __init__(self, name: str, policy: Policy) -> None:
        self.name = name
        self.policy = policy
        self.full = _FullOnly(policy.spec)
        literals: set[str] = set()
        for rule in policy.spec.rules:
            for template in rule.templates:
                literals.update(s for s in template.exact if s not in ("{}", "*", "**"))
        self.literals = sorted(literals) or ["x"]

    def check(self, method: str, raw_path: str) -> RouteMatch:
        expected = _reference_route(self.policy, method, raw_path)
        want = _fields(expected)
        # the shortcut on its own, where it answers (the caller gives it the path without
        # its query, upper-case methods only)
        path = raw_path.partition("?")[0]
        if path[:1] == "/" and len(path) <= MAX_PATH_LENGTH and method.isupper():
            plain = self.policy._route_plain(method, path)
            if plain is not None and method not in EXPLICIT_METHODS:
                assert _fields(plain) == want, ("_route_plain", self.name, method, raw_path)
        unmemoized = self.policy._route(method, raw_path)
        assert _fields(unmemoized) == want, ("_route", self.name, method, raw_path)
        got = self.policy.route(method, raw_path)
        assert _fields(got) == want, ("route", self.name, method, raw_path, got, expected)
        again = self.policy.route(method, raw_path)  # the memoized answer
        assert _fields(again) == want, ("route memo", self.name, method, raw_path)
        full = self.full.route(method, raw_path)
        assert _fields(full) == want, ("full route", self.name, method, raw_path)
        for caller in _CALLERS:  # and so every decision
            headers = {"x-workspace": "w1"}
            assert self.policy.authorize(got, caller, headers) == self.full.authorize(
                full, caller, headers
            ), (self.name, method, raw_path, caller)
        return got


# --- the policies --------------------------------------------------------------------

# Lower-case literals only (the fast route applies): protected routes nested under
# public prefixes and parameters, so that a walk that lands one node off is a bypass.
_NESTED = """
default = "deny"

[[rules]]
name = "public-prefix"
path = "/public/**"
public = true

[[rules]]
name = "public-admin"
path = "/public/admin/**"
scopes = ["admin:admin"]

[[rules]]
name = "api-item"
path = "/api/{v}/{item}"
public = true

[[rules]]
name = "api-admin"
path = "/api/{v}/admin"
scopes = ["admin:admin"]

[[rules]]
name = "api-admin-deep"
methods = ["GET"]
path = "/api/v1/admin/**"
scopes = ["admin:read"]

[[rules]]
name = "api-users"
path = "/api/{v}/users/{user}/**"
scopes = ["profile:read:own"]
own = "user"

[[rules]]
name = "a-star"
path = "/a/*/c"
public = true

[[rules]]
name = "a-b"
methods = ["POST"]
path = "/a/b/**"
scopes = ["b:create"]

[[rules]]
name = "a-b-d"
path = "/a/b/d/{y}"
scopes = ["b:read"]

[[rules]]
name = "ws"
methods = ["GET", "DELETE"]
path = "/w/{ws}/threads/{id}"
scopes = ["threads:read"]
workspace_param = "ws"

[[rules]]
name = "ws-header"
methods = ["PUT"]
path = "/w/{ws}/threads/{id}"
scopes = ["threads:update"]
workspace_header = "x-workspace"

[[rules]]
name = "dotted"
path = "/v1.0/a:b/x@y/~me/{id}"
scopes = ["dot:read"]

[[rules]]
name = "debug"
methods = ["TRACE", "GET"]
path = "/debug/{id}"
scopes = ["debug:read"]

[[rules]]
name = "tunnel"
methods = ["CONNECT"]
path = "/tunnel/**"
scopes = ["tunnel:admin"]

[[rules]]
name = "catch-all"
methods = ["GET", "HEAD"]
path = "/**"
public = true
"""

# Mixed-case literals: the fast route must step aside entirely.
_MIXED = """
default = "authenticated"

[[rules]]
name = "admin"
path = "/Admin/**"
scopes = ["admin:admin"]

[[rules]]
name = "api"
path = "/API/{v}/items/{id}"
public = true

[[rules]]
name = "api-admin"
path = "/api/{v}/items/admin"
scopes = ["admin:admin"]

[[rules]]
name = "catch-all"
path = "/**"
public = true
"""

# Lower-case literals, a public catch-all and a default of "authenticated": with a
# case-sensitive upstream /ADMIN is not /admin, so case decides which rule must allow.
_CASE = """
default = "authenticated"

[[rules]]
name = "admin"
path = "/admin/**"
scopes = ["admin:admin"]

[[rules]]
name = "admin-users"
path = "/admin/users/{id}"
scopes = ["users:admin"]

[[rules]]
name = "x-admin"
path = "/x/{id}/admin"
scopes = ["admin:admin"]

[[rules]]
name = "x-any"
path = "/x/{id}/{y}"
public = true

[[rules]]
name = "files"
methods = ["GET"]
path = "/files/*"
public = true

[[rules]]
name = "files-secret"
path = "/files/secret"
scopes = ["files:admin"]

[[rules]]
name = "catch-all"
path = "/**"
public = true
"""

# No catch-all, default deny, param/literal siblings at several depths: full searches.
_SEARCH = """
default = "deny"

[[rules]]
name = "p1"
path = "/{a}/x/{b}"
public = true

[[rules]]
name = "l1"
path = "/k/x/**"
scopes = ["k:read"]

[[rules]]
name = "l2"
path = "/k/{b}/y"
scopes = ["k:update"]

[[rules]]
name = "l3"
methods = ["GET"]
path = "/k/x/y/z"
scopes = ["k:list"]

[[rules]]
name = "root"
path = "/"
public = true

[[rules]]
name = "one"
methods = ["POST"]
path = "/{one}"
scopes = ["one:create"]
"""


def _cases() -> dict[str, _Case]:
    policies = {
        "bench200": parse_policy(generate_policy(200), "bench.toml"),
        "nested": parse_policy(_NESTED, "nested.toml"),
        "mixed": parse_policy(_MIXED, "mixed.toml"),
        "case": parse_policy(_CASE, "case.toml"),
        "search": parse_policy(_SEARCH, "search.toml"),
    }
    for path in sorted(_EXAMPLES.glob("*.toml")):
        policies[path.stem] = load_policy(path)
    return {name: _Case(name, policy) for name, policy in policies.items()}


CASES = _cases()


def test_the_cases_cover_both_kinds_of_policy() -> None:
    assert CASES["mixed"].policy._mixed_case
    for name in ("bench200", "nested", "case", "search", "api", "management"):
        assert not CASES[name].policy._mixed_case, name


# --- adversarial paths ---------------------------------------------------------------

_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,=:@"
_NASTY = [
    *".",
    "..",
    "",
    "%2e",
    "%2E%2e",
    ".%2e",
    "%2F",
    "%2f",
    "a%2fb",
    "%41",
    "%61dmin",
    "%41DMIN",
    "%7E",
    "%7e",
    "%C3%A9",
    "%c3%a9",
    "%C0%AE",
    "%25",
    "%2541",
    "%",
    "%g1",
    ";",
    "..;",
    "a;b",
    "admin;x",
    "%3B",
    "\\",
    "%5C",
    "a\\b",
    "#",
    "#x",
    "\xe9",
    "\u0130",
    "\u212a",
    "\x00",
    "\x7f",
    "\t",
    " ",
    "%20",
    "a%20",
    "a.",
    ".a",
    "...",
    "a..b",
    "~",
    "{x}",
    "{}",
    "*",
    "**",
    "?",
    '"',
    "<",
    "[1]",
    "^",
    "`",
    "|",
    "admin.",
    "ADMIN.",
    "v1.0",
    "V1.0",
    "a:b",
    "A:B",
    "x@y",
    "X@Y",
    "~me",
    "~ME",
    "w1",
    "W1",
    "me",
]


def _case_flip(draw: st.DrawFn, word: str) -> str:
    how = draw(st.sampled_from(["same", "lower", "upper", "title", "flip"]))
    if how == "lower":
        return word.lower()
    if how == "upper":
        return word.upper()
    if how == "title":
        return word.title()
    if how == "flip":
        flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
        return "".join(c.swapcase() if f else c for c, f in zip(word, flips, strict=True))
    return word


@st.composite
def _segment(draw: st.DrawFn, literals: Sequence[str], clean: bool) -> str:
    """A literal of the policy (as written, or in another case), a plain id, or — unless
    ``clean`` (a path the fast route should answer) — something nasty."""
    kind = draw(st.integers(0, 6 if clean else 9))
    if kind <= 2:
        return draw(st.sampled_from(literals))
    if kind <= 4:
        return _case_flip(draw, draw(st.sampled_from(literals)))
    if kind <= 6:
        return draw(st.text(_PCHARS, min_size=1, max_size=6))
    if kind == 7:
        return draw(st.sampled_from(_NASTY))
    if kind == 8:  # a literal with something glued on
        word = _case_flip(draw, draw(st.sampled_from(literals)))
        glue = draw(st.sampled_from(_NASTY))
        return word + glue if draw(st.booleans()) else glue + word
    return draw(st.text(max_size=4))  # anything at all


_METHODS = st.sampled_from(
    [
        *["GET"] * 4,
        *["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] * 2,
        "TRACE",
        "CONNECT",
        "get",
        "Get",
        "post",
        "trace",
        "Connect",
        "PROPFIND",
        "MKCOL",
        "",
        "G ET",
        "\xdf",
    ]
)


@st.composite
def _requests(draw: st.DrawFn, literals: Sequence[str]) -> list[tuple[str, str]]:
    """A few requests sharing a directory (so the directory memo is reused), under
    several methods and with several last segments, plus decorations; about half of them
    plain paths, which the fast route answers."""
    clean = draw(st.booleans())
    directory = draw(st.lists(_segment(literals, clean), max_size=5))
    prefixes = ["/"] if clean else ["/", "/", "/", "/", "//", "", "\\", "/./"]
    prefix = draw(st.sampled_from(prefixes))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        last = draw(_segment(literals, clean and draw(st.integers(0, 4)) > 0))
        path = prefix + "/".join([*directory, last])
        if draw(st.integers(0, 5)) == 0:
            path += "/"
        if draw(st.integers(0, 4)) == 0:
            path += draw(st.sampled_from(["?", "?a=1", "?/admin", "?x#y", "??", "?%2F"]))
        out.append((draw(_METHODS), path))
    return out


_NAMES = sorted(CASES)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fast_route_equals_reference_route(data: st.DataObject) -> None:
    case = CASES[data.draw(st.sampled_from(_NAMES))]
    for method, path in data.draw(_requests(case.literals)):
        case.check(method, path)


# Random small policies, literals lower case or not, requests spelled from their literals.
_TEMPLATE = st.builds(
    lambda segs, rest: "/" + "/".join(segs + (["**"] if rest else [])),
    st.lists(
        st.sampled_from(["a", "b", "admin", "Ab", "v1.0", "x:y", "{x}", "{y}", "*"]),
        max_size=4,
    ),
    st.booleans(),
).filter(lambda t: t.count("{x}") <= 1 and t.count("{y}") <= 1)


def _policy_text(default: str, rules: list[tuple[str, str | None, bool]]) -> str:
    lines = [f'default = "{default}"']
    for i, (path, method, public) in enumerate(rules):
        methods = f'["{method}"]' if method else '"*"'
        lines.append(
            f'[[rules]]\nname = "r{i}"\npath = "{path}"\nmethods = {methods}\n'
            + ("public = true\n" if public else 'scopes = ["x:read"]\n')
        )
    return "\n".join(lines)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    default=st.sampled_from(["deny", "authenticated"]),
    rules=st.lists(
        st.tuples(
            _TEMPLATE, st.sampled_from([None, "GET", "POST", "TRACE", "HEAD"]), st.booleans()
        ),
        min_size=1,
        max_size=7,
    ),
    data=st.data(),
)
def test_fast_route_equals_reference_route_on_random_policies(
    default: str, rules: list[tuple[str, str | None, bool]], data: st.DataObject
) -> None:
    try:
        policy = parse_policy(_policy_text(default, rules), "random.toml")
    except ValueError:
        return  # overlapping rules: a load error
    case = _Case("random", policy)
    literals = [*case.literals, "a", "b", "c", "admin"]
    for _ in range(3):
        for method, path in data.draw(_requests(literals)):
            case.check(method, path)


# --- targeted regressions ------------------------------------------------------------


def _assert_all(case: _Case, requests: Sequence[tuple[str, str]]) -> None:
    for method, path in requests:
        case.check(method, path)


@pytest.mark.parametrize("name", ["nested", "case", "bench200", "api", "management"])
def test_case_tricks(name: str) -> None:
    case = CASES[name]
    paths = []
    for literal in case.literals[:40]:
        for spelled in {literal, literal.upper(), literal.title(), literal.swapcase()}:
            paths += [f"/{spelled}", f"/{spelled}/x", f"/x/{spelled}", f"/{spelled}/{spelled}"]
            paths += [f"/api/v1/{spelled}", f"/w/W1/threads/{spelled}", f"/v1/{spelled}/x"]
    for method in ("GET", "HEAD", "POST", "DELETE", "TRACE", "get"):
        _assert_all(case, [(method, p) for p in paths])


def test_case_sensitive_upstream_cannot_dodge_the_admin_rule() -> None:
    case = CASES["case"]
    for path in ["/ADMIN/x", "/admin/USERS/u1", "/Admin/users/u1", "/x/1/ADMIN", "/FILES/secret"]:
        match = case.check("GET", path)
        # the exact spelling reaches the public catch-all; the admin rule must allow too
        assert match.public is False, path
    # warm the directory memo with a lower-case directory, then swap case in the last step
    for path in ["/x/1/y", "/x/1/ADMIN", "/x/1/Admin", "/files/a", "/files/SECRET"]:
        assert not case.check("GET", path).public or path in ("/x/1/y", "/files/a")


def test_dot_escape_and_separator_spellings() -> None:
    case = CASES["nested"]
    tails = ["admin", "ADMIN", "admin/x", "x"]
    spellings = [
        "/public/{t}",
        "/public/../public/admin/{t}",
        "/public/./admin/{t}",
        "/public//admin/{t}",
        "/public/admin/../{t}",
        "/public/%61dmin/{t}",
        "/public/admin%2F{t}",
        "/public/admin;x/{t}",
        "/public/..;/admin/{t}",
        "/public/admin\\{t}",
        "/public/admin/{t}#frag",
        "/public/admin/{t}?q=1",
        "/public/admin./{t}",
        "/public/.admin/{t}",
        "/api/v1/{t}",
        "/api/v1/{t}/",
        "/api/v1//{t}",
        "/api/V1/{t}",
        "/api/v1/x/../{t}",
        "/api/v1/%2e%2e/{t}",
        "/api/v2/users/me/../alice/{t}",
        "/a/b/{t}",
        "/a/B/{t}",
        "/a/x/{t}",
        "/a/b/d/{t}",
        "/w/W1/threads/{t}",
        "/w/w1/THREADS/{t}",
        "/v1.0/a:b/x@y/~me/{t}",
        "/V1.0/A:B/X@Y/~ME/{t}",
        "/debug/{t}",
        "/tunnel/{t}",
        "\\public\\admin\\{t}",
        "public/admin/{t}",
        "",
        "/",
        "//",
        "/?",
        "/#",
    ]
    requests = [
        (m, s.replace("{t}", t))
        for s in spellings
        for t in tails
        for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT", "OPTIONS")
    ]
    _assert_all(case, requests)


def test_methods_outside_the_ordinary_set() -> None:
    case = CASES["nested"]
    methods = ["TRACE", "trace", "Trace", "CONNECT", "connect", "PROPFIND", "get", "hEAD"]
    methods += ["", "G\u0130T", "\xdf", "GET ", "M-SEARCH"]
    paths = ["/debug/1", "/tunnel/x", "/tunnel", "/public/x", "/api/v1/admin", "/x", "/"]
    for method in methods:
        for path in paths:
            case.check(method, path)
    # TRACE on the rule that names it goes through the fast route and stays allowed
    assert case.policy.route("TRACE", "/debug/1").denied is None
    assert case.policy.route("TRACE", "/public/x").denied == "method_not_allowed"
    assert case.policy.route("CONNECT", "/tunnel/x").denied is None


def test_directory_memo_is_per_method() -> None:
    policy = parse_policy(_NESTED, "nested.toml")
    case = _Case("nested-fresh", policy)
    # the same directory first walked for POST (a-b prefix), then for GET (catch-all)
    for method in ("POST", "GET", "DELETE", "HEAD", "PUT", "POST", "GET"):
        for last in ("x", "d", "D", "1"):
            case.check(method, f"/a/b/{last}")
            case.check(method, f"/a/b/d/{last}")
    assert {m for m, _ in policy._dirs} >= {"POST", "GET", "DELETE"}


def test_directory_memo_cleared_when_full() -> None:
    policy = parse_policy(_NESTED, "nested.toml")
    case = _Case("nested-fresh", policy)
    sizes = []
    for n in range(engine._CACHE_MAX + 300):
        method = ("GET", "POST", "PUT")[n % 3]
        directory = f"/api/v{n}" if n % 2 else f"/w/ws{n}/threads"
        case.check(method, f"{directory}/admin")
        case.check(method, f"{directory}/i{n}")
        sizes.append(len(policy._dirs))
    assert max(sizes) == engine._CACHE_MAX
    assert min(sizes[engine._CACHE_MAX :]) < engine._CACHE_MAX  # it was cleared
    # after the clear, earlier directories are walked again and still answer alike
    for n in range(0, 200):
        case.check("GET", f"/api/v{n}/admin")
        case.check("POST", f"/w/ws{n}/threads/t")


def test_length_cut_offs() -> None:
    case = CASES["nested"]
    limit = engine._CACHE_PATH_MAX
    requests = []
    for extra in (-2, -1, 0, 1, 2):
        word = "p" * (limit + extra)
        for d in (f"/public/{word}", f"/api/{word}", f"/{word}", f"/public/admin/{word}"):
            for last in ("x", "admin", "ADMIN"):
                requests += [("GET", f"{d}/{last}"), ("POST", f"{d}/{last}")]
            requests.append(("GET", d))
    for total in (MAX_PATH_LENGTH - 1, MAX_PATH_LENGTH, MAX_PATH_LENGTH + 1):
        for head in ("/public/admin/", "/api/v1/", "/"):
            path = head + "a" * (total - len(head))
            assert len(path) == total
            requests += [("GET", path), ("GET", path + "?q"), ("GET", path[:-1] + "/")]
            requests.append(("GET", head + "a/" * ((total - len(head)) // 2)))
    _assert_all(case, requests)


def test_default_authenticated_and_examples() -> None:
    for name in ("api", "management", "allow-all", "bench200"):
        case = CASES[name]
        for literal in case.literals:
            for path in (f"/v1/{literal}", f"/v1/workspaces/w1/{literal}/T1"):
                for method in ("GET", "POST", "PATCH", "TRACE"):
                    case.check(method, path)


def test_plain_segment_claims() -> None:
    # the junction argument of is_plain_segment, exhaustively on short strings
    alphabet = ["a", "A", ".", "/", "%", ";", "~", "#", " ", "\\", ":", "{"]
    dirs = [""]
    for _ in range(3):
        dirs = [d + c for d in dirs for c in alphabet] + [""]
    for d in {"/" + d for d in dirs} | {""}:
        plain_dir = d == "" or (d[-1] != "/" and is_plain(d))
        for seg in ("a", "A.b", "a.", ".a", "~", "a:b", "a;b", "a%b", "a b", "{x}"):
            if plain_dir and is_plain_segment(seg):
                assert is_plain(d + "/" + seg), (d, seg)
                norm = normalize(d + "/" + seg)
                assert not isinstance(norm, BadPath)
                assert norm.raw_segments is None
                assert norm.values == ((*d[1:].split("/"), seg) if d else (seg,))


def test_rule_spec_identity_is_shared_between_oracles() -> None:
    case = CASES["nested"]
    got = case.policy.route("GET", "/api/v1/x")
    full = case.full.route("GET", "/api/v1/x")
    assert isinstance(got.spec, RuleSpec)
    assert got.spec is full.spec
    assert case.policy.route("GET", "/nothing-here/x").rule != DEFAULT_RULE  # catch-all


def test_the_fast_route_really_answers() -> None:
    """The differential tests are not vacuous: plain paths under plain directories are
    answered by the shortcut (and the same as the reference), fresh ids included."""
    case = _Case("bench-fresh", parse_policy(generate_policy(200), "bench.toml"))
    answered = 0
    for n in range(50):
        for method, path in [
            ("GET", f"/v1/svc3/workspaces/w1/threads/t{n}"),
            ("PATCH", f"/v1/svc3/workspaces/w1/files/F-{n}"),
            ("GET", f"/v1/svc7/users/u{n}/profile"),
            ("GET", f"/docs/page{n}"),
            ("GET", f"/admin/x{n}"),
            ("GET", f"/elsewhere/e{n}"),
            ("DELETE", f"/v1/svc1/workspaces/w1/messages/m{n}"),
        ]:
            expected = _fields(_reference_route(case.policy, method, path))
            plain = case.policy._route_plain(method, path)
            if plain is not None:
                answered += 1
                assert _fields(plain) == expected, (method, path)
            case.check(method, path)
    assert answered == 7 * 50


def _exhaustive(case: _Case, alphabet: Sequence[str], depth: int) -> int:
    paths = [""]
    level = [""]
    for _ in range(depth):
        level = [p + "/" + a for p in level for a in alphabet]
        paths += level
    count = 0
    for method in ("GET", "POST", "HEAD", "TRACE"):
        for path in paths:
            for spelled in (path or "/", path + "/"):
                want = _fields(_reference_route(case.policy, method, spelled))
                assert _fields(case.policy.route(method, spelled)) == want, (method, spelled)
                count += 1
    return count


def test_exhaustive_short_paths() -> None:
    """Every path of up to three segments over a small alphabet: the policy's literals
    in two cases, ids, an empty and a dot segment."""
    search = _Case("search-fresh", parse_policy(_SEARCH, "search.toml"))
    assert _exhaustive(search, ["k", "K", "x", "X", "y", "z", "q", "", "."], 4) > 50000
    guarded = _Case("case-fresh", parse_policy(_CASE, "case.toml"))
    alphabet = ["admin", "ADMIN", "users", "Users", "x", "files", "secret", "SECRET", "1", ""]
    assert _exhaustive(guarded, alphabet, 3) > 5000
