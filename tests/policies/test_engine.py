"""Routing and decisions of the compiled policy."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.middleware.records import Identity
from patgate.policies.engine import (
    DEFAULT_RULE,
    REASONS,
    Policy,
    PolicyDecision,
    RouteMatch,
    default_policy,
    parse_policy,
)
from patgate.policies.errors import PolicyError
from patgate.policies.scopes import ScopeSet

# A protected /admin and /api/admin behind weaker public rules: any spelling that lands
# on a public rule instead of the admin ones is a bypass.
GUARDED = """
default = "deny"

[[rules]]
name = "admin"
path = "/admin/**"
scopes = ["admin:admin"]

[[rules]]
name = "api-admin"
path = "/api/admin/**"
scopes = ["admin:admin"]

[[rules]]
name = "a-public"
path = "/a/**"
public = true

[[rules]]
name = "api-public"
path = "/api/**"
public = true

[[rules]]
name = "catch-all"
path = "/**"
public = true
"""


@pytest.fixture(scope="module")
def guarded() -> Policy:
    return parse_policy(GUARDED, "guarded.toml")


def ident(
    scopes: set[str] | frozenset[str] = frozenset(),
    *,
    owner: str = "u1",
    workspaces: set[str] | None = None,
) -> Identity:
    return Identity(
        token_id="tid",
        token_name="test",
        token_type="personal",
        owner_kind="user",
        owner_id=owner,
        org_id="o1",
        scopes=frozenset(scopes),
        workspaces=None if workspaces is None else frozenset(workspaces),
        expires_at=None,
    )


# The table from issue 3, plus neighbours. "deny" = bad_path; otherwise the rule that must
# match — never a public one.
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/admin", "admin"),
        ("/a/../admin", "deny"),
        ("/a/%2e%2e/admin", "deny"),
        ("/a/%2E%2E/admin", "deny"),
        ("/a/..%2fadmin", "deny"),
        ("//admin", "deny"),
        ("/a//../admin", "deny"),
        ("/a%2fadmin", "deny"),
        ("/ADMIN", "admin"),
        ("/Admin/Users", "admin"),
        ("/admin/", "admin"),
        ("/admin;x=y", "deny"),
        ("/..;/admin", "deny"),
        ("/api%2e/admin", "deny"),
        ("/api/./admin", "deny"),
        ("/API/Admin", "api-admin"),
        ("/admin\x00", "deny"),
        ("/admin%00", "deny"),
        ("/\x00/admin", "deny"),
        ("/%61dmin", "admin"),
        ("/adm%69n/x", "admin"),
        ("/%2e/admin", "deny"),
        ("/admin/..", "deny"),
        ("/admin/x/..", "admin"),
        ("/admin/./x", "admin"),
        ("/admin%2f", "deny"),
        ("/admin%5c..", "deny"),
        ("/admin\\..", "deny"),
        ("/admin%20", "deny"),
        ("/admin.", "deny"),
        ("/admin%3bx", "deny"),
        ("/%2561dmin", "deny"),
        ("/admin?q=/../public", "admin"),
        ("/admin#x", "deny"),
    ],
)
def test_no_spelling_reaches_a_weaker_rule(guarded: Policy, raw: str, expected: str) -> None:
    match = guarded.route("GET", raw)
    if expected == "deny":
        assert match.denied == "bad_path", match
        assert not match.public
        decision = guarded.authorize(match, ident({"*"}))
        assert (decision.allowed, decision.reason) == (False, "bad_path")
    else:
        assert match.denied is None, match
        assert match.rule == expected
        assert not match.public
        assert not guarded.authorize(match, ident()).allowed


def _interpretations(raw: str) -> set[tuple[str, ...]]:
    """How various upstreams might read a path: decode fully or not, backslash as a
    separator or not, strip ;params or not, merge slashes or not, resolve dots or not."""
    path = raw.split("?", 1)[0]
    out: set[tuple[str, ...]] = set()
    for decodes in (0, 1, 2):
        p = path
        for _ in range(decodes):
            p = unquote(p, encoding="latin-1")
        for backslash in (False, True):
            q = p.replace("\\", "/") if backslash else p
            for strip_params in (False, True):
                segs = q.split("/")[1:]
                if strip_params:
                    segs = [s.split(";", 1)[0] for s in segs]
                for merge in (False, True):
                    s2 = [s for s in segs if s] if merge else segs
                    for resolve in (False, True):
                        stack: list[str] = []
                        for s in s2:
                            if resolve and s == "..":
                                if stack:
                                    stack.pop()
                            elif not (resolve and s == "."):
                                stack.append(s)
                        out.add(tuple(x.lower().rstrip(". \x00") for x in stack))
    return out


_SEG = st.sampled_from(
    [
        "admin", "ADMIN", "a", "api", "x", ".", "..", "%2e", "%2E%2e", ".%2e", "",
        "%61dmin", "admin;x=y", "..;", "%2f", "%2F", "admin.", "%5c", "\\", "%00",
        "a%2fadmin", "%252e%252e", "%2561dmin", "~", "admin%20",
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(segs=st.lists(_SEG, min_size=1, max_size=5), trailing=st.booleans())
def test_property_protected_paths_never_public(
    guarded: Policy, segs: list[str], trailing: bool
) -> None:
    raw = "/" + "/".join(segs) + ("/" if trailing else "")
    match = guarded.route("GET", raw)
    views = _interpretations(raw)
    protected = any(v[:1] == ("admin",) or v[:2] == ("api", "admin") for v in views)
    if protected:
        assert match.denied is not None or match.rule in ("admin", "api-admin"), (raw, match)
    if match.denied is None and match.rule != DEFAULT_RULE:
        # whatever matched is what the canonical spelling matches
        canonical = guarded.route("GET", match.path)
        assert canonical.rule == match.rule
        assert dict(canonical.params) == dict(match.params)


# --- routing ---------------------------------------------------------------------------

ROUTES = """
[[rules]]
name = "thread-get"
methods = ["GET"]
path = "/w/{ws}/threads/{id}"
scopes = ["threads:read"]

[[rules]]
name = "thread-edit"
methods = ["PATCH", "delete"]
path = "/w/{ws}/threads/{id}"
scopes = ["threads:update"]

[[rules]]
name = "thread-literal"
methods = ["GET"]
path = "/w/{ws}/threads/new"
public = true

[[rules]]
name = "star"
path = "/files/*/raw/{name}"
scopes = ["files:read"]

[[rules]]
name = "prefix"
methods = ["GET"]
path = "/docs/**"
public = true

[[rules]]
name = "backtrack"
methods = ["GET"]
path = "/w/{ws}/threads/{id}/extra"
scopes = ["x:read"]

[[rules]]
name = "deep-literal"
methods = ["GET"]
path = "/w/special/threads/{id}/other"
scopes = ["y:read"]

[[rules]]
name = "root"
methods = ["GET"]
path = "/"
public = true

[[rules]]
name = "head-explicit"
methods = ["HEAD"]
path = "/h"
public = true

[[rules]]
name = "get-h"
methods = ["GET"]
path = "/h"
scopes = ["h:read"]

[[rules]]
name = "any-fallback"
path = "/w/**"
scopes = ["w:admin"]
"""


@pytest.fixture(scope="module")
def routes() -> Policy:
    return parse_policy(ROUTES, "routes.toml")


@pytest.mark.parametrize(
    ("method", "raw", "rule", "params"),
    [
        ("GET", "/w/acme/threads/t1", "thread-get", {"ws": "acme", "id": "t1"}),
        ("get", "/w/acme/threads/t1", "thread-get", {"ws": "acme", "id": "t1"}),
        ("HEAD", "/w/acme/threads/t1", "thread-get", {"ws": "acme", "id": "t1"}),  # GET⇒HEAD
        ("DELETE", "/w/Acme/threads/T1/", "thread-edit", {"ws": "Acme", "id": "T1"}),
        ("PUT", "/w/acme/threads/t1", "any-fallback", {}),  # method not covered → prefix
        ("GET", "/w/acme/threads/new", "thread-literal", {"ws": "acme"}),  # literal wins
        ("POST", "/w/acme/threads/new", "any-fallback", {}),
        ("GET", "/w/special/threads/9/extra", "backtrack", {"ws": "special", "id": "9"}),
        ("GET", "/w/special/threads/9/other", "deep-literal", {"id": "9"}),
        ("GET", "/files/a/raw/b.txt", "star", {"name": "b.txt"}),
        ("GET", "/files/a/raw/%41b", "star", {"name": "Ab"}),
        ("GET", "/docs", "prefix", {}),  # ** matches zero segments
        ("GET", "/docs/a/b/c", "prefix", {}),
        ("GET", "/", "root", {}),
        ("HEAD", "/h", "head-explicit", {}),  # explicit HEAD is not overridden by GET
        ("GET", "/h", "get-h", {}),
        ("GET", "/w//threads/t1", "any-fallback", {}),  # both views reach the prefix
    ],
)
def test_route(routes: Policy, method: str, raw: str, rule: str, params: dict[str, str]) -> None:
    match = routes.route(method, raw)
    assert match.denied is None
    assert match.rule == rule
    assert dict(match.params) == params
    assert routes.route(method, raw) == match  # memoized answer is the same


@pytest.mark.parametrize(
    ("method", "raw", "denied"),
    [
        ("GET", "/nothing", "no_rule"),
        ("POST", "/docs/x", "no_rule"),
        ("GET", "//w/a/threads/t1", "bad_path"),  # the raw view matches nothing
        ("GET", "/files//raw/x", "no_rule"),  # neither view matches: plain no_rule
        ("GET", "/x;y", "bad_path"),
    ],
)
def test_route_denied(routes: Policy, method: str, raw: str, denied: str) -> None:
    match = routes.route(method, raw)
    assert match.denied == denied
    decision = routes.authorize(match, ident({"*"}))
    assert decision == PolicyDecision(False, denied, None, match.rule)


def test_params_disagreeing_between_views_deny(routes: Policy) -> None:
    # same rule, but {id} would be "t1" for an upstream that resolves dots, "x" otherwise
    match = routes.route("GET", "/w/a/threads/x/../t1")
    assert match.denied == "bad_path"
    assert "ambiguous" in match.detail


def test_dot_segments_that_keep_the_rule_and_params_are_allowed(routes: Policy) -> None:
    match = routes.route("GET", "/docs/a/../b")
    assert (match.denied, match.rule, match.path) == (None, "prefix", "/docs/b")


def test_route_memo_is_bounded(routes: Policy) -> None:
    policy = parse_policy(ROUTES, "memo.toml")
    for i in range(5000):
        policy.route("GET", f"/w/a/threads/{i}")
    assert 0 < len(policy._routes) <= 4096
    long_path = "/docs/" + "x" * 300
    policy.route("GET", long_path)
    assert ("GET", long_path) not in policy._routes


# --- decisions ---------------------------------------------------------------------------

DECIDE = """
[[rules]]
name = "all-of"
path = "/all"
scopes = ["threads:read", "messages:read"]

[[rules]]
name = "any-of"
path = "/any"
any_scopes = ["threads:create", "threads:write"]

[[rules]]
name = "both"
path = "/both"
scopes = ["a:read"]
any_scopes = ["b:read", "c:read"]

[[rules]]
name = "own"
path = "/users/{user}/profile"
scopes = ["profile:read"]
own = "user"

[[rules]]
name = "ws-param"
path = "/ws/{ws}/items"
scopes = ["items:list"]
workspace_param = "ws"

[[rules]]
name = "ws-header"
path = "/search"
workspace_header = "X-Workspace-Id"

[[rules]]
name = "no-scope"
path = "/me"

[[rules]]
name = "public"
path = "/pub"
public = true
"""


@pytest.fixture(scope="module")
def decide() -> Policy:
    return parse_policy(DECIDE, "decide.toml")


@pytest.mark.parametrize(
    ("path", "identity", "headers", "expected"),
    [
        ("/all", ident({"threads:read", "messages:read"}), None, (True, "ok", None)),
        ("/all", ident({"threads:read"}), None, (False, "insufficient_scope", "messages:read")),
        ("/all", ident(), None, (False, "insufficient_scope", "threads:read messages:read")),
        ("/all", ident({"read-only"}), None, (True, "ok", None)),
        (
            "/all",
            ident({"restricted"}),
            None,
            (False, "insufficient_scope", "threads:read messages:read"),
        ),
        ("/all", ident({"all"}), None, (True, "ok", None)),
        ("/any", ident({"threads:write"}), None, (True, "ok", None)),
        ("/any", ident({"threads:*"}), None, (True, "ok", None)),
        ("/any", ident({"threads:read"}), None, (False, "insufficient_scope", "threads:create")),
        ("/both", ident({"a:read", "c:read"}), None, (True, "ok", None)),
        ("/both", ident({"c:read"}), None, (False, "insufficient_scope", "a:read")),
        ("/both", ident(), None, (False, "insufficient_scope", "a:read b:read")),
        ("/users/u1/profile", ident({"profile:read:own"}), None, (True, "ok", None)),
        ("/users/u2/profile", ident({"profile:read:own"}), None, (False, "own", "profile:read")),
        ("/users/u2/profile", ident({"profile:read"}), None, (True, "ok", None)),
        ("/users/u1/profile", ident({"restricted"}), None, (True, "ok", None)),
        ("/users/U1/profile", ident({"restricted"}), None, (False, "own", "profile:read")),
        (
            "/users/u1/profile",
            ident({"threads:read:own"}),
            None,
            (False, "insufficient_scope", "profile:read"),
        ),
        ("/ws/w1/items", ident({"items:list"}, workspaces={"w1"}), None, (True, "ok", None)),
        (
            "/ws/w2/items",
            ident({"items:list"}, workspaces={"w1"}),
            None,
            (False, "workspace", None),
        ),
        ("/ws/w2/items", ident({"items:list"}), None, (True, "ok", None)),  # every workspace
        (
            "/ws/w2/items",
            ident(workspaces={"w2"}),
            None,
            (False, "insufficient_scope", "items:list"),
        ),
        ("/search", ident(workspaces={"w1"}), {"x-workspace-id": "w1"}, (True, "ok", None)),
        ("/search", ident(workspaces={"w1"}), {"x-workspace-id": "w2"}, (False, "workspace", None)),
        (
            "/search",
            ident(workspaces={"w1"}),
            {"x-workspace-id": "w1, w2"},
            (False, "workspace", None),
        ),
        ("/search", ident(workspaces={"w1"}), None, (False, "workspace", None)),
        ("/search", ident(), None, (False, "workspace", None)),  # the header must be there
        ("/search", ident(), {"x-workspace-id": "any"}, (True, "ok", None)),
        ("/me", ident(), None, (True, "ok", None)),
        ("/pub", ident(), None, (True, "public", None)),
    ],
)
def test_authorize(
    decide: Policy,
    path: str,
    identity: Identity,
    headers: dict[str, str] | None,
    expected: tuple[bool, str, str | None],
) -> None:
    match = decide.route("GET", path)
    decision = decide.authorize(match, identity, headers)
    assert (decision.allowed, decision.reason, decision.missing_scope) == expected
    assert decision.rule == match.rule
    assert decision.reason in REASONS
    # the same answer with a caller-compiled ScopeSet, and again from the memo
    fresh = parse_policy(DECIDE, "decide.toml")
    compiled = ScopeSet.from_scopes(identity.scopes)
    assert fresh.authorize(fresh.route("GET", path), identity, headers, scopes=compiled) == (
        decision
    )
    assert decide.authorize(match, identity, headers) == decision


def test_public_match_needs_no_identity_fields(decide: Policy) -> None:
    match = decide.route("GET", "/pub")
    assert isinstance(match, RouteMatch)
    assert match.public
    assert match.denied is None
    assert match.rule == "public"


def test_default_policy_needs_only_a_token() -> None:
    policy = default_policy()
    match = policy.route("DELETE", "/anything/at/all")
    assert (match.public, match.denied, match.rule) == (False, None, DEFAULT_RULE)
    assert policy.authorize(match, ident()) == PolicyDecision(True, "ok", None, DEFAULT_RULE)
    assert policy.route("GET", "/a/../b").rule == DEFAULT_RULE  # one rule either way
    assert policy.route("GET", "/a/%2e%2e/b").denied == "bad_path"
    assert policy.route("GET", "/a;b").denied == "bad_path"


def test_default_authenticated_lets_unmatched_routes_through() -> None:
    policy = parse_policy(
        'default = "authenticated"\n[[rules]]\nname = "x"\npath = "/x"\nscopes = ["x:read"]\n',
        "auth.toml",
    )
    assert policy.authorize(policy.route("GET", "/y"), ident()).allowed
    assert not policy.authorize(policy.route("GET", "/x"), ident()).allowed


def test_overlapping_rules_are_a_config_error() -> None:
    text = """
[[rules]]
name = "one"
methods = ["GET", "POST"]
path = "/a/{x}"

[[rules]]
name = "two"
methods = ["POST"]
path = "/a/{y}"
"""
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "dup.toml")
    message = str(info.value)
    assert "dup.toml: rule 2 'two', field 'path'" in message
    assert "overlaps rule 1 'one'" in message


def test_any_method_rule_overlaps_only_another_any_method_rule() -> None:
    ok = '[[rules]]\npath = "/a"\n[[rules]]\nmethods = ["GET"]\npath = "/a"\n'
    assert parse_policy(ok, "ok.toml").route("GET", "/a").rule == "#2"
    assert parse_policy(ok, "ok.toml").route("PUT", "/a").rule == "#1"
    with pytest.raises(PolicyError, match="overlaps rule 1"):
        parse_policy('[[rules]]\npath = "/a"\n[[rules]]\npath = "/a"\n', "dup.toml")


# --- letter case ---------------------------------------------------------------------------

CASES = """
default = "deny"

[[rules]]
name = "public-docs"
path = "/public/**"
public = true

[[rules]]
name = "Mixed"
methods = ["GET"]
path = "/v1/Users/{id}"
scopes = ["users:read"]

[[rules]]
name = "everything"
path = "/**"
scopes = ["x:read"]
"""


@pytest.fixture(scope="module")
def cases() -> Policy:
    return parse_policy(CASES, "cases.toml")


def test_upper_case_admin_hits_the_admin_rule_and_the_exact_one(guarded: Policy) -> None:
    match = guarded.route("GET", "/ADMIN/x")
    assert (match.rule, match.public) == ("admin", False)
    assert match.also is not None
    assert match.also.rule == "catch-all"
    assert guarded.authorize(match, ident({"admin:admin"})).allowed
    denied = guarded.authorize(match, ident({"x:read"}))
    assert (denied.reason, denied.missing_scope) == ("insufficient_scope", "admin:admin")


def test_case_never_makes_a_route_public(cases: Policy) -> None:
    assert cases.route("GET", "/public/a").public
    shouted = cases.route("GET", "/PUBLIC/a")
    # A case-sensitive upstream routes /PUBLIC/a under "everything": that rule applies too.
    assert not shouted.public
    assert not cases.authorize(shouted, ident()).allowed
    assert cases.authorize(shouted, ident({"x:read"})).allowed
    decision = cases.authorize(shouted, ident())
    assert (decision.reason, decision.missing_scope, decision.rule) == (
        "insufficient_scope",
        "x:read",
        "everything",
    )


def test_mixed_case_literals_must_match_exactly_too(cases: Policy) -> None:
    exact = cases.route("GET", "/v1/Users/Ab")
    assert (exact.rule, exact.also, dict(exact.params)) == ("Mixed", None, {"id": "Ab"})
    lower = cases.route("GET", "/v1/users/Ab")
    assert lower.rule == "Mixed"
    assert lower.also is not None
    assert lower.also.rule == "everything"
    assert not cases.authorize(lower, ident({"users:read"})).allowed
    assert cases.authorize(lower, ident({"users:read", "x:read"})).allowed


def test_exact_spelling_with_no_rule_is_denied() -> None:
    policy = parse_policy('[[rules]]\nname = "admin"\npath = "/admin/**"\n', "strict.toml")
    assert policy.route("GET", "/admin/x").denied is None
    match = policy.route("GET", "/Admin/x")
    assert (match.denied, match.rule) == ("no_rule", "admin")
    assert "exact-case" in match.detail


def test_upper_case_parameters_need_no_second_rule(routes: Policy) -> None:
    match = routes.route("GET", "/w/ACME/threads/T1")
    assert (match.rule, match.also) == ("thread-get", None)
    assert dict(match.params) == {"ws": "ACME", "id": "T1"}


def test_a_match_from_an_older_policy_never_poisons_a_newer_one() -> None:
    # A reload can land between route() and authorize(): the match carries its own rule,
    # and the newer policy's memo must not learn that rule's verdict under its own rule.
    old = parse_policy('[[rules]]\nname = "a"\npath = "/a"\nscopes = ["a:read"]\n', "old.toml")
    new = parse_policy('[[rules]]\nname = "a"\npath = "/a"\n', "new.toml")
    stale = old.route("GET", "/a")
    assert not new.authorize(stale, ident()).allowed
    assert new.authorize(new.route("GET", "/a"), ident()).allowed


def test_memoized_params_are_read_only(routes: Policy) -> None:
    match = routes.route("GET", "/w/acme/threads/t1")
    with pytest.raises(TypeError):
        match.params["ws"] = "other"  # type: ignore[index]


@settings(max_examples=200, deadline=None)
@given(upper=st.lists(st.booleans(), min_size=6, max_size=6), tail=st.sampled_from(["", "/x"]))
def test_property_only_the_exact_spelling_is_public(
    cases: Policy, upper: list[bool], tail: str
) -> None:
    word = "".join(c.upper() if u else c for c, u in zip("public", upper, strict=True))
    match = cases.route("GET", f"/{word}{tail}")
    assert match.rule == "public-docs"
    assert match.public is (word == "public")
    assert cases.authorize(match, ident()).allowed is (word == "public")
