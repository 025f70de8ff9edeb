"""What a new token's scopes are when the creator does not list them (issue 13).

Three ways to say what a token may do, besides listing ``scopes``:

* **nothing** — the org's default applies (``Org.default_scopes``): by default *all the
  creator may grant*, as the product pages say ("Scopes — defaults to all available
  scopes"), i.e. the meet of what the creator and the owner may grant, **less the two
  admin-only management scopes** (``tokens:admin``, ``users:admin``): a token that can
  administer other people's tokens or users is never made by accident, only by naming
  it. An org may set another default, or ``scopes_required`` (no default at all);
* **a role** — one of the org's named scope sets (``Org.roles``, e.g. Developer, Admin),
  held as the org defines it *now* (:func:`patgate.middleware.grants.effective`);
* **restricted** — per resource of the org's catalogue (``Org.resources``), the
  operations the token gets: ``{"threads": ["read", "list"], "files": ["read"]}``.

Whatever the way, the result then goes through the same grant check as listed scopes
(:mod:`.granting`): nobody mints more than they may grant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from patgate.middleware.errors import Unprocessable, ValidationFailed
from patgate.middleware.records import Org
from patgate.policies.scopes import ACTIONS, MAX_SCOPES, intersect, is_admin_only

from .granting import Bounds
from .inputs import check_scopes as parse_scopes

__all__ = ["RESTRICTED_OPERATIONS", "default_scopes", "resolve_role", "restricted_scopes"]

#: the operations a restricted token may get per resource (the product pages' list).
RESTRICTED_OPERATIONS = (
    "create",
    "read",
    "list",
    "update",
    "delete",
    "share",
    "unshare",
    "publish",
    "subscribe",
)
#: every action but ``admin``: the meet of a wildcard grant with these drops exactly the
#: admin-only scopes (``*`` → ``*:create``, ``*:read``, … ``*:write``).
_NOT_ADMIN = tuple(f"*:{a}" for a in sorted(ACTIONS - {"admin"}))


def default_scopes(org: Org, bounds: Sequence[Bounds | None]) -> tuple[str, ...]:
    """The scopes of a token created with none named (module docstring)."""
    if org.scopes_required:
        raise ValidationFailed(
            "scopes: this organization requires every token to name its scopes or a role"
        )
    if org.default_scopes is not None:
        return org.default_scopes
    grant: tuple[str, ...] | None = None
    for bound in bounds:
        if bound is not None:
            grant = bound.scopes if grant is None else intersect(grant, bound.scopes)
    out: dict[str, None] = {}
    for scope in grant or ():
        if is_admin_only(scope):
            out.update(dict.fromkeys(intersect([scope], _NOT_ADMIN)))
        else:
            out[scope] = None
    if len(out) > MAX_SCOPES:
        # The grant is wider than one token may carry: say so, rather than blame
        # "scopes" the creator never gave.
        raise ValidationFailed(
            f"scopes: all you may grant is {len(out)} scopes, more than a token may carry "
            f"({MAX_SCOPES}); name the scopes, or set the organization's default_scopes"
        )
    return parse_scopes(list(out))


def resolve_role(org: Org, role: Any) -> str | None:
    """The org's spelling of the role named (names are case-insensitive), or None."""
    if role is None:
        return None
    if not isinstance(role, str):
        raise ValidationFailed("role: expected the name of one of the organization's roles")
    for name in org.roles:
        if name.casefold() == role.casefold():
            return name
    known = ", ".join(sorted(org.roles)) or "none defined"
    raise ValidationFailed(f"role: {role[:40]!r} is not a role of this organization ({known})")


def restricted_scopes(org: Org, restricted: Any) -> tuple[str, ...]:
    """Per-resource operations → scopes, checked against the org's catalogue."""
    if not isinstance(restricted, Mapping) or not restricted:
        raise ValidationFailed(
            'restricted: expected {"<resource>": ["read", "list", ...], ...} with at least '
            "one resource"
        )
    if not org.resources:
        raise Unprocessable(
            "restricted: this organization defines no resources (set them with "
            "PUT /v1/orgs/{id} resources)",
            code="no_resource_catalogue",
        )
    scopes: list[str] = []
    for resource, operations in restricted.items():
        if resource not in org.resources:
            raise ValidationFailed(
                f"restricted: {str(resource)[:64]!r} is not one of the organization's resources"
            )
        if not isinstance(operations, list) or not all(isinstance(o, str) for o in operations):
            raise ValidationFailed(f"restricted.{resource}: expected a list of operations")
        for op in operations:
            if op not in RESTRICTED_OPERATIONS:
                raise ValidationFailed(
                    f"restricted.{resource}: {op[:20]!r} is not one of "
                    + ", ".join(RESTRICTED_OPERATIONS)
                )
            scopes.append(f"{resource}:{op}")
    if not scopes:
        raise ValidationFailed("restricted: give at least one operation")
    return parse_scopes(scopes, "restricted")
