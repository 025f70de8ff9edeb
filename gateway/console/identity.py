"""Who is using the console: a management token's session, or the host's signed-in user.

Two ways in, one :class:`Viewer` out, whose :class:`~patgate.gateway.lifecycle.Actor`
every page hands to the service layer — so the console obeys exactly the lifecycle
rules the API does:

* **standalone** (``patgate serve``/``api``): the session names a management token by
  its index digest; each request reads that token fresh through the data plane's own
  lookup (:meth:`~patgate.middleware.auth.Authenticator.recall`): revoked, expired,
  rotated, owner disabled, or outside its IP allowlist, and the session is over. The
  actor has the token's *effective* scopes, as in the API;
* **host** (mounted in a host product with a :data:`SignedIn` hook): the host says who
  is signed in on every request, and the console acts as that patgate user with the
  management scopes of their role (:data:`HOST_SCOPES`), bounded by what they may grant
  now (their ``grantable_scopes``, the org's catalogue). The user must exist in patgate
  (synced through ``PUT /v1/users/{id}``), be enabled and hold the token permission.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from patgate.gateway.lifecycle import Actor
from patgate.middleware.records import Org, User, owner_key

__all__ = ["HOST_SCOPES", "ConsoleUser", "SignedIn", "Viewer"]


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """The host's answer to "who is signed in": a user patgate knows, by org and id."""

    org_id: str
    user_id: str

    @property
    def key(self) -> str:
        return owner_key("user", self.user_id, self.org_id)


#: the host hook: the signed-in user of this request, or None (nobody is).
SignedIn = Callable[[Request], Awaitable[ConsoleUser | None]]

#: what a host-signed-in user may do through the console, by role: their own tokens,
#: and for admins their org's tokens and users. Grants still bound every token minted.
HOST_SCOPES: dict[str, frozenset[str]] = {
    "member": frozenset({"tokens:read:own", "tokens:write:own"}),
    "admin": frozenset({"tokens:read:own", "tokens:write:own", "tokens:admin", "users:admin"}),
}


@dataclass(frozen=True, slots=True)
class Viewer:
    actor: Actor
    org: Org
    #: the signed-in user's record; None for an org-owned management token.
    user: User | None
    via: Literal["token", "host"]

    @property
    def label(self) -> str:
        if self.user is not None:
            return self.user.name or self.user.email or self.user.id
        return f"organization token of {self.org.name or self.org.id}"

    @property
    def manages_tokens(self) -> bool:
        return self.actor.is_admin("tokens:admin")

    @property
    def manages_users(self) -> bool:
        return self.actor.is_admin("users:admin")

    @property
    def manages_org(self) -> bool:
        return self.actor.is_admin("users:admin") and self.actor.is_admin("tokens:admin")

    @property
    def writes_own(self) -> bool:
        return self.actor.may("tokens:write", own=True)
