"""The fast route (issue 16) decides exactly like the full route: the plain-path test
against the careful normalizer, the split of a path into directory and last segment, the
one-step trie walk, and whole policies on random paths (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.policies.engine import Policy, RouteMatch, parse_policy
from patgate.policies.paths import _careful, is_plain, is_plain_segment, normalize
from patgate.policies.routes import RouteTable, parse_template

# Characters that matter to the normalizer, and plain ones (mostly), so that random paths
# land on both sides of is_plain and of is_plain_segment.
_CHARS = st.sampled_from([*"aAbZ09-_~.", "/", "//", "%", "%2e", "%41", ";", "\\"])
_PATH = st.lists(_CHARS, max_size=12).map(lambda cs: "/" + "".join(cs))
_DIRTY_CHARS = st.sampled_from([*"aB.-/", " ", "#", "%", "\x00", "\x7f", "\xe9"])
_SEGMENT = st.lists(_CHARS | _DIRTY_CHARS, max_size=6).map("".join)


@settings(max_examples=2000, deadline=None)
@given(path=_PATH | st.text(max_size=30).map(lambda t: "/" + t))
def test_plain_paths_normalize_as_the_careful_path_does(path: str) -> None:
    path = path.partition("?")[0]  # both take the path without its query
    if is_plain(path):
        assert normalize(path) == _careful(path)


@settings(max_examples=2000, deadline=None)
@given(directory=_PATH | st.just(""), segment=_SEGMENT)
def test_a_plain_path_is_a_plain_directory_plus_a_plain_segment(
    directory: str, segment: str
) -> None:
    plain_dir = directory == "" or (directory[-1] != "/" and is_plain(directory))
    if plain_dir and is_plain_segment(segment):
        assert is_plain(directory + "/" + segment)
    if is_plain_segment(segment):
        assert segment
        assert "/" not in segment
        assert is_plain("/" + segment)


_TEMPLATE = st.builds(
    lambda segs, rest: "/" + "/".join(segs + (["**"] if rest else [])),
    st.lists(st.sampled_from(["a", "b", "{x}", "{y}", "*"]), max_size=4),
    st.booleans(),
).filter(lambda t: t.count("{x}") <= 1 and t.count("{y}") <= 1)
_METHODS = st.sampled_from([None, ("GET",), ("POST",), ("GET", "POST")])
_SEGS = st.lists(st.sampled_from(["a", "b", "c", "A", ""]), min_size=1, max_size=5)


@settings(max_examples=1000, deadline=None)
@given(
    rules=st.lists(st.tuples(_TEMPLATE, _METHODS), min_size=1, max_size=8),
    path=_SEGS,
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT"]),
)
def test_one_more_step_matches_like_the_whole_walk(
    rules: list[tuple[str, tuple[str, ...] | None]], path: list[str], method: str
) -> None:
    table: RouteTable[int] = RouteTable()
    for index, (text, methods) in enumerate(rules):
        table.add(parse_template(text), methods, index)
    table.finish()
    segs = [s.lower() for s in path]
    walk = table.descend(table.start, method, segs[:-1], path[:-1])
    step = table.match_next(walk, method, segs[-1], path[-1])
    whole = table.match(method, segs, path)
    if step is False:  # only the full search can tell: the engine then takes it
        return
    assert step == whole


def _policy_text(rules: list[tuple[str, str | None, bool]]) -> str:
    lines = ['default = "deny"']
    for i, (path, method, public) in enumerate(rules):
        methods = f'["{method}"]' if method else '"*"'
        lines.append(
            f'[[rules]]\nname = "r{i}"\npath = "{path}"\nmethods = {methods}\n'
            + ("public = true\n" if public else 'scopes = ["x:read"]\n')
        )
    return "\n".join(lines)


_POLICY_TEMPLATE = st.builds(
    lambda segs, rest: "/" + "/".join(segs + (["**"] if rest else [])),
    st.lists(st.sampled_from(["a", "b", "Ab", "v1.0", "{x}", "{y}", "*"]), max_size=4),
    st.booleans(),
).filter(lambda t: t != "/" and t.count("{x}") <= 1 and t.count("{y}") <= 1)
_RULES = st.lists(
    st.tuples(_POLICY_TEMPLATE, st.sampled_from([None, "GET", "POST"]), st.booleans()),
    min_size=1,
    max_size=6,
)
_REQUEST_SEG = st.sampled_from(["a", "A", "b", "B", "ab", "AB", "v1.0", "x", "", ".", "%61"])
_REQUEST = st.lists(_REQUEST_SEG, min_size=1, max_size=5).map(lambda s: "/" + "/".join(s))


def _same_match(a: RouteMatch, b: RouteMatch) -> bool:
    """Field by field (``params`` views compared by content), ``also`` included."""
    if (a.also is None) != (b.also is None):
        return False
    if a.also is not None and b.also is not None and not _same_match(a.also, b.also):
        return False
    return (a.public, a.denied, a.rule, dict(a.params), a.path, a.spec, a.detail) == (
        b.public,
        b.denied,
        b.rule,
        dict(b.params),
        b.path,
        b.spec,
        b.detail,
    )


@settings(max_examples=1500, deadline=None)
@given(
    rules=_RULES,
    paths=st.lists(_REQUEST, min_size=1, max_size=4),
    method=st.sampled_from(["GET", "POST", "HEAD"]),
)
def test_fast_route_equals_full_route(
    rules: list[tuple[str, str | None, bool]], paths: list[str], method: str
) -> None:
    try:
        policy = parse_policy(_policy_text(rules), "random.toml")
    except ValueError:
        return  # overlapping rules: a load error, nothing to route
    for path in paths:  # several paths, so later ones meet memoized directories
        fast = policy._route_plain(method, path)
        full = policy._route_normalized(method, path)
        if fast is not None:
            assert _same_match(fast, full), (path, fast, full)
        assert _same_match(policy.route(method, path), full)


def test_the_fast_route_serves_fresh_ids() -> None:
    policy: Policy = parse_policy(
        '[[rules]]\nname = "t"\npath = "/w/{ws}/threads/{id}"\nmethods = ["GET"]\n', "t.toml"
    )
    for n in range(3):
        match = policy._route_plain("GET", f"/w/acme/threads/T{n}")
        assert match is not None
        assert (match.rule, dict(match.params)) == ("t", {"ws": "acme", "id": f"T{n}"})
    assert len(policy._dirs) == 1
    # not plain, or the last segment is a literal spelled in another case: the full route
    assert policy._route_plain("GET", "/w/acme/threads/%41") is None
    assert policy._route_plain("GET", "/w/acme/THREADS") is None
    assert policy._route_plain("GET", "/w/acme/../threads/x") is None
