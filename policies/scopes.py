"""Scope strings: syntax, presets and the matcher.

Grammar (case-insensitive; normalized to lower case)::

    scope    = preset / "*" / resource ":" action [ ":own" ]
    preset   = "all" / "read-only" / "restricted"
    resource = "*" / %x61-7A *( %x61-7A / DIGIT / "_" / "-" )      ; [a-z][a-z0-9_-]*
    action   = "*" / "create" / "read" / "list" / "update" / "delete" / "share"
             / "unshare" / "publish" / "subscribe" / "write" / "admin"

Presets are kept as written in a token's scope list and expanded only when matching:

* ``all``        = ``*`` (every resource, every action, anyone's resources)
* ``read-only``  = ``*:read`` + ``*:list``
* ``restricted`` = ``*:read:own`` + ``*:list:own`` (read and list, own resources only)

Matching rules (``grants``):

* A granted scope satisfies a required ``resource:action`` when each part is equal or the
  granted part is ``*``. ``*`` and ``*:*`` grant everything.
* A granted ``...:own`` scope satisfies a requirement only when ``owner_match`` is true —
  the policy bound a path parameter to the token's owner and the values agreed.
* A required ``resource:action:own`` means "this action on the caller's own resources"
  (the handler behind the route enforces ownership, e.g. the management API listing the
  caller's tokens): it is satisfied by ``resource:action`` *or* ``resource:action:own``,
  i.e. it is the same as requiring ``resource:action`` with ``owner_match=True``.
* A required wildcard (``threads:*``) is satisfied only by a grant at least as broad.
* Actions are literal: ``write`` does not imply ``create``, and ``tokens:admin`` grants
  nothing but ``tokens:admin`` — only wildcards and presets expand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "ADMIN_ONLY_SCOPES",
    "MANAGEMENT_SCOPES",
    "MAX_SCOPES",
    "MAX_SCOPE_LENGTH",
    "PRESETS",
    "SELF_SERVICE_SCOPES",
    "ScopeSet",
    "expand",
    "grants",
    "intersect",
    "is_admin_only",
    "ungranted",
    "validate_required",
    "validate_scopes",
]

ACTIONS = frozenset(
    {
        "create",
        "read",
        "list",
        "update",
        "delete",
        "share",
        "unshare",
        "publish",
        "subscribe",
        "write",
        "admin",
    }
)

#: preset name → the scopes it stands for (expanded at match time).
PRESETS: dict[str, tuple[str, ...]] = {
    "all": ("*",),
    "read-only": ("*:read", "*:list"),
    "restricted": ("*:read:own", "*:list:own"),
}

MANAGEMENT_SCOPES = ("tokens:read:own", "tokens:write:own", "tokens:admin", "users:admin")
#: management scopes over other people's tokens and users: only admins may hold them.
ADMIN_ONLY_SCOPES = ("tokens:admin", "users:admin")
#: managing one's own tokens: grantable by anyone who holds the token permission.
SELF_SERVICE_SCOPES = ("tokens:read:own", "tokens:write:own")

MAX_SCOPES = 64
MAX_SCOPE_LENGTH = 100

_SCOPE_RE = re.compile(
    r"(?P<res>\*|[a-z][a-z0-9_-]*):(?P<act>\*|[a-z]+)(?P<own>:own)?",
    re.ASCII,
)


def _show(value: str) -> str:
    """A bounded, printable rendering of a user-supplied string for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def _check_one(raw: object, *, allow_presets: bool) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"scope {raw!r} is not a string")
    if raw == "":
        raise ValueError("empty scope")
    if len(raw) > MAX_SCOPE_LENGTH:
        raise ValueError(f"scope {_show(raw)} is longer than {MAX_SCOPE_LENGTH} characters")
    if any(ch.isspace() for ch in raw):
        raise ValueError(f"scope {_show(raw)} contains whitespace")
    scope = raw.lower()
    if scope == "*":
        return scope
    if scope in PRESETS:
        if not allow_presets:
            raise ValueError(f"preset {scope!r} can be granted but not required")
        return scope
    m = _SCOPE_RE.fullmatch(scope)
    if m is None:
        raise ValueError(
            f"invalid scope {_show(raw)}: expected resource:action[:own], '*', "
            "or a preset (all, read-only, restricted)"
        )
    if m["act"] != "*" and m["act"] not in ACTIONS:
        raise ValueError(
            f"invalid scope {_show(raw)}: unknown action {m['act']!r} "
            f"(one of {', '.join(sorted(ACTIONS))}, or '*')"
        )
    return scope


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Check scope syntax; return them lower-cased, deduplicated and sorted.

    Raises ``ValueError`` with a message naming the offending scope.
    """
    if isinstance(scopes, str | bytes):
        # A bare string would otherwise be iterated character by character.
        raise ValueError("scopes must be a list of strings, not a single string")
    items = list(scopes)
    if len(items) > MAX_SCOPES:
        raise ValueError(f"too many scopes ({len(items)} > {MAX_SCOPES})")
    return tuple(sorted({_check_one(s, allow_presets=True) for s in items}))


def validate_required(scope: str) -> str:
    """Check one scope a policy *requires*: the grant grammar without presets."""
    return _check_one(scope, allow_presets=False)


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """A token's scopes compiled for O(1) checks (the data plane caches one per token).

    Each granted scope lands in one bucket, separately for plain and ``:own`` grants:
    ``star`` (``*``), ``by_resource`` (``r:*``), ``by_action`` (``*:a``), ``exact``
    (``r:a``). A check is then a handful of set lookups — no regex, no loop over grants.
    """

    scopes: frozenset[str]
    star: bool
    by_resource: frozenset[str]
    by_action: frozenset[str]
    exact: frozenset[str]
    own_star: bool
    own_by_resource: frozenset[str]
    own_by_action: frozenset[str]
    own_exact: frozenset[str]

    @classmethod
    def from_scopes(cls, scopes: Iterable[str]) -> ScopeSet:
        """Compile granted scopes; invalid strings are ignored (they grant nothing)."""
        given = frozenset(s.lower() for s in scopes if isinstance(s, str))
        expanded: list[str] = []
        for s in given:
            expanded.extend(PRESETS.get(s, (s,)))
        buckets: tuple[set[str], ...] = (set(), set(), set(), set(), set(), set())
        star = own_star = False
        for s in expanded:
            if s == "*":
                star = True
                continue
            m = _SCOPE_RE.fullmatch(s)
            if m is None or (m["act"] != "*" and m["act"] not in ACTIONS):
                continue
            res, act, own = m["res"], m["act"], m["own"] is not None
            base = 3 if own else 0
            if res == "*" and act == "*":
                if own:
                    own_star = True
                else:
                    star = True
            elif act == "*":
                buckets[base].add(res)
            elif res == "*":
                buckets[base + 1].add(act)
            else:
                buckets[base + 2].add(f"{res}:{act}")
        return cls(
            scopes=given,
            star=star,
            by_resource=frozenset(buckets[0]),
            by_action=frozenset(buckets[1]),
            exact=frozenset(buckets[2]),
            own_star=own_star,
            own_by_resource=frozenset(buckets[3]),
            own_by_action=frozenset(buckets[4]),
            own_exact=frozenset(buckets[5]),
        )

    def grants(self, required: str, owner_match: bool = False) -> bool:
        """Whether these scopes satisfy ``required`` (a valid, lower-case scope)."""
        if self.star:
            return True
        res, _, act = required.partition(":")
        if act.endswith(":own"):
            act = act[:-4]
            required = required[:-4]
            owner_match = True
        if res in self.by_resource or act in self.by_action or required in self.exact:
            return True
        if not owner_match:
            return False
        return (
            self.own_star
            or res in self.own_by_resource
            or act in self.own_by_action
            or required in self.own_exact
        )


def grants(granted: frozenset[str], required: str, *, owner_match: bool = False) -> bool:
    """Whether any scope, wildcard or preset in ``granted`` satisfies ``required``.

    ``required`` is lower-cased first; an invalid requirement is never satisfied except by
    ``*`` (it cannot name anything narrower). For repeated checks on one token compile a
    :class:`ScopeSet` once instead.
    """
    return ScopeSet.from_scopes(granted).grants(required.lower(), owner_match)


# -- grant algebra (issue 9: nobody mints or holds a token beyond their own grant) ------


def expand(scopes: Iterable[str]) -> tuple[str, ...]:
    """Presets replaced by what they stand for; ``*:*`` spelled ``*``; invalid dropped."""
    out: list[str] = []
    for raw in scopes:
        s = raw.lower()
        for one in PRESETS.get(s, (s,)):
            if one in ("*", "*:*"):
                out.append("*")
                continue
            m = _SCOPE_RE.fullmatch(one)
            if m is not None and (m["act"] == "*" or m["act"] in ACTIONS):
                out.append(one)
    return tuple(dict.fromkeys(out))


def _parts(scope: str) -> tuple[str, str, bool]:
    if scope == "*":
        return "*", "*", False
    res, act, *own = scope.split(":")
    return res, act, bool(own)


def _meet_part(a: str, b: str) -> str | None:
    if a == "*":
        return b
    if b == "*" or a == b:
        return a
    return None


def _meet(a: str, b: str) -> str | None:
    """The broadest single scope that both ``a`` and ``b`` grant (expanded forms), or
    None: each part is the narrower of the two, and ``:own`` if either says so."""
    ra, aa, oa = _parts(a)
    rb, ab, ob = _parts(b)
    res, act = _meet_part(ra, rb), _meet_part(aa, ab)
    if res is None or act is None:
        return None
    own = oa or ob
    if res == "*" and act == "*" and not own:
        return "*"
    return f"{res}:{act}" + (":own" if own else "")


def intersect(granted: Iterable[str], bound: Iterable[str]) -> tuple[str, ...]:
    """What a token with scopes ``granted`` may still do when its owner may grant only
    ``bound``: every pairwise meet, sorted (a finite, exact intersection, because each
    scope is a product of a resource set, an action set and an ownership flag)."""
    bounds = expand(bound)
    compiled = ScopeSet.from_scopes(bounds)
    out: set[str] = set()
    for g in expand(granted):
        if compiled.grants(g):
            out.add(g)  # wholly inside the bound: keep it as written (threads:* stays)
        else:
            out.update(m for b in bounds if (m := _meet(g, b)) is not None)
    return tuple(sorted(out))


def ungranted(scopes: Iterable[str], bound: Iterable[str]) -> list[str]:
    """The scopes (as written) that ``bound`` does not fully cover; empty = a subset."""
    compiled = ScopeSet.from_scopes(bound)
    missing: list[str] = []
    for raw in scopes:
        if not all(compiled.grants(one) for one in expand([raw])) or not expand([raw]):
            missing.append(raw)
    return missing


def is_admin_only(scope: str) -> bool:
    """Whether ``scope`` grants any of :data:`ADMIN_ONLY_SCOPES` (``*``, ``tokens:*`` …)."""
    compiled = ScopeSet.from_scopes([scope])
    return any(compiled.grants(s) for s in ADMIN_ONLY_SCOPES)
