"""Path templates and the segment trie that matches them.

Template syntax (one whole segment per element)::

    /workspaces/{ws}/threads/{id}    literal segments and named parameters
    /files/*                         ``*``: one segment, not bound
    /v1/tokens/**                    ``**`` (last only): zero or more segments, i.e. the
                                     prefix itself and everything below it
    /**                              catch-all

Literal segments match case-insensitively (see :mod:`policies.paths`). Matching walks the
trie one segment at a time trying, in order, the literal child, the parameter child, then
``**`` — so the most specific template wins and each trie node is visited at most once
per lookup (no per-rule scan, no regex). A node whose templates do not cover the request
method is skipped as if it did not match, so a catch-all can cover the methods a more
specific rule leaves out. ``GET`` implies ``HEAD`` unless ``HEAD`` is given explicitly:
frameworks answer ``HEAD`` with the ``GET`` handler, so it must not fall to a weaker rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from patgate.policies.paths import BadPath, normalize

__all__ = ["ANY", "PARAM", "REST", "RouteTable", "Template", "Walk", "parse_template"]

T = TypeVar("T")

PARAM = "{}"  # segment kind markers in Template.segments; never a valid literal
ANY = "*"
REST = "**"
_PARAM_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}", re.ASCII)
# tuple.__new__ builds a NamedTuple without its Python-level __new__ (2x faster).
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal (lower-case) segments, ``PARAM``/``ANY``/``REST``."""

    text: str
    segments: tuple[str, ...]
    #: names of the ``{param}`` segments, in order.
    params: tuple[str, ...]
    #: one entry per ``{param}``/``*`` segment, in order: the name, or ``None`` for ``*``.
    binds: tuple[str | None, ...]
    #: like :attr:`segments` with literals in their original case.
    exact: tuple[str, ...]


def parse_template(text: str) -> Template:
    """Parse a path template; raises ``ValueError`` with a precise message."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"path template {text!r} must be a string starting with '/'")
    if text != "/" and text.endswith("/"):
        raise ValueError(
            f"path template {text!r} ends with '/': a trailing slash is insignificant, "
            "write it without, or end with '/**' for a prefix"
        )
    segs: list[str] = []
    exact: list[str] = []
    params: list[str] = []
    binds: list[str | None] = []
    parts = text[1:].split("/") if text != "/" else []
    for pos, part in enumerate(parts):
        if part == REST:
            if pos != len(parts) - 1:
                raise ValueError(f"path template {text!r}: '**' must be the last segment")
            segs.append(REST)
        elif part == ANY:
            segs.append(ANY)
            binds.append(None)
        elif (m := _PARAM_RE.fullmatch(part)) is not None:
            if m[1] in params:
                raise ValueError(f"path template {text!r}: parameter {{{m[1]}}} repeated")
            params.append(m[1])
            binds.append(m[1])
            segs.append(PARAM)
        elif any(c in part for c in "{}*"):
            raise ValueError(
                f"path template {text!r}: segment {part!r} is not a literal, '{{name}}' "
                "(lower-case name), '*' or '**' — wildcards span whole segments"
            )
        else:
            norm = normalize("/" + part)
            if isinstance(norm, BadPath) or norm.raw_segments is not None or not norm.values:
                why = norm.detail if isinstance(norm, BadPath) else "not a plain segment"
                raise ValueError(f"path template {text!r}: segment {part!r}: {why}")
            segs.append(norm.segments[0])
            exact.append(norm.values[0])
            continue
        exact.append(segs[-1])
    return Template(text, tuple(segs), tuple(params), tuple(binds), tuple(exact))


# While building, a trie node is a dict: literal segment → child, plus these keys (they
# contain "/", so no request segment can collide with them).
_PARAM_KEY = "/p"  # child for {param} and * segments
_HERE_KEY = "/h"  # endpoint of templates ending at this node
_REST_KEY = "/r"  # endpoint of templates ending in ** at this node
# An endpoint maps a method (or _ANY_METHOD) to an entry.
_ANY_METHOD = "*"
# (target, binds, the same names when none is ``*`` — the common case)
_Entry = tuple[Any, tuple[str | None, ...], tuple[str, ...] | None]
_Endpoint = dict[str, _Entry]
# finish() freezes each node into a tuple (literal children, {param} child, ``**``
# endpoint, own endpoint): one unpacking per step is the cheapest walk in CPython.
_Frozen = tuple[dict[str, Any], Any, _Endpoint | None, _Endpoint | None]


class RouteTable(Generic[T]):
    """Templates compiled into a trie; ``T`` is what a match returns (the engine's rule).

    ``add`` every template, then ``finish`` once before ``match``.
    """

    __slots__ = ("_build", "_root", "_start", "literals")

    def __init__(self) -> None:
        self._build: dict[str, Any] = {}
        self._root: _Frozen = ({}, None, None, None)
        self._start = _new(Walk, (self._root, (), None, 0, False, False))
        #: every literal segment at any depth (after :meth:`finish`): a request segment
        #: outside it never meets a literal, whatever its case.
        self.literals: frozenset[str] = frozenset()

    def add(
        self,
        template: Template,
        methods: Iterable[str] | None,
        target: T,
        *,
        exact_case: bool = False,
    ) -> T | None:
        """Insert; returns the target already holding one of these methods, if any.

        ``methods`` of ``None`` means every method. ``exact_case`` keys literals by their
        original case (for the engine's case-sensitive view) instead of lower case.
        """
        node = self._build
        for seg in template.exact if exact_case else template.segments:
            if seg == REST:
                break
            node = node.setdefault(_PARAM_KEY if seg in (PARAM, ANY) else seg, {})
        ends_in_rest = bool(template.segments) and template.segments[-1] == REST
        endpoint: _Endpoint = node.setdefault(_REST_KEY if ends_in_rest else _HERE_KEY, {})
        wanted = [_ANY_METHOD] if methods is None else sorted(set(methods))
        for m in wanted:
            if m in endpoint:
                held: T = endpoint[m][0]
                return held
        named = template.params if None not in template.binds else None
        for m in wanted:
            endpoint[m] = (target, template.binds, named)
        return None

    def finish(self) -> None:
        """Freeze the trie; ``HEAD`` follows ``GET`` wherever it is not given explicitly."""
        self._root = _freeze(self._build)
        self._start = _new(Walk, (self._root, (), None, 0, False, False))
        self.literals = frozenset(_literals(self._root))

    def match(
        self, method: str, segments: Sequence[str], values: Sequence[str]
    ) -> tuple[T, dict[str, str]] | None:
        """The best target for ``method`` and lower-cased ``segments``, with the bound
        parameters taken from ``values`` (the same segments, original case)."""
        walk = self.descend(self._start, method, segments, values)
        arrived = _arrival(walk, method)
        if arrived is not None:
            return _bind(*arrived)
        if not walk.search:
            return None
        positions: list[int] = []
        hit = _walk(self._root, segments, 0, len(segments), method, positions)
        return None if hit is None else _bind(hit, [values[i] for i in positions])

    def match_next(
        self, walk: Walk, method: str, segment: str, value: str
    ) -> tuple[T, dict[str, str]] | Literal[False] | None:
        """:meth:`match` for a path made of the segments ``walk`` (from :meth:`descend`)
        went through plus ``segment``; ``False`` when only the full search over the whole
        path can tell (the caller then calls :meth:`match`).

        One step of :meth:`descend` and the ending of :meth:`match`, written out because
        it runs on every request with a fresh id in its last segment.
        """
        node, bound, fallback, fallback_len, search, stopped = walk
        if not stopped:
            lit, param, rest, _ = node
            child = lit.get(segment)
            if child is None:
                if rest is not None and (
                    (found := rest.get(method) or rest.get(_ANY_METHOD)) is not None
                ):
                    fallback, fallback_len, search = found, len(bound), False
                if param is not None and segment:
                    child = param
                    bound = (*bound, value)
            elif param is not None:
                search = True
            elif rest is not None and (
                (found := rest.get(method) or rest.get(_ANY_METHOD)) is not None
            ):
                fallback, fallback_len, search = found, len(bound), False
            if child is not None:
                _, _, rest, here = child
                hit = None if here is None else here.get(method) or here.get(_ANY_METHOD)
                if hit is None and rest is not None:
                    hit = rest.get(method) or rest.get(_ANY_METHOD)
                if hit is not None:
                    return _bind(hit, bound)
        if search:
            return False
        return None if fallback is None else _bind(fallback, bound[:fallback_len])

    def descend(
        self, walk: Walk, method: str, segments: Sequence[str], values: Sequence[str]
    ) -> Walk:
        """Continue the fast walk from ``walk`` (:attr:`start` for a whole path) through
        ``segments``: follow the most specific child at each step, remembering what the
        full search (which tries literal child, then {param} child, then ``**``) would
        fall back to if the walk fails: the deepest ``**`` seen so far — unless an
        untried {param} branch was passed after it, in which case only the full search
        is exact. The answer is the same; the walk just avoids recursion when it can.
        The branches are ordered for the common steps (a literal child with no {param}
        sibling, or the {param} child), which test the fewest conditions."""
        node, bound_at, fallback, fallback_len, search, stopped = walk
        if stopped:
            return walk
        lit, param, rest, _ = node
        bound = [*bound_at]
        for seg, value in zip(segments, values, strict=True):
            child = lit.get(seg)
            if child is None:
                if rest is not None and (
                    (found := rest.get(method) or rest.get(_ANY_METHOD)) is not None
                ):
                    fallback, fallback_len, search = found, len(bound), False
                if param is None or not seg:
                    stopped = True
                    break
                child = param
                bound.append(value)
            elif param is not None:
                search = True  # the {param} sibling comes before any ``**`` in order
            elif rest is not None and (
                (found := rest.get(method) or rest.get(_ANY_METHOD)) is not None
            ):
                fallback, fallback_len, search = found, len(bound), False
            node = child
            lit, param, rest, _ = child
        return _new(Walk, (node, tuple(bound), fallback, fallback_len, search, stopped))

    @property
    def start(self) -> Walk:
        """The walk before the first segment."""
        return self._start


class Walk(NamedTuple):
    """Where :meth:`RouteTable.descend` stands after some segments (immutable: the
    engine memoizes the walk through a path's directory)."""

    node: _Frozen
    #: the values bound so far.
    bound: tuple[str, ...]
    #: the deepest ``**`` entry passed, what the full search falls back to.
    fallback: _Entry | None
    fallback_len: int
    #: whether an untried {param} branch makes only the full search exact.
    search: bool
    #: whether the walk left the trie (no child for a segment).
    stopped: bool


def _arrival(walk: Walk, method: str) -> tuple[_Entry, Sequence[str]] | None:
    """The entry a finished :meth:`RouteTable.descend` reached and the values it binds,
    short of the full search: the node's own or ``**`` endpoint, else (unless
    ``search``) the fallback ``**``; ``None`` when neither decides."""
    if not walk.stopped:
        _, _, rest, here = walk.node
        hit = _at(here, method)
        if hit is None:
            hit = _at(rest, method)
        if hit is not None:
            return hit, walk.bound
    if walk.search or walk.fallback is None:
        return None
    return walk.fallback, walk.bound[: walk.fallback_len]


def _bind(hit: _Entry, bound: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """The target and its parameters, from one value per wildcard segment walked."""
    target, binds, named = hit
    if not binds:
        return target, {}
    if named is not None:
        # dict displays for the usual one or two parameters: ~4x cheaper than zip
        if len(named) == 1:
            return target, {named[0]: bound[0]}
        if len(named) == 2:
            return target, {named[0]: bound[0], named[1]: bound[1]}
        return target, dict(zip(named, bound, strict=True))
    # ``*`` binds nothing.
    return target, {name: v for name, v in zip(binds, bound, strict=True) if name}


def _literals(node: _Frozen) -> Iterator[str]:
    """Every literal segment of the trie, at any depth."""
    lit, param, _, _ = node
    for key, child in lit.items():
        yield key
        yield from _literals(child)
    if param is not None:
        yield from _literals(param)


def _freeze(node: dict[str, Any]) -> _Frozen:
    lit: dict[str, Any] = {}
    param = rest = here = None
    for key, value in node.items():
        if key == _PARAM_KEY:
            param = _freeze(value)
        elif key in (_HERE_KEY, _REST_KEY):
            endpoint = dict(value)
            if "GET" in endpoint and "HEAD" not in endpoint:
                endpoint["HEAD"] = endpoint["GET"]
            if key == _HERE_KEY:
                here = endpoint
            else:
                rest = endpoint
        else:
            lit[key] = _freeze(value)
    return (lit, param, rest, here)


def _at(endpoint: _Endpoint | None, method: str) -> _Entry | None:
    if endpoint is None:
        return None
    return endpoint.get(method) or endpoint.get(_ANY_METHOD)


def _walk(
    node: _Frozen,
    segs: Sequence[str],
    i: int,
    n: int,
    method: str,
    stack: list[int],
) -> _Entry | None:
    """Depth-first search: literal child, then parameter child, then ``**``. A trie node
    is only reachable at one depth, so each is visited at most once per lookup."""
    lit, param, rest, here = node
    if i == n:
        hit = _at(here, method)
        return hit if hit is not None else _at(rest, method)
    seg = segs[i]
    child = lit.get(seg)
    if child is not None and (hit := _walk(child, segs, i + 1, n, method, stack)) is not None:
        return hit
    if param is not None and seg:
        stack.append(i)
        if (hit := _walk(param, segs, i + 1, n, method, stack)) is not None:
            return hit
        stack.pop()
    return _at(rest, method)
