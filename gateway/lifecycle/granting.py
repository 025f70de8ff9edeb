"""The grant check of every write that gives a token power: create, edit, regenerate.

A token may carry only scopes and workspaces that both its owner and the actor may
grant (:mod:`middleware.grants`). The data plane bounds every token by its owner's grant
again at decision time, so this check is what makes the refusal visible (403 with a
code) instead of a token that silently does less than it says.

The actor's bound is computed from the store, never taken from the caller: a user actor
may grant what :func:`~middleware.grants.grantable` gives its user record now; an
org-owned token acting as the caller may grant no more than its own effective scopes;
the local operator (``system``) is unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from patgate.middleware.errors import Forbidden
from patgate.middleware.grants import grantable, grantable_workspaces, ungranted_workspaces
from patgate.middleware.records import Org, OwnerKind, User
from patgate.policies.scopes import ungranted

from .actor import Actor

__all__ = ["Bounds", "actor_bounds", "check_scopes", "check_workspaces", "owner_bounds"]

Scopes = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one party may grant: scopes, and workspaces (``None`` = every one)."""

    who: str
    scopes: Scopes
    workspaces: Scopes | None


def owner_bounds(org: Org | None, owner_kind: OwnerKind, owner: User | None) -> Bounds:
    if owner_kind == "org":
        return Bounds("the organization's tokens", grantable(org, None, org_owned=True), None)
    return Bounds("this token's owner", grantable(org, owner), grantable_workspaces(owner))


def actor_bounds(actor: Actor, org: Org | None, actor_user: User | None) -> Bounds | None:
    """``None`` for the local operator; else what the actor may hand out."""
    if actor.is_system:
        return None
    if actor.kind == "user":
        return Bounds("you", grantable(org, actor_user), grantable_workspaces(actor_user))
    return Bounds("you", tuple(sorted(actor.scopes)), None)


def _show(items: list[str]) -> str:
    return ", ".join(items[:5]) + (" …" if len(items) > 5 else "")


def check_scopes(bounds: list[Bounds | None], scopes: Scopes) -> None:
    """Refuse (403 ``scope_not_grantable``) scopes outside any of ``bounds``."""
    for bound in bounds:
        if bound is None:
            continue
        missing = ungranted(scopes, bound.scopes)
        if missing:
            raise Forbidden(
                f"scopes not grantable by {bound.who}: {_show(missing)}"
                if bound.who == "you"
                else f"scopes not grantable to {bound.who}: {_show(missing)}",
                code="scope_not_grantable",
            )


def check_workspaces(bounds: list[Bounds | None], workspaces: Scopes | None) -> None:
    """Refuse (403 ``workspace_not_grantable``) workspaces (``None`` = every one) outside
    any of ``bounds``."""
    for bound in bounds:
        if bound is None:
            continue
        outside = ungranted_workspaces(workspaces, bound.workspaces)
        if outside:
            raise Forbidden(
                f"workspaces not grantable: {_show(outside)}", code="workspace_not_grantable"
            )
