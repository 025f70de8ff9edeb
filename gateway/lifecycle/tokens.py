"""The token lifecycle: create, read, edit, revoke, regenerate, delete.

Every write reads the records it changes, builds one :class:`~middleware.store.Plan`
(compare-and-set on what it read + the audit event + the cache invalidation) and commits
it atomically; a concurrent change makes the commit fail with ``StaleWrite`` and the
operation re-reads and tries again (:func:`~patgate.middleware.store.retry_stale`, the one
compare-and-set loop, with jittered backoff). The secret leaves this module exactly twice: as the
second value returned by :meth:`TokenService.create` and :meth:`TokenService.regenerate`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from patgate.middleware.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PatgateError,
    ServiceError,
    Unprocessable,
    ValidationFailed,
)
from patgate.middleware.grants import role_scopes
from patgate.middleware.records import (
    Org,
    OwnerKind,
    Previous,
    Token,
    TokenType,
    Tombstone,
    TombstoneReason,
    User,
)
from patgate.middleware.store import Found, Plan, StaleWrite, TokenStore, retry_stale
from patgate.middleware.store.plan import forward_target
from patgate.middleware.store.retry import DEFAULT_ATTEMPTS
from patgate.middleware.tokenformat import TokenFormat

from .actor import Actor
from .audit import event_json
from .expiry import resolve_expiry
from .external import ExternalSecret, check_external
from .granting import Bounds, actor_bounds, check_scopes, check_workspaces, owner_bounds
from .inputs import (
    check_allowed_ips,
    check_description,
    check_grace_period,
    check_id,
    check_name,
    check_token_type,
)
from .inputs import check_scopes as parse_scopes
from .inputs import check_workspaces as _check_workspaces
from .limits import LIMIT_ATTEMPTS, hold_limits, limits_apply
from .listing import Filters, Page, scan, scan_org
from .shaping import default_scopes, resolve_role, restricted_scopes

__all__ = [
    "CREATE_FIELDS",
    "DEFAULT_LIFETIME",
    "DEFAULT_TOMBSTONE_TTL",
    "MAX_REPORTED",
    "Owner",
    "TokenService",
]

#: lifetime when a create names no expiry (GitHub's default for fine-grained PATs).
DEFAULT_LIFETIME = 30 * 86_400.0
#: how long a deleted or rotated-out secret is recognised (``PATGATE_TOMBSTONE_TTL``).
DEFAULT_TOMBSTONE_TTL = 30 * 86_400.0
#: secrets one leaked-credential report may carry (GitHub's credential revocation API).
MAX_REPORTED = 1000
_DELETE_BATCH = 10_000
_TOKEN_RACE = "the token changed concurrently too often; try again"
_TOKENS_RACE = "tokens changed concurrently too often; try again"
_LIMIT_RACE = "too many tokens were created in the organization at once; try again"
_REGISTERED = "this token is already registered"
#: what a create (and a registration) may name besides the token's name.
CREATE_FIELDS = frozenset(
    {
        "description",
        "scopes",
        "workspaces",
        "expiration",
        "expires_at",
        "owner",
        "type",
        "allowed_ips",
        "role",
        "restricted",
    }
)

Access = Literal["read", "write", "revoke"]


@dataclass(frozen=True, slots=True)
class Owner:
    kind: OwnerKind
    id: str
    #: a user owner's organization; defaults to the actor's (required for the operator).
    org_id: str | None = None


def _new_id(partition: int) -> str:
    """``tok_<partition, 3 hex><13 random hex>``: the id names its partition, so a token
    can be found by id alone (keys.partition_of_id), e.g. by the local operator."""
    return f"tok_{partition:03x}{secrets.token_hex(7)[:13]}"


class TokenService:
    def __init__(
        self,
        store: TokenStore,
        token_format: TokenFormat,
        *,
        clock: Callable[[], float] = time.time,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        self.store = store
        self.format = token_format
        self.clock = clock
        self.tombstone_ttl = tombstone_ttl

    # -- access rules --------------------------------------------------------------------

    def _authorize(self, actor: Actor, token: Token, access: Access) -> None:
        """Own tokens need ``tokens:<read|write>:own``; admins manage org-owned tokens and
        may read and revoke anyone's in their org. Tokens an actor may not see are 404,
        so ids do not reveal other users' tokens."""
        if actor.is_system:
            return
        if token.org_id != actor.org_id:
            raise NotFound(f"token {token.id} not found")
        if actor.owns(token.owner_kind, token.owner_id):
            actor.require("tokens:read" if access == "read" else "tokens:write", own=True)
            return
        if (token.owner_kind == "org" or access != "write") and actor.is_admin("tokens:admin"):
            return
        raise NotFound(f"token {token.id} not found")

    async def _load(self, actor: Actor, token_id: str, access: Access) -> Token:
        token = await self.store.get_token(token_id, actor.org_id)
        if token is None:
            raise NotFound(f"token {token_id} not found")
        self._authorize(actor, token, access)
        return token

    async def _change(
        self,
        actor: Actor,
        token_id: str,
        access: Access,
        mutate: Callable[[Token, float], Awaitable[tuple[Token, str, dict[str, Any]] | None]],
        *,
        durable: bool = False,
    ) -> tuple[Token, Token]:
        """Read → mutate → commit with CAS, retrying on concurrent changes.

        ``mutate`` returns (new token, event type, event data), or None for "no change"
        (e.g. revoking a revoked token is idempotent and writes nothing)."""

        async def attempt() -> tuple[Token, Token]:
            old = await self._load(actor, token_id, access)
            now = self.clock()
            result = await mutate(old, now)
            if result is None:
                return old, old
            new, kind, data = result
            plan = self.store.plan(new.org_id)
            plan.put_token(old, new)
            if old.status(now) != "active" and new.status(now) == "active":
                # A regenerated revoked or expired token counts again (issue 13).
                org = await self.store.get_org(new.org_id)
                if org is not None:
                    await hold_limits(self.store, plan, org, new, now)
            self._bury_dropped(plan, old, new, now)
            regenerated_with_grace = new.previous is not None and new.previous is not old.previous
            if regenerated_with_grace:
                # The old secret's uses so far are its own from now on, shown beside the
                # new secret's (issue 12).
                used = None if old.last_used is None else old.last_used.encode()
                plan.move_last_used(new.id, used)
            self._finish(plan, actor, new, kind, now, data, old.secret_digests())
            await self.store.commit(plan, durable=durable)
            if regenerated_with_grace:
                # The new secret starts unused (its entry was just moved away).
                return old, new.evolve(last_used=None, previous_last_used=old.last_used)
            if new.previous is None:
                return old, new.evolve(last_used=old.last_used)
            return old, new.evolve(
                last_used=old.last_used, previous_last_used=old.previous_last_used
            )

        return await retry_stale(attempt, message=_TOKEN_RACE)

    def _bury_dropped(self, plan: Plan, old: Token, new: Token, now: float) -> None:
        """Tombstone every secret ``old`` answered to that ``new`` no longer does (a
        rotation out), so presenting it again is recognised (issue 12, reuse tripwire)."""
        kept = new.secret_digests()
        for digest in old.secret_digests():
            if digest not in kept:
                plan.tombstone(digest, Tombstone.of(old, "rotated", now), self.tombstone_ttl)

    def _bury(self, plan: Plan, token: Token, reason: TombstoneReason, now: float) -> None:
        for digest in token.secret_digests():
            plan.tombstone(digest, Tombstone.of(token, reason, now), self.tombstone_ttl)

    @staticmethod
    def _finish(
        plan: Plan,
        actor: Actor,
        token: Token,
        kind: str,
        now: float,
        data: dict[str, Any],
        digests: Iterable[bytes] = (),
    ) -> None:
        for digest in digests:
            plan.invalidate_token(digest)
        plan.audit(
            event_json(
                kind,
                actor,
                now,
                org_id=token.org_id,
                token_id=token.id,
                user_id=token.owner_id if token.owner_kind == "user" else None,
                data=data,
            )
        )

    # -- create / read -------------------------------------------------------------------

    async def create(
        self,
        actor: Actor,
        *,
        name: Any,
        description: Any = None,
        scopes: Iterable[str] | None = None,
        workspaces: Any = None,
        expiration: str | None = None,
        expires_at: Any = None,
        owner: Owner | None = None,
        type: Any = None,
        allowed_ips: Any = None,
        role: Any = None,
        restricted: Any = None,
    ) -> tuple[Token, str]:
        """A new token and its secret — the only time the secret is returned.

        Its scopes: ``scopes`` as listed, or ``restricted`` per resource, or, with
        neither, the org's default (:mod:`.shaping`); a ``role`` adds the role's."""
        token, secret = await self._create(
            actor,
            None,
            name=name,
            description=description,
            scopes=scopes,
            workspaces=workspaces,
            expiration=expiration,
            expires_at=expires_at,
            owner=owner,
            type=type,
            allowed_ips=allowed_ips,
            role=role,
            restricted=restricted,
        )
        assert secret is not None
        return token, secret

    async def register(
        self,
        actor: Actor,
        *,
        name: Any,
        value: Any = None,
        sha256: Any = None,
        issuer: Any = None,
        **fields: Any,
    ) -> Token:
        """Register a token issued elsewhere (issue 13, :mod:`patgate.middleware.external`):
        by its raw ``value`` — hashed here, never stored — or by the hex ``sha256`` of
        its value. ``fields`` are :meth:`create`'s (description, scopes, workspaces,
        expiration, expires_at, owner, type, allowed_ips, role, restricted), checked
        exactly as there — grants, owner, expiry, limits. Admins only (``tokens:admin``),
        or the local operator."""
        actor.require_admin("tokens:admin")
        unknown = set(fields) - CREATE_FIELDS
        if unknown:
            raise TypeError(f"register() got unexpected keyword(s) {sorted(unknown)}")
        external = check_external(self.format, value, sha256, issuer)
        new = {k: fields.get(k) for k in CREATE_FIELDS}
        token, _ = await self._create(actor, external, name=name, **new)
        return token

    async def _create(
        self,
        actor: Actor,
        external: ExternalSecret | None,
        *,
        name: Any,
        description: Any,
        scopes: Iterable[str] | None,
        workspaces: Any,
        expiration: str | None,
        expires_at: Any,
        owner: Owner | None,
        type: Any,
        allowed_ips: Any,
        role: Any,
        restricted: Any,
    ) -> tuple[Token, str | None]:
        name = check_name(name)
        allowed = check_allowed_ips(allowed_ips)
        description = check_description(description)
        if scopes is not None and restricted is not None:
            raise ValidationFailed("scopes, restricted: give one of them, not both")
        listed = None if scopes is None else parse_scopes(scopes)
        ws = _check_workspaces(workspaces)
        owner = await self._resolve_owner(actor, owner)
        default_type: TokenType = "personal" if owner.kind == "user" else "service"
        if external is not None and owner.kind == "user":
            default_type = "oauth"  # issued elsewhere on a user's behalf
        token_type = check_token_type(type, default_type)
        if external is not None and token_type == "personal":
            raise ValidationFailed("type: a token issued elsewhere is oauth or service")
        if token_type == "oauth" and not actor.is_admin("tokens:admin"):
            raise Forbidden("only admins may create oauth tokens")
        org_id, user = await self._owner_org(actor, owner)
        org = await self.store.get_org(org_id)
        if org is None:
            raise NotFound(f"organization {org_id} not found")
        org_user_ok = owner.kind == "org" or (user is not None and user.can_authenticate)
        if workspaces is None and user is not None and user.workspaces is not None:
            # Naming no workspaces means "all of the owner's", not "*" (which the owner may
            # not hold); an explicit "*" is still refused below.
            ws = user.workspaces
        bounds = [owner_bounds(org, owner.kind, user), await self._actor_bounds(actor, org, user)]
        role_name = resolve_role(org, role)
        if listed is not None:
            scope_tuple = listed
        elif restricted is not None:
            scope_tuple = restricted_scopes(org, restricted)
        elif role_name is not None:
            scope_tuple = ()
        else:
            scope_tuple = default_scopes(org, bounds)
        # The role's scopes count as the token's: nobody mints more than they may grant.
        check_scopes(bounds, scope_tuple + role_scopes(org, role_name))
        check_workspaces(bounds, ws)
        now = self.clock()
        # A create that names no expiry gets the default, shortened to the org's maximum:
        # the caller chose nothing the policy could refuse.
        default = (
            DEFAULT_LIFETIME
            if org.max_lifetime is None
            else min(DEFAULT_LIFETIME, org.max_lifetime)
        )
        expiry = resolve_expiry(
            expiration=expiration,
            expires_at=expires_at,
            default=default,
            org=org,
            now=now,
        )
        if not org_user_ok:
            raise Forbidden(f"user {owner.id} may not hold tokens (disabled or no permission)")
        partition = self.store.keys_for(org_id).partition
        secret = None if external is not None else self.format.generate(partition)
        token = Token(
            id=_new_id(partition),
            name=name,
            description=description,
            owner_kind=owner.kind,
            owner_id=owner.id,
            org_id=org_id,
            type=token_type,
            scopes=scope_tuple,
            workspaces=ws,
            expires_at=expiry,
            created_at=now,
            created_by=actor.id,
            revoked_at=None,
            prefix=external.prefix if external else self.format.display_prefix(secret or ""),
            digest=external.digest if external else self.format.digest(secret or ""),
            updated_at=now,
            issued_at=now,
            allowed_ips=allowed,
            pepper_id=self.format.pepper_id,
            role=role_name,
            issuer=None if external is None else external.issuer,
            forward_from=None if external is None else external.forward_from(partition),
        )
        data: dict[str, Any] = {
            "name": name,
            "scopes": list(scope_tuple),
            "expires_at": expiry,
            "allowed_ips": None if allowed is None else list(allowed),
            "role": role_name,
        }
        if external is None:
            await self._commit_new(org, token, "token.created", actor, now, data)
            return token, secret
        data |= {"type": token_type, "issuer": external.issuer}
        await self._register(org, token, actor, now, data)
        return token, None

    async def _commit_new(
        self, org: Org, token: Token, kind: str, actor: Actor, now: float, data: dict[str, Any]
    ) -> None:
        """Write a new token, within the org's token limits (:mod:`.limits`): nothing
        was written when a commit is stale, so the same record is tried again against
        the new count."""

        async def attempt() -> None:
            plan = self.store.plan(token.org_id)
            plan.put_token(None, token)
            await hold_limits(self.store, plan, org, token, self.clock())
            self._finish(plan, actor, token, kind, now, data)
            await self.store.commit(plan, durable=True)

        if not limits_apply(org):
            return await attempt()  # a stale create is impossible: nothing is read
        await retry_stale(attempt, attempts=LIMIT_ATTEMPTS, message=_LIMIT_RACE)

    async def _register(
        self, org: Org, token: Token, actor: Actor, now: float, data: dict[str, Any]
    ) -> None:
        """Write a registered external token: first its forward, in the partition its
        value's SHA-256 names (harmless alone: it leads to a digest the org does not
        index yet), then the token itself, within the org's limits. A refused or
        failed token write takes the forward back."""
        home = self.store.keys_for(token.org_id).partition
        at = token.forward_from

        async def attempt() -> None:
            if await self.store.index_entry(home, token.digest) is not None:
                raise Conflict(_REGISTERED, code="already_registered")
            forwarded = False
            if at is not None:
                current = await self.store.index_entry(at, token.digest)
                if current is not None and not await self._stale_forward(current, token.digest):
                    raise Conflict(_REGISTERED, code="already_registered")
                plan = self.store.plan_partition(at)
                plan.forward_digest(token.digest, home, current)
                await self.store.commit(plan)
                forwarded = True
            try:
                plan = self.store.plan(token.org_id)
                plan.put_token(None, token)
                plan.expect(plan.keys.index, token.digest, None)
                await hold_limits(self.store, plan, org, token, self.clock())
                self._finish(plan, actor, token, "token.registered", now, data)
                await self.store.commit(plan, durable=True)
            except (StaleWrite, ServiceError):
                # Refused, so nothing was written: the forward goes too. Not after a
                # store error, which may come after the write (an unconfirmed WAIT):
                # a forward left to a digest nobody indexes resolves to nothing.
                if forwarded:
                    await self._unforward(token)
                raise

        await retry_stale(attempt, attempts=LIMIT_ATTEMPTS, message=_LIMIT_RACE)

    async def _stale_forward(self, entry: bytes, digest: bytes) -> bool:
        """Whether a forward found where a registration wants to write its own leads
        nowhere any more (a deleted registration whose clean-up did not finish)."""
        target = forward_target(entry)
        if target is None:
            return False  # a token of this partition's own org has the digest
        return await self.store.index_entry(target, digest) is None

    async def _unforward(self, token: Token, stone: Tombstone | None = None) -> None:
        """Drop an external token's forward (best effort: one left behind leads to a
        digest no longer indexed, which resolves to nothing, and is reused), leaving
        the deleted token's tombstone where its lookups start."""
        if token.forward_from is None:
            return
        plan = self.store.plan_partition(token.forward_from)
        plan.unforward_digest(token.digest, self.store.keys_for(token.org_id).partition)
        if stone is not None:
            plan.tombstone(token.digest, stone, self.tombstone_ttl, forwarded=True)
        with contextlib.suppress(PatgateError):
            await self.store.commit(plan)

    async def _resolve_owner(self, actor: Actor, owner: Owner | None) -> Owner:
        if owner is None:
            if actor.owner_kind is None:
                raise ValidationFailed("owner: required (which user or org owns the token)")
            owner = Owner(actor.owner_kind, actor.id)
        check_id(owner.id, "owner.id")
        if actor.owns(owner.kind, owner.id):
            actor.require("tokens:write", own=True)
        else:
            actor.require_admin("tokens:admin")
        return owner

    async def _owner_org(self, actor: Actor, owner: Owner) -> tuple[str, User | None]:
        """The owner's org id and, for a user owner, the user record. User ids are scoped
        per org: an actor names users of its own org only (issue 9: no oracle)."""
        if owner.kind == "org":
            actor.require_org(owner.id)
            return owner.id, None
        org_id = actor.org_id if not actor.is_system else owner.org_id
        if org_id is None:
            raise ValidationFailed("owner.org_id: required to name a user (which org?)")
        user = await self.store.get_user(org_id, owner.id)
        if user is None:
            raise NotFound(f"user {owner.id} not found")
        return org_id, user

    async def _actor_bounds(
        self, actor: Actor, org: Org | None, owner: User | None
    ) -> Bounds | None:
        """What the actor may grant; ``owner`` (the token's owning user, just read) is
        reused when the actor is that user instead of reading the record again."""
        user = None
        if actor.kind == "user" and actor.org_id is not None:
            if owner is not None and (owner.org_id, owner.id) == (actor.org_id, actor.id):
                user = owner
            else:
                user = await self.store.get_user(actor.org_id, actor.id)
        return actor_bounds(actor, org, user)

    async def _bounds(self, actor: Actor, token: Token) -> tuple[Org | None, list[Bounds | None]]:
        """The token's org now, and what its owner and the actor may grant (read fresh)."""
        org = await self.store.get_org(token.org_id)
        owner = None
        if token.owner_kind == "user":
            owner = await self.store.get_user(token.org_id, token.owner_id)
        bounds = [
            owner_bounds(org, token.owner_kind, owner),
            await self._actor_bounds(actor, org, owner),
        ]
        return org, bounds

    async def get(self, actor: Actor, token_id: str) -> Token:
        return await self._load(actor, token_id, "read")

    async def list_own(self, actor: Actor, filters: Filters) -> Page:
        if actor.is_system:
            raise ValidationFailed("the local operator has no own tokens; list an org instead")
        actor.require("tokens:read", own=True)
        assert actor.org_id is not None  # every actor but the operator has an org
        return await scan(self.store, actor.org_id, actor.own_key, filters, self.clock())

    async def list_org(self, actor: Actor, org_id: str, filters: Filters) -> Page:
        actor.require_admin("tokens:admin")
        actor.require_org(org_id)
        return await scan_org(self.store, org_id, filters, self.clock())

    # -- edits ---------------------------------------------------------------------------

    async def update(self, actor: Actor, token_id: str, changes: dict[str, Any]) -> Token:
        """PATCH: any of name, description, scopes, workspaces; unknown fields are errors."""
        allowed = {"name", "description", "scopes", "workspaces", "allowed_ips", "role"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValidationFailed(f"cannot change {', '.join(sorted(unknown))}")
        if not changes:
            raise ValidationFailed("nothing to change")
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = check_name(changes["name"])
        if "description" in changes:
            values["description"] = check_description(changes["description"])
        if "scopes" in changes:
            values["scopes"] = parse_scopes(changes["scopes"])
        if "workspaces" in changes:
            values["workspaces"] = _check_workspaces(changes["workspaces"])
        if "allowed_ips" in changes:
            values["allowed_ips"] = check_allowed_ips(changes["allowed_ips"])

        async def mutate(old: Token, now: float) -> tuple[Token, str, dict[str, Any]]:
            values.pop("role", None)
            if "scopes" in values or "workspaces" in values or "role" in changes:
                org, bounds = await self._bounds(actor, old)
                if "scopes" in values:
                    check_scopes(bounds, values["scopes"])
                if "workspaces" in values:
                    check_workspaces(bounds, values["workspaces"])
                if "role" in changes:
                    role_name = resolve_role(org or Org(id=old.org_id, name=""), changes["role"])
                    check_scopes(bounds, role_scopes(org, role_name))
                    values["role"] = role_name
            kind = "token.scopes_changed" if set(values) == {"scopes"} else "token.updated"
            data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
            if "workspaces" in data and data["workspaces"] is None:
                data["workspaces"] = ["*"]  # every workspace, as the API shows it
            return old.evolve(**values, updated_at=now), kind, data

        return (await self._change(actor, token_id, "write", mutate))[1]

    async def add_scopes(self, actor: Actor, token_id: str, scopes: Any) -> Token:
        extra = parse_scopes(scopes)
        if not extra:
            raise ValidationFailed("scopes: give at least one scope to add")
        return await self._set_scopes(actor, token_id, lambda cur: cur + extra)

    async def remove_scope(self, actor: Actor, token_id: str, scope: str) -> Token:
        (target,) = parse_scopes([scope], "scope")

        def drop(cur: tuple[str, ...]) -> tuple[str, ...]:
            if target not in cur:
                raise NotFound(f"token {token_id} does not have the scope {target}")
            return tuple(s for s in cur if s != target)

        return await self._set_scopes(actor, token_id, drop)

    async def clear_scopes(self, actor: Actor, token_id: str) -> Token:
        return await self._set_scopes(actor, token_id, lambda cur: ())

    async def _set_scopes(
        self, actor: Actor, token_id: str, compute: Callable[[tuple[str, ...]], tuple[str, ...]]
    ) -> Token:
        async def mutate(old: Token, now: float) -> tuple[Token, str, dict[str, Any]] | None:
            scopes = parse_scopes(compute(old.scopes))
            if scopes == old.scopes:
                return None
            added = tuple(sorted(set(scopes) - set(old.scopes)))
            if added:
                check_scopes((await self._bounds(actor, old))[1], added)
            data = {
                "added": sorted(set(scopes) - set(old.scopes)),
                "removed": sorted(set(old.scopes) - set(scopes)),
            }
            return old.evolve(scopes=scopes, updated_at=now), "token.scopes_changed", data

        return (await self._change(actor, token_id, "write", mutate))[1]

    # -- revoke / regenerate / delete ----------------------------------------------------

    async def revoke(self, actor: Actor, token_id: str) -> Token:
        """Idempotent: revoking a revoked token changes nothing and succeeds."""
        return await self._revoke(actor, token_id, {})

    async def _revoke(
        self, actor: Actor, token_id: str, data: dict[str, Any], *, digest: bytes | None = None
    ) -> Token:
        async def mutate(old: Token, now: float) -> tuple[Token, str, dict[str, Any]] | None:
            if old.revoked_at is not None:
                return None
            if digest is not None and old.digest != digest:
                return None  # regenerated meanwhile: the reported secret is dead already
            return old.evolve(revoked_at=now, updated_at=now), "token.revoked", data

        return (await self._change(actor, token_id, "revoke", mutate))[1]

    async def regenerate(
        self,
        actor: Actor,
        token_id: str,
        *,
        expiration: str | None = None,
        expires_at: Any = None,
        grace_period: Any = None,
    ) -> tuple[Token, str]:
        """New secret, same id/name/scopes; works on active, revoked and expired tokens.

        With no expiry given the new secret gets the same lifetime the old one had. With
        ``grace_period`` (seconds, at most the org's ``max_grace_period``) an active
        token's old secret keeps working that long beside the new one, then is refused as
        rotated (issue 12); without one it stops at once. A secret kept from an earlier
        regeneration is replaced either way: at most two secrets per token."""
        secrets_made: list[str] = []

        async def mutate(old: Token, now: float) -> tuple[Token, str, dict[str, Any]]:
            if old.issuer is not None:
                raise Unprocessable(
                    f"this token was issued by {old.issuer}: patgate cannot issue a new "
                    "secret for it; register the new one, then delete this one",
                    code="external_token",
                )
            # The new secret's hint names the token's partition (its org's): a token
            # moved by ``patgate migrate`` leaves its forward behind here.
            secret = self.format.generate(self.store.keys_for(old.org_id).partition)
            secrets_made.append(secret)
            org, bounds = await self._bounds(actor, old)
            if org is None:
                raise NotFound(f"organization {old.org_id} not found")
            grace = check_grace_period(grace_period, org.max_grace_period)
            if grace and old.status(now) != "active":
                raise ValidationFailed(
                    f"grace_period: the token is {old.status(now)}; only an active token's "
                    "secret can keep working"
                )
            # A new secret re-issues the token's power: it must still be grantable
            # (e.g. after the owner was demoted, remove the scopes first).
            check_scopes(bounds, old.scopes + role_scopes(org, old.role))
            check_workspaces(bounds, old.workspaces)
            previous = None if old.expires_at is None else old.expires_at - old.issued_at
            expiry = resolve_expiry(
                expiration=expiration, expires_at=expires_at, default=previous, org=org, now=now
            )
            kept = None
            if grace:
                # Never past the old secret's own expiry: a grace only overlaps it.
                until = now + grace
                if old.expires_at is not None:
                    until = min(until, old.expires_at)
                kept = Previous(old.digest, old.prefix, until, old.pepper_id)
            new = old.evolve(
                digest=self.format.digest(secret),
                prefix=self.format.display_prefix(secret),
                expires_at=expiry,
                revoked_at=None,
                issued_at=now,
                updated_at=now,
                previous=kept,
                pepper_id=self.format.pepper_id,
            )
            data: dict[str, Any] = {"expires_at": expiry}
            if kept is not None:
                data["grace_period"] = grace
                data["previous_valid_until"] = kept.until
            return new, "token.regenerated", data

        old, new = await self._change(actor, token_id, "write", mutate, durable=True)
        await self.store.drop_forwards(old, keep_id=True)
        return new, secrets_made[-1]

    async def end_grace(
        self,
        actor: Actor,
        token_id: str,
        *,
        reason: str | None = None,
        digest: bytes | None = None,
    ) -> Token:
        """End a regeneration's grace period now: the previous secret stops working at
        once and is refused as rotated. Idempotent: with no previous secret, nothing
        changes. ``digest``: only if the previous secret is still that one (a report
        racing a regeneration must not end another secret's grace)."""

        async def mutate(old: Token, now: float) -> tuple[Token, str, dict[str, Any]] | None:
            if old.previous is None:
                return None
            if digest is not None and old.previous.digest != digest:
                return None
            data: dict[str, Any] = {
                "prefix": old.previous.prefix,
                "was_valid_until": old.previous.until,
            }
            if reason is not None:
                data["reason"] = reason
            return old.evolve(previous=None, updated_at=now), "token.grace_ended", data

        return (await self._change(actor, token_id, "write", mutate))[1]

    async def revoke_reported(
        self, secrets: list[str], *, ip: str | None, user_agent: str | None
    ) -> int:
        """Leaked-credential reports (``POST /v1/credentials/revoke``, like GitHub's):
        revoke each token whose current secret is among ``secrets``; a previous secret
        still in its grace period has that grace ended instead. Unknown, malformed and
        already dead secrets are skipped. Returns how many tokens changed — for logs and
        tests only: the API answers the same whatever the count."""
        actor = Actor(
            kind="system",
            id="credential-report",
            org_id=None,
            role="admin",
            ip=ip,
            user_agent=user_agent,
        )
        changed = 0
        for secret in dict.fromkeys(secrets):
            if not self.format.is_well_formed(secret):
                continue
            digest = self.format.digest(secret)
            found = await self.store.lookup(
                digest, self.format.partition(secret), self.format.previous_digest(secret)
            )
            if not isinstance(found, Found):
                continue
            token = Token.decode(found.record)
            matched = self.format.previous_digest(secret) if found.previous_pepper else digest
            now = self.clock()
            if matched == token.digest:
                if token.status(now) == "active":
                    await self._revoke(
                        actor, token.id, {"reason": "reported_leaked"}, digest=token.digest
                    )
                    changed += 1
            elif (
                token.previous is not None
                and matched == token.previous.digest
                and now < token.previous.until
                and token.status(now) == "active"
            ):
                # Only a grace still running is ended: a previous secret past it (kept
                # to answer "rotated"), or of a revoked or expired token, is dead already.
                await self.end_grace(
                    actor, token.id, reason="reported_leaked", digest=token.previous.digest
                )
                changed += 1
        return changed

    async def delete(self, actor: Actor, token_id: str) -> None:
        async def attempt() -> Token:
            token = await self._load(actor, token_id, "write")
            await self._delete_many(actor, [token])
            return token

        await self.store.drop_forwards(await retry_stale(attempt, message=_TOKEN_RACE))

    async def delete_all_own(self, actor: Actor) -> int:
        """Delete every token the actor owns; returns how many."""
        if actor.is_system:
            raise ValidationFailed("the local operator has no own tokens")
        actor.require("tokens:write", own=True)
        assert actor.org_id is not None  # every actor but the operator has an org
        org_id = actor.org_id
        zkey = self.store.keys_for(org_id).owner_tokens(actor.own_key)

        async def batch() -> int:
            """Delete one page of the actor's tokens; how many (0: none left)."""
            page = await self.store.token_page(zkey, before=None, count=_DELETE_BATCH)
            tokens = await self.store.get_tokens(org_id, [i for i, _ in page])
            if tokens:
                await self._delete_many(actor, tokens)
            return len(tokens)

        deleted = 0
        # Page by page until none is left; a concurrent create can add a page, but not
        # keep this going forever.
        for _ in range(DEFAULT_ATTEMPTS):
            n = await retry_stale(batch, message=_TOKENS_RACE)
            if n == 0:
                return deleted
            deleted += n
        raise Conflict(_TOKENS_RACE, code="conflict")

    async def _delete_many(self, actor: Actor, tokens: list[Token]) -> None:
        """One atomic delete of ``tokens``; :class:`StaleWrite` if any changed."""
        now = self.clock()
        plan = self.store.plan(tokens[0].org_id)
        for token in tokens:
            plan.delete_token(token)
            self._bury(plan, token, "deleted", now)
            self._finish(
                plan,
                actor,
                token,
                "token.deleted",
                now,
                {"name": token.name},
                token.secret_digests(),
            )
        await self.store.commit(plan)
        for token in tokens:
            if token.forward_from is not None:
                await self._unforward(token, Tombstone.of(token, "deleted", now))
