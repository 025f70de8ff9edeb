"""Users and organizations, synced from the host product.

Disabling a user or their ``can_manage_tokens`` permission suspends their tokens without
deleting them (every process drops them from its cache at once: ``u <id>``);
re-enabling makes them work again. Removing a user revokes their personal tokens;
org-owned tokens they created survive and keep ``created_by``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from patgate.middleware.errors import NotFound, ValidationFailed
from patgate.middleware.records import Org, Role, User, owner_key
from patgate.middleware.store import TokenStore, retry_stale
from patgate.policies.scopes import ADMIN_ONLY_SCOPES, is_admin_only, ungranted

from .actor import Actor
from .audit import event_json
from .expiry import parse_duration
from .inputs import check_id, check_scopes, check_workspaces
from .limits import MAX_TOKEN_LIMIT

__all__ = ["Directory"]

_ROLES: tuple[Role, ...] = ("member", "admin")
_USER_FIELDS = {
    "org_id",
    "email",
    "name",
    "role",
    "enabled",
    "can_manage_tokens",
    "workspaces",
    "grantable_scopes",
}
_ORG_FIELDS = {
    "name",
    "token_limit",
    "owner_token_limit",
    "max_lifetime",
    "allow_never",
    "member_scopes",
    "admin_scopes",
    "max_grace_period",
    "default_can_manage_tokens",
    "default_scopes",
    "scopes_required",
    "roles",
    "resources",
}
#: no leading or trailing space: "Dev" and "Dev " would look like one role.
_ROLE_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9 _.-]{0,38}[A-Za-z0-9_.-])?")
_RESOURCE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_MAX_ROLES = 32
_MAX_RESOURCES = 200


def _roles(body: dict[str, Any], default: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """``{"Developer": ["threads:*"], ...}``: named scope sets (issue 13)."""
    if "roles" not in body:
        return default
    raw = body["roles"]
    if not isinstance(raw, dict):
        raise ValidationFailed("roles: expected an object of role name → scopes")
    if len(raw) > _MAX_ROLES:
        raise ValidationFailed(f"roles: at most {_MAX_ROLES}")
    out: dict[str, tuple[str, ...]] = {}
    for name, scopes in raw.items():
        if not _ROLE_NAME.fullmatch(name):
            raise ValidationFailed(
                f"roles: {name[:40]!r} is not a role name (1-40 letters, digits, space, _ . -, "
                "starting with a letter)"
            )
        if name.casefold() in {n.casefold() for n in out}:
            raise ValidationFailed(f"roles: {name!r} twice (role names are case-insensitive)")
        out[name] = check_scopes(scopes, f"roles.{name}")
    return out


def _resources(body: dict[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    """The org's API resources, for restricted tokens (issue 13)."""
    if "resources" not in body:
        return default
    raw = body["resources"]
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise ValidationFailed("resources: expected a list of resource names")
    if len(raw) > _MAX_RESOURCES:
        raise ValidationFailed(f"resources: at most {_MAX_RESOURCES}")
    for r in raw:
        if not _RESOURCE.fullmatch(r):
            raise ValidationFailed(
                f"resources: {r[:64]!r} is not a resource name (lowercase letters, digits, "
                "_ and -, starting with a letter)"
            )
    return tuple(dict.fromkeys(raw))


#: the longest grace period an org may allow a regenerated token's previous secret.
_MAX_GRACE_LIMIT = 90 * 86_400
#: changes that alter what a user's tokens may do: every cache drops them at once.
_USER_POWER = ("enabled", "can_manage_tokens", "role", "workspaces", "grantable_scopes")


def _grant_list(body: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if key not in body:
        return default
    return check_scopes(body[key], key)


def _no_admin_only(scopes: tuple[str, ...], field: str) -> None:
    bad = [s for s in scopes if is_admin_only(s)]
    if bad:
        raise ValidationFailed(
            f"{field}: {', '.join(bad)} would let members grant admin-only scopes "
            f"({', '.join(ADMIN_ONLY_SCOPES)}); name the resources instead"
        )


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ValidationFailed(f"{key}: expected true or false")
    return value


def _limit(body: dict[str, Any], key: str, default: int | None) -> int | None:
    """A token limit: a count of active tokens, or null for none (issue 13)."""
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKEN_LIMIT:
        raise ValidationFailed(
            f"{key}: expected an integer from 1 to {MAX_TOKEN_LIMIT}, or null for no limit"
        )
    return value


def _text(body: dict[str, Any], key: str, default: str, limit: int = 200) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise ValidationFailed(f"{key}: expected a printable string of at most {limit} chars")
    return value


def _unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")


class Directory:
    def __init__(
        self,
        store: TokenStore,
        *,
        clock: Callable[[], float] = time.time,
        default_token_limit: int | None = 10,
        default_owner_token_limit: int | None = None,
        default_org: str = "default",
    ) -> None:
        self.store = store
        self.clock = clock
        #: the limits of an org created without naming them (None: off).
        self.default_token_limit = default_token_limit
        self.default_owner_token_limit = default_owner_token_limit
        #: the org the local operator means when it names no org.
        self.default_org = default_org

    # -- orgs ----------------------------------------------------------------------------

    async def get_org(self, actor: Actor, org_id: str) -> Org:
        actor.require_org(org_id)
        # Members read their org (its lifetime policy and limits) with the self-service
        # read scope, as policies/examples/management.toml's org-read rule says.
        if not actor.is_admin("users:admin"):
            actor.require("tokens:read", own=True)
        org = await self.store.get_org(org_id)
        if org is None:
            raise NotFound(f"organization {org_id} not found")
        return org

    async def put_org(self, actor: Actor, org_id: str, body: dict[str, Any]) -> Org:
        """Create or update (merge) an organization."""
        check_id(org_id, "org id")
        _unknown(body, _ORG_FIELDS)
        actor.require_admin("users:admin")
        actor.require_org(org_id)

        async def attempt() -> Org:
            old = await self.store.get_org(org_id)
            now = self.clock()
            base = old or Org(
                id=org_id,
                name=org_id,
                token_limit=self.default_token_limit,
                owner_token_limit=self.default_owner_token_limit,
                created_at=now,
            )
            limit = _limit(body, "token_limit", base.token_limit)
            owner_limit = _limit(body, "owner_token_limit", base.owner_token_limit)
            lifetime = (
                parse_duration(body["max_lifetime"], "max_lifetime")
                if "max_lifetime" in body
                else base.max_lifetime
            )
            grace = body.get("max_grace_period", base.max_grace_period)
            if (
                isinstance(grace, bool)
                or not isinstance(grace, int | float)
                or not 0 <= grace <= _MAX_GRACE_LIMIT
            ):
                raise ValidationFailed(
                    f"max_grace_period: expected seconds from 0 to {_MAX_GRACE_LIMIT} (90 days)"
                )
            member_scopes = _grant_list(body, "member_scopes", base.member_scopes)
            _no_admin_only(member_scopes, "member_scopes")
            admin_scopes = _grant_list(body, "admin_scopes", base.admin_scopes)
            lacking = [s for s in ADMIN_ONLY_SCOPES if ungranted([s], admin_scopes)]
            if lacking:
                # Admins would lose their own management tokens' power at once.
                raise ValidationFailed(
                    f"admin_scopes: must include {', '.join(lacking)} (or a wildcard)"
                )
            org_name = _text(body, "name", base.name)
            if not org_name.strip():
                raise ValidationFailed("name: an organization needs a non-blank name")
            default_scopes = base.default_scopes
            if "default_scopes" in body:
                raw = body["default_scopes"]
                default_scopes = None if raw is None else check_scopes(raw, "default_scopes")
                bad = [s for s in default_scopes or () if is_admin_only(s)]
                if bad:
                    # Admin-only scopes are only ever granted by naming them (issue 13).
                    raise ValidationFailed(
                        f"default_scopes: {', '.join(bad)} would give every new token "
                        f"{' or '.join(ADMIN_ONLY_SCOPES)}; name those when needed instead"
                    )
            roles = _roles(body, base.roles)
            new = base.evolve(
                name=org_name,
                token_limit=limit,
                owner_token_limit=owner_limit,
                max_lifetime=lifetime,
                allow_never=_bool(body, "allow_never", base.allow_never),
                member_scopes=member_scopes,
                admin_scopes=admin_scopes,
                max_grace_period=float(grace),
                default_can_manage_tokens=_bool(
                    body, "default_can_manage_tokens", base.default_can_manage_tokens
                ),
                default_scopes=default_scopes,
                scopes_required=_bool(body, "scopes_required", base.scopes_required),
                roles=roles,
                resources=_resources(body, base.resources),
                updated_at=now,
            )
            if new == old:
                return new
            plan = self.store.plan(org_id)
            plan.put_org(old, new)
            if old is not None and (old.member_scopes, old.admin_scopes, old.roles) != (
                member_scopes,
                admin_scopes,
                roles,
            ):
                # What tokens may do changed (a catalogue or a role): every cache flushes,
                # as fast as a revoke reaches them (issue 13: roles).
                plan.invalidate_org(org_id)
            plan.audit(
                event_json(
                    "org.created" if old is None else "org.updated",
                    actor,
                    now,
                    org_id=org_id,
                    data={k: v for k, v in new.to_json().items() if k in _ORG_FIELDS},
                )
            )
            await self.store.commit(plan)
            return new

        return await retry_stale(
            attempt, message="the organization changed concurrently; try again"
        )

    # -- users ---------------------------------------------------------------------------

    def _org_of(self, actor: Actor, org_id: str | None) -> str:
        """Which org a user id is looked up in: user ids are scoped per organization, so
        an admin can only ever name users of their own org — an id that exists in
        another org is simply not there (issue 9: no cross-org oracle)."""
        if not actor.is_system:
            assert actor.org_id is not None
            if org_id is not None and org_id != actor.org_id:
                # The same answer whatever the id: it says nothing about other orgs.
                raise ValidationFailed("org_id: users can only be managed in your own org")
            return actor.org_id
        return check_id(org_id if org_id is not None else self.default_org, "org_id")

    async def get_user(self, actor: Actor, user_id: str, org_id: str | None = None) -> User:
        # Permission before existence: a member learns nothing about other ids (403 for
        # every id but their own), as the example policy's user-read rule says.
        if actor.kind == "user" and actor.id == user_id:
            actor.require("tokens:read", own=True)
        else:
            actor.require_admin("users:admin")
        user = await self.store.get_user(self._org_of(actor, org_id), user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    async def list_users(self, actor: Actor, org_id: str) -> list[User]:
        actor.require_admin("users:admin")
        actor.require_org(org_id)
        return await self.store.get_users(org_id, await self.store.org_user_ids(org_id))

    async def put_user(self, actor: Actor, user_id: str, body: dict[str, Any]) -> User:
        """Create or update (merge) a user; permission changes reach every cache at once."""
        check_id(user_id, "user id")
        _unknown(body, _USER_FIELDS)
        actor.require_admin("users:admin")
        raw_org = body.get("org_id")
        if raw_org is not None and not isinstance(raw_org, str):
            raise ValidationFailed("org_id: expected a string")
        org_id = self._org_of(actor, raw_org)

        async def attempt() -> User:
            old = await self.store.get_user(org_id, user_id)
            now = self.clock()
            if old is None:
                if "email" not in body:
                    raise ValidationFailed("email: required for a new user")
                org = await self.store.get_org(org_id)
                if org is None:
                    raise NotFound(f"organization {org_id} not found")
                base = User(
                    id=user_id,
                    org_id=org_id,
                    email="",
                    name="",
                    created_at=now,
                    # The org's permission switch (issue 13): whether new users may
                    # manage tokens until an admin says otherwise.
                    can_manage_tokens=org.default_can_manage_tokens,
                )
            else:
                base = old
            role = body.get("role", base.role)
            if role not in _ROLES:
                raise ValidationFailed("role: expected member or admin")
            email = _text(body, "email", base.email)
            if old is None and "@" not in email:
                raise ValidationFailed("email: expected an email address")
            grantable = base.grantable_scopes
            if "grantable_scopes" in body:
                raw = body["grantable_scopes"]
                grantable = None if raw is None else check_scopes(raw, "grantable_scopes")
            if role != "admin" and grantable is not None:
                _no_admin_only(grantable, "grantable_scopes")
            workspaces = base.workspaces
            if "workspaces" in body:
                workspaces = check_workspaces(body["workspaces"])
            new = base.evolve(
                email=email,
                name=_text(body, "name", base.name),
                role=role,
                enabled=_bool(body, "enabled", base.enabled),
                can_manage_tokens=_bool(body, "can_manage_tokens", base.can_manage_tokens),
                workspaces=workspaces,
                grantable_scopes=grantable,
                updated_at=now,
            )
            if old is not None and new.evolve(updated_at=old.updated_at) == old:
                return old
            plan = self.store.plan(new.org_id)
            plan.put_user(old, new)
            permission = old is not None and any(
                getattr(old, f) != getattr(new, f) for f in _USER_POWER
            )
            kind = (
                "user.created"
                if old is None
                else ("user.permission_changed" if permission else "user.updated")
            )
            if permission:
                plan.invalidate_user(new.key)
            plan.audit(
                event_json(
                    kind,
                    actor,
                    now,
                    org_id=new.org_id,
                    user_id=user_id,
                    data={k: v for k, v in new.to_json().items() if k in _USER_FIELDS},
                )
            )
            await self.store.commit(plan)
            return new

        return await retry_stale(attempt, message="the user changed concurrently; try again")

    async def remove_user(self, actor: Actor, user_id: str, org_id: str | None = None) -> list[str]:
        """Delete the user and revoke their personal tokens; returns the revoked ids."""
        actor.require_admin("users:admin")
        org_id = self._org_of(actor, org_id)
        keys = self.store.keys_for(org_id)

        async def attempt() -> list[str]:
            user = await self.store.get_user(org_id, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            now = self.clock()
            ids = [
                i
                for i, _ in await self.store.token_page(
                    keys.owner_tokens(owner_key("user", user_id, org_id)),
                    before=None,
                    count=100_000,
                )
            ]
            plan = self.store.plan(org_id)
            plan.delete_user(user)
            revoked = []
            for token in await self.store.get_tokens(org_id, ids):
                if token.revoked_at is None:
                    plan.put_token(token, token.evolve(revoked_at=now, updated_at=now))
                    revoked.append(token.id)
                plan.invalidate_token(token.digest)
            plan.invalidate_user(user.key)
            plan.audit(
                event_json(
                    "user.removed",
                    actor,
                    now,
                    org_id=user.org_id,
                    user_id=user_id,
                    data={"revoked_token_ids": revoked},
                )
            )
            await self.store.commit(plan)
            return revoked

        return await retry_stale(attempt, message="the user changed concurrently; try again")
