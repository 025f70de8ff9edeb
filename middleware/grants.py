"""What an owner may grant, and what a token may therefore do (issue 9: no escalation).

A token's **effective** scopes are its own scopes intersected with what its owner may
grant *now*; its effective workspaces likewise. The data plane and the management API's
caller resolution both use :func:`effective`, so demoting a user, shrinking an org's
catalogue or withdrawing a workspace shrinks every token at the next lookup — which the
cache invalidations (``u <org>/<id>``, ``o <org>``) make immediate.

What a user may grant::

    base   = user.grantable_scopes              (synced by the host), or else
             org.admin_scopes  for admins       (default ["*"])
             org.member_scopes for members      (default []: nothing configured, nothing granted)
    + SELF_SERVICE_SCOPES                       while the user has the token permission
    members never: ADMIN_ONLY_SCOPES            (any entry that would grant them is dropped)

Org-owned tokens are created by admins only, so their bound is ``org.admin_scopes``.
A missing org record counts as an org with the defaults; a missing user grants nothing.

A token with a role (issue 13) holds the role's scopes as the org defines them *now*,
beside its own: ``(token.scopes + org.roles[token.role]) ∩ grantable``. Editing a role
flushes every cache (``o <org>``), so it takes effect as fast as a revoke; a role the org
no longer has adds nothing.
"""

from __future__ import annotations

from patgate.policies.scopes import SELF_SERVICE_SCOPES, intersect, is_admin_only

from .records import Org, Token, User

__all__ = [
    "effective",
    "grantable",
    "grantable_workspaces",
    "role_scopes",
    "ungranted_workspaces",
]


def grantable(org: Org | None, user: User | None, *, org_owned: bool = False) -> tuple[str, ...]:
    """The scopes a token of this owner may carry (see the module docstring)."""
    org = org if org is not None else Org(id="", name="")
    if org_owned:
        return org.admin_scopes
    if user is None:
        return ()
    if user.grantable_scopes is not None:
        base = user.grantable_scopes
    else:
        base = org.admin_scopes if user.role == "admin" else org.member_scopes
    if user.role != "admin":
        # Deny when in doubt: an entry such as "*" or "tokens:*" cannot be narrowed to
        # "everything but tokens:admin" in the scope grammar, so it is dropped whole.
        base = tuple(s for s in base if not is_admin_only(s))
    if user.can_manage_tokens:
        base = (*base, *SELF_SERVICE_SCOPES)
    return tuple(dict.fromkeys(base))


def grantable_workspaces(user: User | None) -> tuple[str, ...] | None:
    """The workspaces a user's tokens may name; ``None`` = every workspace."""
    return None if user is None else user.workspaces


def ungranted_workspaces(
    wanted: tuple[str, ...] | None, bound: tuple[str, ...] | None
) -> list[str]:
    """Workspaces in ``wanted`` outside ``bound`` (``["*"]`` when ``wanted`` is every
    workspace but ``bound`` is not); empty when ``wanted`` ⊆ ``bound``."""
    if bound is None:
        return []
    if wanted is None:
        return ["*"]
    allowed = set(bound)
    return [w for w in wanted if w not in allowed]


def role_scopes(org: Org | None, role: str | None) -> tuple[str, ...]:
    """The scopes a role stands for in ``org`` now (none for no role, or one it lacks)."""
    if role is None or org is None:
        return ()
    scopes = org.roles.get(role)
    if scopes is not None:
        return scopes
    # Role names are case-insensitive: a role the org re-spelled ("Developer" →
    # "developer") is still the token's role.
    folded = role.casefold()
    return next((s for name, s in org.roles.items() if name.casefold() == folded), ())


def effective(
    token: Token, org: Org | None, user: User | None
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """(scopes, workspaces) the token may use right now; workspaces ``None`` = all."""
    org_owned = token.owner_kind == "org"
    held = token.scopes + role_scopes(org, token.role) if token.role else token.scopes
    scopes = intersect(held, grantable(org, user, org_owned=org_owned))
    bound = None if org_owned else grantable_workspaces(user)
    if bound is None:
        return scopes, token.workspaces
    if token.workspaces is None:
        return scopes, bound
    allowed = set(bound)
    return scopes, tuple(w for w in token.workspaces if w in allowed)
