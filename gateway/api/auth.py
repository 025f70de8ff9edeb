"""Who is calling the management API: a patgate token with management scopes.

The caller is found by the data plane's own lookup path
(:meth:`~patgate.middleware.auth.Authenticator.identify`: credentials → lookup → status),
read *fresh*: past the cache, one Redis read per call, so a just-revoked admin token or a
just-demoted admin can do nothing more. It is not a hot path. The caller token's use is
recorded as its last use, as the data plane records it (issue 13).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from starlette.requests import Request

from patgate.gateway.lifecycle import Actor
from patgate.middleware.auth import Authenticator, Resolved
from patgate.middleware.records import LastUsed

__all__ = ["ActorResolver", "actor_of", "record_use"]


class ActorResolver:
    def __init__(
        self,
        authenticator: Authenticator,
        *,
        client_ip: Callable[[Request], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.authenticator = authenticator
        self.client_ip = client_ip
        self.clock = clock

    async def __call__(self, request: Request) -> Actor:
        ip, now = self.client_ip(request), self.clock()
        # The token's IP allowlist, the failed-authentication limit and the reuse
        # tripwire apply here as on the data plane (issue 12), to the same client address.
        resolved = await self.authenticator.identify(
            request.scope["headers"],
            now=now,
            fresh=True,
            client=ip,
            method=request.method,
            path=request.url.path,
        )
        ua = request.headers.get("user-agent")
        record_use(self.authenticator, resolved, now, request.method, request.url.path, ip, ua)
        actor = actor_of(resolved, ip, ua)
        # A host backend acting for one of its users passes that user's IP and user agent
        # for the audit trail; only callers trusted to administer users may set them.
        end_ip = request.headers.get("x-end-user-ip")
        end_ua = request.headers.get("x-end-user-agent")
        if (end_ip or end_ua) and actor.is_admin("users:admin"):
            actor = replace(actor, ip=end_ip or ip, user_agent=end_ua or ua)
        return actor


def actor_of(resolved: Resolved, ip: str | None, user_agent: str | None) -> Actor:
    """The actor a resolved management token speaks for, with its *effective* scopes: a
    demoted admin's token can do no more than a member's now."""
    identity = resolved.identity
    user = resolved.owner
    return Actor(
        kind=identity.owner_kind,
        id=identity.owner_id,
        org_id=identity.org_id,
        role=user.role if user is not None else "member",
        scopes=identity.scopes,
        token_id=identity.token_id,
        ip=ip,
        user_agent=user_agent,
    )


def record_use(
    authenticator: Authenticator,
    resolved: Resolved,
    now: float,
    method: str,
    path: str,
    ip: str | None,
    user_agent: str | None,
) -> None:
    """The caller token's last use, as the data plane records it (issue 13): through
    the authenticator's recorder (the runtime's in ``patgate serve``; none, nothing
    recorded, when the API runs on an uncached authenticator), coalesced per secret —
    a previous secret in its grace period under its own ``used_key`` — and never
    awaited: ``due`` and ``record`` are dict operations, the write is the recorder's
    next flush. The path is the one called, without the query string; the address is
    the client's (through trusted proxies), not an ``X-End-User-IP`` — that is the
    audit trail's, this is where the token itself was used."""
    recorder = authenticator.recorder
    if recorder is None:
        return
    if recorder.due(resolved.used_key, now):
        used = LastUsed(now, method, path, ip, user_agent)
        recorder.record(resolved.partition, resolved.used_key, used)
