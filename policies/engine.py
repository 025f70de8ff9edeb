"""The compiled policy: route a request to one rule, then decide it for an identity.

Deciding is two steps so the data plane can skip the token lookup on public routes::

    match = policy.route(method, raw_path)       # normalize + trie walk; no token needed
    if match.denied: ...                          # "bad_path" or "no_rule": refuse
    if match.public: ...                          # no token needed
    decision = policy.authorize(match, identity, headers)

``route`` matches the normalized path (:mod:`policies.paths`) and, when normalization
changed the path's structure (dot segments, empty segments), also the as-sent structure;
if the two reach a different rule or bind different parameters the request is denied
with ``bad_path`` — no spelling of a path can reach a weaker rule than its canonical form.

``TRACE`` and ``CONNECT`` are denied with ``method_not_allowed`` (405) unless the rule the
request reaches names the method in its ``methods`` list (``methods = "*"`` does not
count): TRACE echoes the request — credentials and cookies included — to whoever can read
the response (cross-site tracing), and CONNECT turns an HTTP proxy into a TCP tunnel
(RFC 9110 §9.3.6, §9.3.8). Neither is decided per token: the refusal comes before
authentication.

``preflight = "allow"`` lets CORS preflights (:meth:`Policy.allows_preflight`) through
without a token, like Kong's ``run_on_preflight = false``: browsers never attach
credentials to a preflight (Fetch standard, "CORS-preflight request"), so requiring a
token makes every cross-origin call from a browser fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from patgate.policies.errors import PolicyError
from patgate.policies.identity import PolicyIdentity
from patgate.policies.loader import parse_document, read_text
from patgate.policies.paths import MAX_PATH_LENGTH, BadPath, is_plain, is_plain_segment, normalize
from patgate.policies.routes import RouteTable, Walk
from patgate.policies.schema import PolicySpec, RuleSpec, build_spec
from patgate.policies.scopes import ScopeSet
from patgate.policies.verdicts import REASONS, PolicyDecision, scope_verdict, workspace_ok

__all__ = [
    "DEFAULT_RULE",
    "EXPLICIT_METHODS",
    "REASONS",
    "Policy",
    "PolicyDecision",
    "RouteMatch",
    "default_policy",
    "load_policy",
    "parse_policy",
]

#: the rule name reported for requests no rule matched.
DEFAULT_RULE = "(default)"
#: methods refused (405) unless the matched rule names them in ``methods``.
EXPLICIT_METHODS = frozenset({"TRACE", "CONNECT"})
_METHOD_DETAIL = "{} is refused unless a policy rule names it"
_ORIGIN = b"origin"
_ACRM = b"access-control-request-method"
_AUTHORIZATION = b"authorization"
_EMPTY: Mapping[str, str] = MappingProxyType({})
#: methods that need neither upper-casing nor the TRACE/CONNECT checks.
_ORDINARY_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CACHE_MAX = 4096
# Longer raw paths are not memoized, which bounds the route memo to a few MiB.
_CACHE_PATH_MAX = 256
# tuple.__new__ builds a NamedTuple without its Python-level __new__ (2x faster).
_new = tuple.__new__


class RouteMatch(NamedTuple):
    """Which rule a request reached (before looking at the token).

    Immutable and ``__dict__``-free like a frozen slots dataclass, but a NamedTuple:
    one is built per request and that is ~3x cheaper (see bench/policy_bench.py).
    """

    public: bool
    #: ``"bad_path"``, ``"method_not_allowed"`` or ``"no_rule"`` when the request is
    #: denied outright, else ``None``.
    denied: str | None
    #: the rule's name; :data:`DEFAULT_RULE` when none matched, ``""`` for a bad path.
    rule: str
    params: Mapping[str, str]
    #: the normalized path (``""`` for a bad path).
    path: str
    #: the matched rule (``None`` for the default and for denied paths).
    spec: RuleSpec | None = None
    #: why the path was rejected (``bad_path`` only); for logs and ``policy explain``.
    detail: str = ""
    #: when letter case changes which rule applies (a case-sensitive upstream would
    #: route this spelling under another rule), that rule's match: it must allow too.
    also: RouteMatch | None = None


class Policy:
    """A validated policy compiled into a route trie; immutable once built."""

    __slots__ = (
        "_default_ok",
        "_dirs",
        "_exact",
        "_explicit",
        "_fixed_decisions",
        "_literals",
        "_mixed_case",
        "_routes",
        "_scope_cache",
        "_table",
        "_verdicts",
        "preflight",
        "routed",
        "spec",
    )

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        table: RouteTable[RuleSpec] = RouteTable()
        exact: RouteTable[RuleSpec] = RouteTable()
        problems: list[str] = []
        for rule in spec.rules:
            for template in rule.templates:
                exact.add(template, rule.methods, rule, exact_case=True)
                other = table.add(template, rule.methods, rule)
                if other is not None:
                    problems.append(
                        f"{spec.source}: rule {rule.index} {rule.name!r}, field 'path': "
                        f"{template.text!r} overlaps rule {other.index} {other.name!r} "
                        "for the same method(s)"
                    )
        if problems:
            raise PolicyError("\n".join(problems))
        table.finish()
        exact.finish()
        self._table = table
        self._exact = exact
        self._mixed_case = any(
            seg != seg.lower() for r in spec.rules for t in r.templates for seg in t.exact
        )
        # Memos, bounded and cleared when full: compiled token scopes by scope set, and
        # scope verdicts by (scope set, rule, owner_match). Pure functions of their keys.
        self._scope_cache: dict[frozenset[str], ScopeSet] = {}
        self._verdicts: dict[tuple[frozenset[str], RuleSpec, bool], PolicyDecision] = {}
        self._default_ok = PolicyDecision(True, "ok", None, DEFAULT_RULE)
        # Decisions without a missing scope, by (allowed, reason, rule): a few per rule,
        # shared, because building a frozen dataclass per request costs ~1 µs.
        self._fixed_decisions: dict[tuple[bool, str, str], PolicyDecision] = {}
        self._routes: dict[tuple[str, str], RouteMatch] = {}
        #: the route memo itself, by (method, raw path): a caller on the hot path probes
        #: it before calling :meth:`route` (one call less per repeated path). Read-only
        #: there; only :meth:`route` writes it, and it is never replaced.
        self.routed: Mapping[tuple[str, str], RouteMatch] = self._routes
        # The trie walk through a plain path's directory, by (method, directory). Bounded
        # and cleared like the route memo.
        self._dirs: dict[tuple[str, str], Walk] = {}
        self._literals = table.literals
        #: TRACE/CONNECT that some rule names; any other is refused before routing.
        self._explicit = (
            frozenset(m for r in spec.rules if r.methods is not None for m in r.methods)
            & EXPLICIT_METHODS
        )
        #: whether CORS preflights pass without a token (``preflight = "allow"``).
        self.preflight = spec.preflight == "allow"

    def allows_preflight(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether ``preflight = "allow"`` and an ``OPTIONS`` request's raw ASGI headers
        make it a CORS preflight: ``Origin`` and ``Access-Control-Request-Method``
        present, no ``Authorization`` (a request with credentials is decided normally)."""
        if not self.preflight:
            return False
        origin = acrm = False
        for name, _ in headers:
            if name == _AUTHORIZATION:
                return False
            if name == _ORIGIN:
                origin = True
            elif name == _ACRM:
                acrm = True
        return origin and acrm

    @property
    def source(self) -> str:
        return self.spec.source

    def route(self, method: str, raw_path: str) -> RouteMatch:
        """Normalize ``raw_path`` and find the rule for ``method`` (upper-cased).

        Results are memoized per (method, raw path) — a pure function of the immutable
        policy — in a bounded map, since real traffic repeats paths a lot.
        """
        key = (method, raw_path)
        match = self._routes.get(key)
        if match is None:
            match = self._route(method, raw_path)
            if len(raw_path) <= _CACHE_PATH_MAX:
                if len(self._routes) >= _CACHE_MAX:
                    self._routes.clear()
                self._routes[key] = match
        return match

    def _route(self, method: str, raw_path: str) -> RouteMatch:
        if method in _ORDINARY_METHODS:  # upper case, not TRACE/CONNECT: nothing to check
            return self._route_path(method, raw_path)
        if not method.isupper():
            method = method.upper()
        if method in EXPLICIT_METHODS and method not in self._explicit:
            # Before the path: a CONNECT target is host:port, not a path.
            return _new(
                RouteMatch,
                (False, "method_not_allowed", "", _EMPTY, "", None,
                 _METHOD_DETAIL.format(method), None),
            )  # fmt: skip
        match = self._route_path(method, raw_path)
        if method in EXPLICIT_METHODS and match.denied != "bad_path" and not _names(match, method):
            detail = _METHOD_DETAIL.format(method)
            return match._replace(denied="method_not_allowed", public=False, detail=detail)
        return match

    def _route_path(self, method: str, raw_path: str) -> RouteMatch:
        """The fast route when it applies, else the full route (the same answer)."""
        path = raw_path.partition("?")[0] if "?" in raw_path else raw_path
        if path[:1] == "/" and len(path) <= MAX_PATH_LENGTH:
            match = self._route_plain(method, path)
            if match is not None:
                return match
        return self._route_normalized(method, raw_path)

    def _route_plain(self, method: str, path: str) -> RouteMatch | None:
        """The route of a plain path from the memoized walk through its directory, or
        ``None`` when this shortcut does not apply (the caller takes the full route).

        Fresh ids sit in the last segment (``/threads/t-123``) far more often than
        elsewhere, and the directory repeats: its walk through the trie is kept (a pure
        function of the policy, method and directory, like the route memo) and only the
        last segment is checked and walked. The answer is the full route's: ``path`` is
        plain (:func:`~patgate.policies.paths.is_plain_segment` on the last segment,
        :func:`~patgate.policies.paths.is_plain` on the directory when it is first
        seen), so normalizing only splits it; and the exact-case view cannot reach
        another rule (below), so it is not walked.
        """
        if self._mixed_case:
            return None  # the exact-case trie differs: only the full route compares both
        cut = path.rfind("/")
        last = path[cut + 1 :]
        if not is_plain_segment(last):
            return None
        key = (method, path[:cut])
        walk = self._dirs.get(key)
        if walk is None:
            walk = self._learn_dir(key)
            if walk is None:
                return None
        lower = last.lower()
        if lower != last and (lower in self._literals or last in self._literals):
            # A case-sensitive upstream could route this spelling elsewhere: only the full
            # route compares the exact-case view.
            return None
        hit = self._table.match_next(walk, method, lower, last)
        if hit is False:
            return None
        return self._match(hit, path)

    def _learn_dir(self, key: tuple[str, str]) -> Walk | None:
        """Walk a directory (``key``: method, path up to its last ``/``) and memoize the
        walk; ``None`` (not memoized: it would only evict useful walks) when it is no
        plain directory or letter case could change the rule — the full route decides.
        """
        method, directory = key
        if directory == "":
            walk = self._table.start
        elif directory[-1] != "/" and is_plain(directory):
            values = directory[1:].split("/")
            segments = directory[1:].lower().split("/")
            if self._case_matters(segments, values):
                return None
            walk = self._table.descend(self._table.start, method, segments, values)
        else:
            return None
        if len(directory) <= _CACHE_PATH_MAX:
            if len(self._dirs) >= _CACHE_MAX:
                self._dirs.clear()
            self._dirs[key] = walk
        return walk

    def _case_matters(self, segments: Sequence[str], values: Sequence[str]) -> bool:
        """Whether the exact-case walk could differ from the case-insensitive one.

        Only for a policy whose literals are all lower case (not ``_mixed_case``): then
        the exact-case trie is the same trie, and the two walks differ only where a
        segment and its value differ (letter case) and one of them is some literal —
        a value with an upper-case letter never equals an all-lower-case literal, so a
        segment that is no literal at any depth steps alike in both walks.
        """
        literals = self._literals
        for seg, value in zip(segments, values, strict=True):
            if seg != value and (seg in literals or value in literals):
                return True
        return False

    def _route_normalized(self, method: str, raw_path: str) -> RouteMatch:
        """The full route: normalize, match both views, compare with the exact case."""
        norm = normalize(raw_path)
        if isinstance(norm, BadPath):
            return _new(RouteMatch, (False, "bad_path", "", _EMPTY, "", None, norm.detail, None))
        path, segments, values, raw = norm
        hit = self._table.match(method, segments, values)
        if raw is not None:
            # (segments never contain "/", so join + split keeps empty ones in place)
            lowered = "/".join(raw).lower().split("/") if raw else []
            raw_hit = self._table.match(method, lowered, raw)
            if not _same(hit, raw_hit):
                detail = "path is ambiguous (its raw and normalized forms match differently)"
                return _new(RouteMatch, (False, "bad_path", "", _EMPTY, path, None, detail, None))
        match = self._match(hit, path)
        if self._mixed_case or (segments is not values and self._case_matters(segments, values)):
            # Literals match case-insensitively; when the exact spelling would reach
            # another rule (or none), a case-sensitive upstream routes it there: both
            # rules must allow, so case can make a request stricter, never looser.
            exact_hit = self._exact.match(method, values, values)
            if not _same(hit, exact_hit):
                also = self._match(exact_hit, path)
                if also.denied is not None:
                    detail = "its exact-case spelling matches no rule"
                    return match._replace(denied=also.denied, public=False, detail=detail)
                return match._replace(public=match.public and also.public, also=also)
        return match

    def _match(self, hit: tuple[RuleSpec, dict[str, str]] | None, path: str) -> RouteMatch:
        if hit is None:
            denied = "no_rule" if self.spec.default == "deny" else None
            return _new(RouteMatch, (False, denied, DEFAULT_RULE, _EMPTY, path, None, "", None))
        rule, params = hit
        # Matches are memoized and shared between requests: hand out read-only params.
        view = MappingProxyType(params) if params else _EMPTY
        return _new(RouteMatch, (rule.public, None, rule.name, view, path, rule, "", None))

    def _fixed(self, allowed: bool, reason: str, rule: str) -> PolicyDecision:
        key = (allowed, reason, rule)
        decision = self._fixed_decisions.get(key)
        if decision is None:
            decision = self._fixed_decisions[key] = PolicyDecision(allowed, reason, None, rule)
        return decision

    def scope_set(self, scopes: frozenset[str]) -> ScopeSet:
        """The compiled form of a token's scopes (memoized, bounded)."""
        compiled = self._scope_cache.get(scopes)
        if compiled is None:
            if len(self._scope_cache) >= _CACHE_MAX:
                self._scope_cache.clear()
            compiled = self._scope_cache[scopes] = ScopeSet.from_scopes(scopes)
        return compiled

    def authorize(
        self,
        match: RouteMatch,
        identity: PolicyIdentity,
        headers: Mapping[str, str] | None = None,
        *,
        scopes: ScopeSet | None = None,
    ) -> PolicyDecision:
        """Decide ``match`` for ``identity``; ``headers`` maps lower-case names to values.

        ``scopes`` is the token's compiled :class:`ScopeSet` if the caller caches one;
        otherwise the policy compiles (and memoizes) it from ``identity.scopes``.
        """
        public, denied, name, params, _, rule, _, also = match  # one step, not six lookups
        if denied is not None:
            return self._fixed(False, denied, name)
        if public:
            return self._fixed(True, "public", name)
        if rule is None:  # default = "authenticated": any valid token
            decision = self._default_ok
        else:
            own = rule.own
            owner_match = own is not None and params.get(own) == identity.owner_id
            # The scope verdict depends only on (token scopes, rule, owner_match).
            key = (identity.scopes, rule, owner_match)
            verdict = self._verdicts.get(key)
            if verdict is None:
                granted = scopes if scopes is not None else self.scope_set(identity.scopes)
                verdict = scope_verdict(granted, rule, owner_match)
                if len(self._verdicts) >= _CACHE_MAX:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
            if not verdict.allowed:
                return verdict
            decision = verdict
            if (rule.workspace_param or rule.workspace_header) and not workspace_ok(
                rule, params, identity.workspaces, headers
            ):
                return self._fixed(False, "workspace", rule.name)
        if also is not None:
            second = self.authorize(also, identity, headers, scopes=scopes)
            if not second.allowed:
                return second
        return decision


def _names(match: RouteMatch | None, method: str) -> bool:
    """Whether the matched rule (and its exact-case twin) lists ``method`` explicitly."""
    while match is not None:
        spec = match.spec
        if spec is None or spec.methods is None or method not in spec.methods:
            return False
        match = match.also
    return True


def _same(
    a: tuple[RuleSpec, dict[str, str]] | None, b: tuple[RuleSpec, dict[str, str]] | None
) -> bool:
    """Whether two views of a path reached the same rule with the same parameters."""
    if a is None or b is None:
        return a is b
    return a[0] is b[0] and a[1] == b[1]


def parse_policy(text: str, source: str) -> Policy:
    """Compile policy text; ``source`` (a file name) names it in errors and picks the
    format (``.yaml``/``.yml`` → YAML, else TOML)."""
    return Policy(build_spec(parse_document(text, source), source))


def load_policy(path: Path) -> Policy:
    """Read and compile a policy file; ``PolicyError`` names file, rule and field."""
    return parse_policy(read_text(path), str(path))


def default_policy() -> Policy:
    """Every route needs a valid token and no scope; nothing is public."""
    return Policy(PolicySpec("(built-in default)", "authenticated", "", ()))
