"""Who is acting: the subject of every management operation and audit event."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import Literal

from patgate.middleware.errors import Forbidden
from patgate.middleware.records import OwnerKind, Role, owner_key
from patgate.policies.scopes import grants

__all__ = ["Actor", "ActorKind"]

ActorKind = Literal["user", "org", "system"]


@dataclass(frozen=True, slots=True)
class Actor:
    """A user (through one of their tokens), an org-owned token, or the local operator.

    ``system`` is the CLI run by whoever holds the store: it may do everything, and its
    audit events name the OS user. Admin scopes of a user token only count while that
    user's role is ``admin`` — demoting a user disarms their admin tokens at once.
    """

    kind: ActorKind
    id: str
    org_id: str | None
    role: Role = "member"
    scopes: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def system(cls, *, ip: str | None = None, user_agent: str | None = "patgate-cli") -> Actor:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry in some containers
            who = "unknown"
        return cls(
            kind="system", id="cli:" + who, org_id=None, role="admin", ip=ip, user_agent=user_agent
        )

    @property
    def is_system(self) -> bool:
        return self.kind == "system"

    @property
    def owner_kind(self) -> OwnerKind | None:
        """The kind of token owner the actor's own tokens have (None for the operator)."""
        if self.kind == "system":
            return None
        return "user" if self.kind == "user" else "org"

    def owns(self, kind: OwnerKind, owner_id: str) -> bool:
        """Whether tokens of this owner are the actor's own."""
        return kind == self.owner_kind and owner_id == self.id

    @property
    def own_key(self) -> str:
        """The owner key (``u:<id>``/``o:<id>``) of the actor's own tokens."""
        kind = self.owner_kind
        if kind is None or self.org_id is None:
            raise ValueError("the local operator owns no tokens")
        return owner_key(kind, self.id, self.org_id)

    def may(self, scope: str, *, own: bool = False) -> bool:
        """Whether the actor's token grants ``scope`` (``own``: on the actor's own tokens)."""
        if self.is_system:
            return True
        return grants(self.scopes, scope, owner_match=own)

    def is_admin(self, scope: str) -> bool:
        if self.is_system:
            return True
        if self.kind == "user" and self.role != "admin":
            return False
        return grants(self.scopes, scope)

    def require(self, scope: str, *, own: bool = False) -> None:
        if not self.may(scope, own=own):
            raise Forbidden(f"this token lacks the {scope}{':own' if own else ''} scope")

    def require_admin(self, scope: str) -> None:
        if not self.is_admin(scope):
            raise Forbidden(f"this operation needs the {scope} scope and the admin role")

    def require_org(self, org_id: str) -> None:
        """Non-system actors only ever see their own organization."""
        if not self.is_system and self.org_id != org_id:
            raise Forbidden("that resource belongs to another organization")
