"""The policy document schema: a parsed TOML/YAML mapping → validated :class:`PolicySpec`.

Every problem is reported, not just the first, one line each, as
``<file>: rule <n> '<name>', field '<field>': <what is wrong>`` (or
``<file>: field '<field>': ...`` for top-level fields) and raised together in one
:class:`~patgate.policies.errors.PolicyError`. See docs/policies.md for the language.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from patgate.policies.errors import PolicyError
from patgate.policies.routes import Template, parse_template
from patgate.policies.scopes import validate_required

__all__ = ["DEFAULTS", "PREFLIGHT", "PolicySpec", "RuleSpec", "build_spec"]

DEFAULTS = ("deny", "authenticated")
#: values of the top-level ``preflight`` key (CORS preflight without credentials).
PREFLIGHT = ("authenticate", "allow")
_TOP_KEYS = frozenset({"version", "default", "description", "preflight", "rules"})
_RULE_KEYS = frozenset(
    {
        "name",
        "description",
        "methods",
        "path",
        "paths",
        "public",
        "scopes",
        "any_scopes",
        "own",
        "workspace_param",
        "workspace_header",
    }
)
_METHOD_RE = re.compile(r"[A-Z][A-Z-]{0,31}", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", re.ASCII)
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)  # RFC 9110 token
_PARAM_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)


@dataclass(frozen=True, slots=True, eq=False)
class RuleSpec:
    """One validated rule, as written (templates parsed).

    Compared and hashed by identity: the engine keys memos by rule object, and a rule of
    one loaded policy must never be confused with an equal-looking one of another.
    """

    index: int
    name: str
    description: str
    #: upper-case methods, or ``None`` for every method.
    methods: frozenset[str] | None
    templates: tuple[Template, ...]
    public: bool
    all_of: tuple[str, ...]
    any_of: tuple[str, ...]
    own: str | None
    workspace_param: str | None
    #: lower-case header name.
    workspace_header: str | None


@dataclass(frozen=True, slots=True)
class PolicySpec:
    source: str
    default: Literal["deny", "authenticated"]
    description: str
    rules: tuple[RuleSpec, ...]
    #: ``"allow"``: CORS preflights pass without a token (Kong's ``run_on_preflight =
    #: false``); ``"authenticate"`` (default): they are decided like any request.
    preflight: Literal["authenticate", "allow"] = "authenticate"


class _Errors:
    """Collects one line per problem."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, field: str, message: str) -> None:
        self.lines.append(f"{self.source}: {where}field '{field}': {message}")


def _str_field(
    rule: Mapping[str, Any], key: str, errs: _Errors, where: str, *, pattern: re.Pattern[str]
) -> str | None:
    value = rule.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        errs.add(where, key, f"{value!r} is not a valid value (expected {pattern.pattern})")
        return None
    return value


def _scopes(rule: Mapping[str, Any], key: str, errs: _Errors, where: str) -> tuple[str, ...]:
    value = rule.get(key, [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        errs.add(where, key, "must be a list of scope strings")
        return ()
    out: list[str] = []
    for s in value:
        try:
            out.append(validate_required(s))
        except ValueError as exc:
            errs.add(where, key, str(exc))
    return tuple(dict.fromkeys(out))


def _methods(rule: Mapping[str, Any], errs: _Errors, where: str) -> frozenset[str] | None:
    value = rule.get("methods", "*")
    if value == "*":
        return None
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        errs.add(where, "methods", 'must be "*" or a non-empty list of HTTP methods')
        return None
    bad = [m for m in value if not _METHOD_RE.fullmatch(m.upper())]
    if bad:
        errs.add(where, "methods", f"invalid method(s) {', '.join(map(repr, bad))}")
    if "*" in value:
        errs.add(where, "methods", 'use methods = "*" alone, not inside a list')
    return frozenset(m.upper() for m in value)


def _templates(rule: Mapping[str, Any], errs: _Errors, where: str) -> tuple[Template, ...]:
    if ("path" in rule) == ("paths" in rule):
        errs.add(where, "path", "give exactly one of 'path' (a string) or 'paths' (a list)")
        return ()
    key = "path" if "path" in rule else "paths"
    raw = rule[key]
    items = [raw] if key == "path" else raw
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        errs.add(where, key, "must be a path template string" if key == "path" else
                 "must be a non-empty list of path template strings")  # fmt: skip
        return ()
    out: list[Template] = []
    for text in items:
        try:
            out.append(parse_template(text))
        except ValueError as exc:
            errs.add(where, key, str(exc))
    return tuple(out)


def _rule(index: int, rule: Any, errs: _Errors) -> RuleSpec | None:
    if not isinstance(rule, Mapping):
        errs.add(f"rule {index} ", "rules", "each rule must be a table/mapping")
        return None
    raw_name = rule.get("name", f"#{index}")
    where = f"rule {index} {raw_name!r}, "
    name = _str_field(rule, "name", errs, where, pattern=_NAME_RE) or f"#{index}"
    for key in sorted(set(rule) - _RULE_KEYS):
        errs.add(where, key, f"unknown field (known: {', '.join(sorted(_RULE_KEYS))})")
    description = rule.get("description", "")
    if not isinstance(description, str):
        errs.add(where, "description", "must be a string")
        description = ""
    public = rule.get("public", False)
    if not isinstance(public, bool):
        errs.add(where, "public", "must be true or false")
        public = False
    templates = _templates(rule, errs, where)
    header = _str_field(rule, "workspace_header", errs, where, pattern=_HEADER_RE)
    spec = RuleSpec(
        index=index,
        name=name,
        description=description,
        methods=_methods(rule, errs, where),
        templates=templates,
        public=public,
        all_of=_scopes(rule, "scopes", errs, where),
        any_of=_scopes(rule, "any_scopes", errs, where),
        own=_str_field(rule, "own", errs, where, pattern=_PARAM_NAME_RE),
        workspace_param=_str_field(rule, "workspace_param", errs, where, pattern=_PARAM_NAME_RE),
        workspace_header=header.lower() if header is not None else None,
    )
    if public and (spec.all_of or spec.any_of or spec.own or spec.workspace_param or header):
        errs.add(
            where, "public", "a public rule cannot also require scopes, own or workspace binding"
        )
    for key, param in (("own", spec.own), ("workspace_param", spec.workspace_param)):
        for t in templates:
            if param is not None and param not in t.params:
                errs.add(where, key, f"parameter {{{param}}} is not in path template {t.text!r}")
    return spec


def build_spec(doc: Mapping[str, Any], source: str) -> PolicySpec:
    """Validate a parsed policy document; raises ``PolicyError`` listing every problem."""
    errs = _Errors(source)
    for key in sorted(set(doc) - _TOP_KEYS):
        errs.add("", key, f"unknown top-level field (known: {', '.join(sorted(_TOP_KEYS))})")
    if doc.get("version", 1) != 1:
        errs.add("", "version", f"unsupported version {doc.get('version')!r} (only 1)")
    default = doc.get("default", "deny")
    if default not in DEFAULTS:
        errs.add("", "default", f"{default!r} is not one of {', '.join(DEFAULTS)}")
        default = "deny"
    description = doc.get("description", "")
    if not isinstance(description, str):
        errs.add("", "description", "must be a string")
        description = ""
    preflight = doc.get("preflight", "authenticate")
    if preflight not in PREFLIGHT:
        errs.add("", "preflight", f"{preflight!r} is not one of {', '.join(PREFLIGHT)}")
        preflight = "authenticate"
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        errs.add("", "rules", "must be an array of tables ([[rules]])")
        raw_rules = []
    rules: list[RuleSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules, start=1):
        spec = _rule(index, raw, errs)
        if spec is None:
            continue
        if spec.name in seen:
            errs.add(
                f"rule {index} {spec.name!r}, ", "name", f"duplicate of rule {seen[spec.name]}"
            )
        seen.setdefault(spec.name, index)
        rules.append(spec)
    if errs.lines:
        raise PolicyError("\n".join(errs.lines))
    return PolicySpec(source, default, description, tuple(rules), preflight)
