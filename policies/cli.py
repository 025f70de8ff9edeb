"""``patgate policy check|explain``: validate a policy file, or explain one decision.

Exit codes: ``check`` 0 valid / 1 invalid; ``explain`` 0 allowed / 3 denied / 1 the
policy or the arguments are invalid. Errors go to stderr, one line each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from patgate.policies.engine import Policy, load_policy
from patgate.policies.errors import PolicyError
from patgate.policies.identity import Caller
from patgate.policies.schema import RuleSpec
from patgate.policies.scopes import validate_scopes

__all__ = ["EXIT_DENIED", "cmd_check", "cmd_explain", "register"]

EXIT_DENIED = 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy`` command (``check``, ``explain``) to a CLI."""
    policy = subparsers.add_parser("policy", help="validate or explain a route policy file")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a policy file (exit 0 valid, 1 invalid)")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser(
        "explain",
        help="show which rule a request matches and why it is allowed or denied",
        epilog="exit status: 0 allowed, 3 denied, 1 invalid policy or arguments",
    )
    explain.add_argument("file", type=Path, metavar="FILE")
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("path", metavar="PATH", help="raw request path, as sent")
    explain.add_argument(
        "--scopes", nargs="*", default=[], metavar="S", help="the token's scopes (default none)"
    )
    explain.add_argument("--owner", default="owner", metavar="ID", help="the token owner's id")
    explain.add_argument(
        "--workspaces",
        nargs="*",
        default=None,
        metavar="W",
        help="the token's workspaces (default: every workspace)",
    )
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request header, for workspace binding (repeatable)",
    )
    explain.set_defaults(func=cmd_explain)


def _load(file: Path) -> Policy | None:
    try:
        return load_policy(file)
    except PolicyError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    if policy is None:
        return 1
    spec = policy.spec
    print(f"ok: {args.file}: {len(spec.rules)} rules, default {spec.default}")
    return 0


def _describe(rule: RuleSpec) -> list[str]:
    methods = "*" if rule.methods is None else " ".join(sorted(rule.methods))
    lines = [
        f"  paths:     {', '.join(t.text for t in rule.templates)}",
        f"  methods:   {methods}",
    ]
    if rule.public:
        lines.append("  public:    yes (no token needed)")
    if rule.all_of:
        lines.append(f"  all of:    {' '.join(rule.all_of)}")
    if rule.any_of:
        lines.append(f"  any of:    {' '.join(rule.any_of)}")
    if rule.own:
        lines.append(f"  own:       {{{rule.own}}} must equal the token owner for :own scopes")
    if rule.workspace_param:
        lines.append(f"  workspace: {{{rule.workspace_param}}} must be a token workspace")
    if rule.workspace_header:
        lines.append(f"  workspace: header {rule.workspace_header} must be a token workspace")
    return lines


def cmd_explain(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    if policy is None:
        return 1
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"error: --header {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 1
        headers[name.strip().lower()] = value.strip()
    try:
        scopes = validate_scopes(args.scopes)
    except ValueError as exc:
        print(f"error: --scopes: {exc}", file=sys.stderr)
        return 1
    workspaces = args.workspaces
    # A stand-in identity: only scopes, owner and workspaces matter to the policy.
    identity = Caller(
        owner_id=args.owner,
        scopes=frozenset(scopes),
        workspaces=None if workspaces is None or "*" in workspaces else frozenset(workspaces),
    )
    match = policy.route(args.method, args.path)
    decision = policy.authorize(match, identity, headers)
    if match.denied == "bad_path":
        print(f"path:     rejected ({match.detail})")
    else:
        print(f"path:     {match.path}")
    if match.spec is not None:
        print(f"rule:     {match.rule} (rule {match.spec.index} in {policy.source})")
        print("\n".join(_describe(match.spec)))
    elif match.denied != "bad_path":
        print(f"rule:     {match.rule}: no rule matched; default is {policy.spec.default}")
    if match.also is not None:
        print(f"also:     {match.also.rule} (the exact-case spelling's rule; must allow too)")
    params = " ".join(f"{k}={v}" for k, v in match.params.items())
    print(f"params:   {params or '-'}")
    verdict = "ALLOW" if decision.allowed else "DENY"
    missing = f"; missing scope: {decision.missing_scope}" if decision.missing_scope else ""
    print(f"decision: {verdict} ({decision.reason}{missing})")
    return 0 if decision.allowed else EXIT_DENIED
