"""The records patgate keeps in Redis, and their compact msgpack encoding.

Records are msgpack arrays (positional, no field names) to keep Redis memory per token
small (SPEC target: ≤ 400 B at 100k tokens). Adding a field means appending to the end;
decoders accept shorter arrays from older versions.

The token record is the most numerous, so it is squeezed further, always losslessly
(``Token.decode(t.encode()) == t``, and ``encode`` is stable over a round trip, which the
store's compare-and-set relies on): owner kind and type share a one-byte code; whole-second
timestamps are ints; the expiry is stored as its lifetime (``-seconds``) when that is
exact; ``created_by``, ``updated_at`` and ``issued_at`` are nil when they equal the owner
id and ``created_at``; and optional fields sit last and are trimmed while they hold their
default, so a fresh token is a 10-element fixarray. The first layout (17 fields in
declaration order, kind and type as text in fields 3 and 6) still decodes: field 2 is
text there (the description) and an int here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgpack

__all__ = [
    "DEFAULT_MAX_GRACE",
    "Identity",
    "LastUsed",
    "Org",
    "OwnerKind",
    "Previous",
    "Role",
    "Token",
    "TokenStatus",
    "TokenType",
    "Tombstone",
    "TombstoneReason",
    "User",
    "owner_key",
    "user_key",
]

#: an org's default bound on a regeneration's grace period: 7 days (issue 12).
DEFAULT_MAX_GRACE = 7 * 86_400.0

OwnerKind = Literal["user", "org"]
TokenType = Literal["personal", "service", "oauth"]
TokenStatus = Literal["active", "revoked", "expired"]
Role = Literal["member", "admin"]


def user_key(org_id: str, user_id: str) -> str:
    """``<org>/<id>``: how the store names a user (ids are scoped per organization; ids
    never contain ``/``)."""
    return org_id + "/" + user_id


def owner_key(kind: OwnerKind, owner_id: str, org_id: str) -> str:
    """``u:<org>/<id>`` or ``o:<id>``: the owner part of per-owner keys."""
    return "u:" + user_key(org_id, owner_id) if kind == "user" else "o:" + owner_id


def _pack(values: list[Any]) -> bytes:
    return msgpack.packb(values, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(blob: bytes) -> list[Any]:
    return msgpack.unpackb(blob, raw=False, use_list=True)  # type: ignore[no-any-return]


#: (owner kind, type) pairs by their one-byte code in the token record.
#: the record's field 2. The LOOKUP script (store/scripts.py) reads fields 2-4 of a record
#: in Lua: indices below 3 are user-owned, field 3 the owner id, field 4 the org — keep
#: the order, or change the script with it.
_KIND_TYPE: tuple[tuple[OwnerKind, TokenType], ...] = tuple(
    (kind, type_) for kind in ("user", "org") for type_ in ("personal", "service", "oauth")
)
#: fields every token record carries; the rest are trimmed when they hold their default.
_REQUIRED = 10
_TRAILING_DEFAULTS: tuple[Any, ...] = (None,) * _REQUIRED + ("",) + (None,) * 11


def _ts(t: float) -> float:
    """A timestamp as msgpack stores it smallest without losing a bit: whole seconds
    as an int (5 bytes instead of a 9-byte float64), anything else unchanged."""
    f = float(t)
    if f.is_integer() and 0 <= f < 2**63:
        return int(f)
    return f


def _expiry(expires_at: float | None, created_at: float) -> float | None:
    """Expiry as a negative whole-second lifetime after creation when that is exact (the
    usual ``now + 30d``), else as a timestamp (non-negative int or float)."""
    if expires_at is None:
        return None
    life = expires_at - created_at
    if 0 < life < 2**31 and life.is_integer() and created_at + life == expires_at:
        return -int(life)
    return _ts(expires_at)


def _unexpiry(value: float | None, created_at: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, int) and value < 0:
        return created_at + float(-value)
    return float(value)


@dataclass(frozen=True, slots=True)
class LastUsed:
    at: float
    method: str
    path: str
    ip: str | None
    user_agent: str | None

    def encode(self) -> bytes:
        return _pack([self.at, self.method, self.path, self.ip, self.user_agent])

    @classmethod
    def decode(cls, blob: bytes) -> LastUsed:
        at, method, path, ip, ua = _unpack(blob)[:5]
        return cls(at, method, path, ip, ua)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "ip": self.ip,
            "user_agent": self.user_agent,
        }


@dataclass(frozen=True, slots=True)
class Previous:
    """A regenerated token's previous secret (see :attr:`Token.previous`)."""

    digest: bytes
    prefix: str
    #: the end of the grace period: the old secret works while ``now < until``.
    until: float
    #: which pepper made ``digest`` (as :attr:`Token.pepper_id`).
    pepper_id: int | None = None

    def encode(self) -> list[Any]:
        values: list[Any] = [self.digest, self.prefix, _ts(self.until)]
        if self.pepper_id is not None:
            values.append(self.pepper_id)
        return values

    @classmethod
    def decode(cls, v: list[Any]) -> Previous:
        return cls(v[0], v[1], float(v[2]), v[3] if len(v) > 3 else None)


@dataclass(frozen=True, slots=True)
class Token:
    """A token's record of truth. ``digest`` is the stored hash, never the secret."""

    id: str
    name: str
    description: str
    owner_kind: OwnerKind
    owner_id: str
    org_id: str
    type: TokenType
    scopes: tuple[str, ...]
    #: ``None`` means every workspace (``*``).
    workspaces: tuple[str, ...] | None
    expires_at: float | None
    created_at: float
    created_by: str
    revoked_at: float | None
    prefix: str
    digest: bytes
    updated_at: float = 0.0
    #: when the current secret was issued (creation or last regeneration).
    issued_at: float = 0.0
    #: client addresses/networks the token may be used from (normalized,
    #: :mod:`middleware.allowlist`); ``None`` = any address.
    allowed_ips: tuple[str, ...] | None = None
    #: the secret before the last regeneration while it keeps working (issue 12, rotation
    #: with overlap): its digest, display prefix and the end of its grace period. Kept
    #: after the grace ends, so the old secret is refused as "rotated" rather than unknown,
    #: until the next regeneration or ``end_grace`` turns it into a tombstone.
    previous: Previous | None = None
    #: which pepper made ``digest`` (:attr:`TokenFormat.pepper_id`); None: no pepper.
    pepper_id: int | None = None
    #: one of the org's named roles (:attr:`Org.roles`): its scopes count as the
    #: token's own, as the org defines them *now* (issue 13). None: no role.
    role: str | None = None
    #: for a token issued elsewhere (middleware.external): the system that issued it,
    #: e.g. ``github``; its digest is :meth:`TokenFormat.external_digest`. None: patgate's.
    issuer: str | None = None
    #: an external token's forward: the partition its value's SHA-256 names, whose
    #: index sends lookups on to the org's (middleware.external). None: patgate's own.
    forward_from: int | None = None
    last_used: LastUsed | None = field(default=None, compare=False)
    #: the previous secret's own last use (while ``previous`` is set).
    previous_last_used: LastUsed | None = field(default=None, compare=False)

    def status(self, now: float) -> TokenStatus:
        """Computed on every read; expiry is never cached as a state."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    @property
    def owner_key(self) -> str:
        return owner_key(self.owner_kind, self.owner_id, self.org_id)

    @property
    def user_key(self) -> str | None:
        """The owning user's store key (``<org>/<id>``), or None for org-owned tokens."""
        return user_key(self.org_id, self.owner_id) if self.owner_kind == "user" else None

    def encode(self) -> bytes:
        """The compact layout (see the module docstring): defaults trailing, then trimmed."""
        created = self.created_at
        values: list[Any] = [
            self.id,
            self.name,
            _KIND_TYPE.index((self.owner_kind, self.type)),
            self.owner_id,
            self.org_id,
            list(self.scopes),
            _ts(created),
            _expiry(self.expires_at, created),
            self.prefix,
            self.digest,
            self.description,
            None if self.workspaces is None else list(self.workspaces),
            None if self.created_by == self.owner_id else self.created_by,
            None if self.revoked_at is None else _ts(self.revoked_at),
            None if self.updated_at == created else _ts(self.updated_at),
            None if self.issued_at == created else _ts(self.issued_at),
            None if self.allowed_ips is None else list(self.allowed_ips),
            None if self.previous is None else self.previous.encode(),
            self.pepper_id,
            self.role,
            self.issuer,
            self.forward_from,
        ]
        while len(values) > _REQUIRED and values[-1] == _TRAILING_DEFAULTS[len(values) - 1]:
            values.pop()
        return _pack(values)

    @classmethod
    def decode(
        cls, blob: bytes, last_used: bytes | None = None, previous_used: bytes | None = None
    ) -> Token:
        v = _unpack(blob)
        used = LastUsed.decode(last_used) if last_used else None
        if isinstance(v[2], str):
            return cls._decode_v1(v, used)
        v += _TRAILING_DEFAULTS[len(v) :]
        ips, prev = v[16], v[17]
        kind, type_ = _KIND_TYPE[v[2]]
        created = float(v[6])
        ws = v[11]
        return cls(
            id=v[0],
            name=v[1],
            description=v[10],
            owner_kind=kind,
            owner_id=v[3],
            org_id=v[4],
            type=type_,
            scopes=tuple(v[5]),
            workspaces=None if ws is None else tuple(ws),
            expires_at=_unexpiry(v[7], created),
            created_at=created,
            created_by=v[3] if v[12] is None else v[12],
            revoked_at=None if v[13] is None else float(v[13]),
            prefix=v[8],
            digest=v[9],
            updated_at=created if v[14] is None else float(v[14]),
            issued_at=created if v[15] is None else float(v[15]),
            allowed_ips=None if ips is None else tuple(ips),
            previous=None if prev is None else Previous.decode(prev),
            pepper_id=v[18],
            role=v[19],
            issuer=v[20],
            forward_from=v[21],
            last_used=used,
            previous_last_used=(
                LastUsed.decode(previous_used) if previous_used and prev is not None else None
            ),
        )

    @classmethod
    def _decode_v1(cls, v: list[Any], used: LastUsed | None) -> Token:
        """The first layout: 15-17 fields in declaration order, kinds and types as text."""
        ws = v[8]
        return cls(
            id=v[0],
            name=v[1],
            description=v[2],
            owner_kind=v[3],
            owner_id=v[4],
            org_id=v[5],
            type=v[6],
            scopes=tuple(v[7]),
            workspaces=None if ws is None else tuple(ws),
            expires_at=v[9],
            created_at=v[10],
            created_by=v[11],
            revoked_at=v[12],
            prefix=v[13],
            digest=v[14],
            updated_at=v[15] if len(v) > 15 else v[10],
            issued_at=v[16] if len(v) > 16 else v[10],
            last_used=used,
        )

    def evolve(self, **changes: Any) -> Token:
        return replace(self, **changes)

    def to_json(self, now: float) -> dict[str, Any]:
        """The public view: everything but the digest (and, of course, the secret)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "owner": {"type": self.owner_kind, "id": self.owner_id},
            "org_id": self.org_id,
            "type": self.type,
            "scopes": list(self.scopes),
            "workspaces": ["*"] if self.workspaces is None else list(self.workspaces),
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "updated_at": self.updated_at,
            "issued_at": self.issued_at,
            "status": self.status(now),
            "revoked_at": self.revoked_at,
            "prefix": self.prefix,
            "last_used": None if self.last_used is None else self.last_used.to_json(),
            "allowed_ips": None if self.allowed_ips is None else list(self.allowed_ips),
            "previous_secret": self._previous_json(now),
            "role": self.role,
            "external": self.issuer is not None,
            "issuer": self.issuer,
        }

    def _previous_json(self, now: float) -> dict[str, Any] | None:
        prev = self.previous
        if prev is None:
            return None
        used = self.previous_last_used
        return {
            "prefix": prev.prefix,
            "valid_until": prev.until,
            "status": "active" if now < prev.until and self.status(now) == "active" else "rotated",
            "last_used": None if used is None else used.to_json(),
        }

    def secret_digests(self) -> tuple[bytes, ...]:
        """Every digest the index holds for this token: the current secret's, and the
        previous one's while it is kept (each needs its cache entry dropped on a change)."""
        if self.previous is None:
            return (self.digest,)
        return (self.digest, self.previous.digest)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    org_id: str
    email: str
    name: str
    role: Role = "member"
    enabled: bool = True
    can_manage_tokens: bool = True
    created_at: float = 0.0
    updated_at: float = 0.0
    #: the workspaces the user belongs to in the host product; ``None`` = every one.
    workspaces: tuple[str, ...] | None = None
    #: scopes the host lets this user grant; ``None`` = the org's default for the role.
    grantable_scopes: tuple[str, ...] | None = None

    @property
    def can_authenticate(self) -> bool:
        """Disabled users and users without the token permission fail authentication."""
        return self.enabled and self.can_manage_tokens

    @property
    def key(self) -> str:
        """``<org>/<id>``: user ids are scoped per organization (issue 9: no cross-org
        oracle), so the store keys users by both."""
        return user_key(self.org_id, self.id)

    def encode(self) -> bytes:
        values: list[Any] = [
            self.id,
            self.org_id,
            self.email,
            self.name,
            self.role,
            self.enabled,
            self.can_manage_tokens,
            self.created_at,
            self.updated_at,
            None if self.workspaces is None else list(self.workspaces),
            None if self.grantable_scopes is None else list(self.grantable_scopes),
        ]
        while len(values) > 9 and values[-1] is None:
            values.pop()
        return _pack(values)

    @classmethod
    def decode(cls, blob: bytes) -> User:
        v = _unpack(blob)
        v += [None] * (11 - len(v))
        ws, grantable = v[9], v[10]
        return replace(
            cls(*v[:9]),
            workspaces=None if ws is None else tuple(ws),
            grantable_scopes=None if grantable is None else tuple(grantable),
        )

    def evolve(self, **changes: Any) -> User:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org_id": self.org_id,
            "email": self.email,
            "name": self.name,
            "role": self.role,
            "enabled": self.enabled,
            "can_manage_tokens": self.can_manage_tokens,
            "workspaces": ["*"] if self.workspaces is None else list(self.workspaces),
            "grantable_scopes": (
                None if self.grantable_scopes is None else list(self.grantable_scopes)
            ),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    #: the most *active* tokens the org may hold, all owners together; None: no limit
    #: (issue 13: "Up to 10 API keys per organization"). Revoked and expired tokens
    #: never count. Before issue 13 this was a per-owner limit of all tokens.
    token_limit: int | None = 10
    #: longest allowed lifetime in seconds; ``None`` = no maximum.
    max_lifetime: float | None = None
    #: whether tokens that never expire may be created.
    allow_never: bool = True
    created_at: float = 0.0
    updated_at: float = 0.0
    #: scopes members may grant (besides managing their own tokens). Empty by default:
    #: with nothing configured a member can grant no API scope at all (issue 9).
    member_scopes: tuple[str, ...] = ()
    #: scopes admins may grant; bounds org-owned tokens too.
    admin_scopes: tuple[str, ...] = ("*",)
    #: the longest grace period a regeneration may give the previous secret (issue 12).
    max_grace_period: float = DEFAULT_MAX_GRACE
    #: whether users created without an explicit ``can_manage_tokens`` get the token
    #: permission (issue 13: the org's "permission switch").
    default_can_manage_tokens: bool = True
    #: the scopes of a token created without scopes: None = all its creator may grant
    #: (but the admin-only management scopes); else these (issue 13).
    default_scopes: tuple[str, ...] | None = None
    #: whether a token must name its scopes (or a role): no default at all.
    scopes_required: bool = False
    #: named roles: role name → scopes (e.g. Developer, Admin). A token with a role has
    #: the role's scopes as the org defines them now.
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the resources of the org's API, for restricted tokens (per-resource operations).
    resources: tuple[str, ...] = ()
    #: the most active tokens one owner (a user, or the org itself) may hold; None: off.
    owner_token_limit: int | None = None

    def encode(self) -> bytes:
        values: list[Any] = [
            self.id,
            self.name,
            self.token_limit,
            self.max_lifetime,
            self.allow_never,
            self.created_at,
            self.updated_at,
            list(self.member_scopes),
            list(self.admin_scopes),
            _ts(self.max_grace_period),
            self.default_can_manage_tokens,
            None if self.default_scopes is None else list(self.default_scopes),
            self.scopes_required,
            {name: list(scopes) for name, scopes in sorted(self.roles.items())},
            list(self.resources),
            self.owner_token_limit,
        ]
        # Trailing defaults are dropped, so an org written before a field existed and one
        # that keeps its default encode alike (the store's compare-and-set compares bytes).
        defaults: list[Any] = [[], ["*"], _ts(DEFAULT_MAX_GRACE), True, None, False, {}, [], None]
        while len(values) > 7 and values[-1] == defaults[len(values) - 8]:
            values.pop()
        return _pack(values)

    @classmethod
    def decode(cls, blob: bytes) -> Org:
        v = _unpack(blob)
        # Fields 7.. as encode() trims them: pad an older or trimmed record back.
        v += [[], ["*"], DEFAULT_MAX_GRACE, True, None, False, {}, [], None][max(0, len(v) - 7) :]
        return replace(
            cls(*v[:7]),
            member_scopes=tuple(v[7]),
            admin_scopes=tuple(v[8]),
            max_grace_period=float(v[9]),
            default_can_manage_tokens=bool(v[10]),
            default_scopes=None if v[11] is None else tuple(v[11]),
            scopes_required=bool(v[12]),
            roles={str(k): tuple(s) for k, s in v[13].items()},
            resources=tuple(v[14]),
            owner_token_limit=v[15],
        )

    def evolve(self, **changes: Any) -> Org:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "token_limit": self.token_limit,
            "owner_token_limit": self.owner_token_limit,
            "max_lifetime": self.max_lifetime,
            "allow_never": self.allow_never,
            "member_scopes": list(self.member_scopes),
            "admin_scopes": list(self.admin_scopes),
            "max_grace_period": self.max_grace_period,
            "default_can_manage_tokens": self.default_can_manage_tokens,
            "default_scopes": None if self.default_scopes is None else list(self.default_scopes),
            "scopes_required": self.scopes_required,
            "roles": {name: list(scopes) for name, scopes in sorted(self.roles.items())},
            "resources": list(self.resources),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


TombstoneReason = Literal["deleted", "rotated"]


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What a secret that no longer opens anything was (issue 12, reuse tripwire): kept
    under its digest for a while after the token is deleted or the secret rotated out,
    so that presenting it again is recognised and reported to the owner."""

    token_id: str
    org_id: str
    owner_kind: OwnerKind
    owner_id: str
    reason: TombstoneReason
    at: float

    @property
    def user_id(self) -> str | None:
        return self.owner_id if self.owner_kind == "user" else None

    def encode(self) -> bytes:
        return _pack(
            [self.token_id, self.org_id, self.owner_kind, self.owner_id, self.reason, _ts(self.at)]
        )

    @classmethod
    def decode(cls, blob: bytes) -> Tombstone:
        v = _unpack(blob)
        return cls(v[0], v[1], v[2], v[3], v[4], float(v[5]))

    @classmethod
    def of(cls, token: Token, reason: TombstoneReason, at: float) -> Tombstone:
        return cls(token.id, token.org_id, token.owner_kind, token.owner_id, reason, at)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a validated token speaks for; what the data plane annotates requests with."""

    token_id: str
    token_name: str
    token_type: TokenType
    owner_kind: OwnerKind
    owner_id: str
    org_id: str
    scopes: frozenset[str]
    #: ``None`` means every workspace.
    workspaces: frozenset[str] | None
    expires_at: float | None
