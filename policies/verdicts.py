"""Policy decisions and the two checks behind them: scopes and workspaces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from patgate.policies.schema import RuleSpec
from patgate.policies.scopes import ScopeSet

__all__ = ["REASONS", "PolicyDecision", "scope_verdict", "workspace_ok"]

#: every value :attr:`PolicyDecision.reason` takes.
REASONS = (
    "ok",
    "public",
    "insufficient_scope",
    "workspace",
    "own",
    "bad_path",
    "no_rule",
    "method_not_allowed",
)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    #: one of :data:`REASONS`.
    reason: str
    #: scope(s) to name in ``WWW-Authenticate: Bearer error="insufficient_scope",
    #: scope="..."`` (space-separated); ``None`` unless the reason is a scope problem.
    missing_scope: str | None
    rule: str


def _missing(granted: ScopeSet, rule: RuleSpec, owner_match: bool) -> list[str]:
    """Required scopes not granted: every missing all-of scope, and the first any-of
    alternative when none of them is granted."""
    missing = [s for s in rule.all_of if not granted.grants(s, owner_match)]
    if rule.any_of and not any(granted.grants(s, owner_match) for s in rule.any_of):
        missing.append(rule.any_of[0])
    return missing


def scope_verdict(granted: ScopeSet, rule: RuleSpec, owner_match: bool) -> PolicyDecision:
    """``ok``, or ``insufficient_scope`` / ``own`` with the missing scope(s)."""
    missing = _missing(granted, rule, owner_match)
    if not missing:
        return PolicyDecision(True, "ok", None, rule.name)
    # A rule binding :own whose parameter is not the caller: say so when an :own grant
    # would have been enough, so the 403 is explainable.
    own_fixes = rule.own is not None and not owner_match and not _missing(granted, rule, True)
    reason = "own" if own_fixes else "insufficient_scope"
    return PolicyDecision(False, reason, " ".join(missing), rule.name)


def workspace_ok(
    rule: RuleSpec,
    params: Mapping[str, str],
    workspaces: frozenset[str] | None,
    headers: Mapping[str, str] | None,
) -> bool:
    """Whether the rule's workspace parameter/header names one of the token's workspaces
    (``workspaces`` of ``None``: every workspace)."""
    if rule.workspace_param is not None:
        value = params.get(rule.workspace_param)
        if value is None or (workspaces is not None and value not in workspaces):
            return False
    if rule.workspace_header is not None:
        value = (headers or {}).get(rule.workspace_header)
        # A header that is missing or lists several values ("a, b") never binds.
        if value is None or "," in value:
            return False
        if workspaces is not None and value.strip() not in workspaces:
            return False
    return True
