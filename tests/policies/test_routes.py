"""The route trie: its fast walk agrees with the plain depth-first search (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.policies.routes import ANY, PARAM, REST, RouteTable, Template, _walk, parse_template

_TEMPLATE = st.builds(
    lambda segs, rest: "/" + "/".join(segs + (["**"] if rest else [])),
    st.lists(st.sampled_from(["a", "b", "{x}", "{y}", "*"]), max_size=4),
    st.booleans(),
).filter(lambda t: t.count("{x}") <= 1 and t.count("{y}") <= 1)
_METHODS = st.sampled_from([None, ("GET",), ("POST",), ("GET", "POST")])
_PATH = st.lists(st.sampled_from(["a", "b", "c", "A", ""]), max_size=5)


def _matches(template: Template, segs: list[str]) -> bool:
    """Brute force: does this template match these (lower-case) segments?"""
    pattern = template.segments
    if pattern and pattern[-1] == REST:
        head = pattern[:-1]
        if len(segs) < len(head):
            return False
        segs = segs[: len(head)]
        pattern = head
    if len(pattern) != len(segs):
        return False
    return all(
        (p in (PARAM, ANY) and s != "") or p == s for p, s in zip(pattern, segs, strict=True)
    )


@settings(max_examples=1000, deadline=None)
@given(
    rules=st.lists(st.tuples(_TEMPLATE, _METHODS), min_size=1, max_size=8),
    path=_PATH,
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT"]),
)
def test_fast_walk_equals_full_search(
    rules: list[tuple[str, tuple[str, ...] | None]], path: list[str], method: str
) -> None:
    table: RouteTable[int] = RouteTable()
    templates: dict[int, Template] = {}
    for index, (text, methods) in enumerate(rules):
        template = parse_template(text)
        if table.add(template, methods, index) is None:
            templates[index] = template
    table.finish()
    segs = [s.lower() for s in path]
    got = table.match(method, segs, path)
    positions: list[int] = []
    ref = _walk(table._root, segs, 0, len(segs), method, positions)
    if ref is None:
        assert got is None
        # complete: no template that covers the method matches
        for index, template in templates.items():
            methods = rules[index][1]
            covers = methods is None or method in methods or (method == "HEAD" and "GET" in methods)
            assert not (covers and _matches(template, segs)), (templates, index)
        return
    assert got is not None
    target, params = got
    assert target == ref[0]
    named = ref[1]
    assert params == {n: path[p] for n, p in zip(named, positions, strict=True) if n}
    assert _matches(templates[target], segs)  # sound


@pytest.mark.parametrize(
    ("text", "segments", "params"),
    [
        ("/", (), ()),
        ("/A/{id}/*/**", ("a", PARAM, ANY, REST), ("id",)),
        ("/%7Euser/x%2Dy", ("~user", "x-y"), ()),
    ],
)
def test_parse_template(text: str, segments: tuple[str, ...], params: tuple[str, ...]) -> None:
    template = parse_template(text)
    assert (template.segments, template.params) == (segments, params)
