"""Who is calling the management API: a patgate token with management scopes.

The management API does not use the data plane's cache: each call does one fresh Redis
lookup, so a just-revoked admin token or a just-demoted admin can do nothing more. It is
not a hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from starlette.requests import Request

from patgate.gateway.lifecycle import Actor
from patgate.middleware.credentials import bearer_token
from patgate.middleware.errors import InvalidToken
from patgate.middleware.records import Org, Token, User
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.middleware.validate import usable_identity

__all__ = ["ActorResolver"]

# RFC 6750 §3.1: unknown and malformed tokens get one identical answer — the same words
# as the data plane's (middleware.auth), so no front door tells them apart.
_UNKNOWN = "invalid or unknown token"


class ActorResolver:
    def __init__(
        self,
        store: TokenStore,
        token_format: TokenFormat,
        *,
        client_ip: Callable[[Request], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.format = token_format
        self.client_ip = client_ip
        self.clock = clock

    async def __call__(self, request: Request) -> Actor:
        secret = bearer_token(request.scope["headers"])
        if not self.format.is_well_formed(secret):
            raise InvalidToken(_UNKNOWN)
        found = await self.store.lookup(self.format.digest(secret))
        if found is None:
            raise InvalidToken(_UNKNOWN)
        token = Token.decode(found[0])
        user = None if found[1] is None else User.decode(found[1])
        org = None if found[2] is None else Org.decode(found[2])
        # Effective scopes: a demoted admin's token can do no more than a member's now.
        identity = usable_identity(token, user, self.clock(), org)
        ip = self.client_ip(request)
        ua = request.headers.get("user-agent")
        actor = Actor(
            kind=identity.owner_kind,
            id=identity.owner_id,
            org_id=identity.org_id,
            role=user.role if user is not None else "member",
            scopes=identity.scopes,
            token_id=identity.token_id,
            ip=ip,
            user_agent=ua,
        )
        # A host backend acting for one of its users passes that user's IP and user agent
        # for the audit trail; only callers trusted to administer users may set them.
        end_ip = request.headers.get("x-end-user-ip")
        end_ua = request.headers.get("x-end-user-agent")
        if (end_ip or end_ua) and actor.is_admin("users:admin"):
            actor = replace(actor, ip=end_ip or ip, user_agent=end_ua or ua)
        return actor
