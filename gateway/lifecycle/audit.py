"""Audit events: built here, written atomically with the change they describe.

An event is a JSON object in the ``{ns}:events`` Redis Stream, appended by the same
``COMMIT`` script that applies the change, so a change without its event (or the
reverse) cannot happen. Events never carry a secret or a digest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from patgate.middleware.errors import ValidationFailed
from patgate.middleware.records import OwnerKind
from patgate.middleware.store import TokenStore
from patgate.middleware.store.plan import audit_event

from .actor import Actor

__all__ = ["EVENT_TYPES", "EventQuery", "event_json", "query_events"]

EVENT_TYPES = frozenset(
    {
        "token.created",
        "token.registered",
        "token.updated",
        "token.scopes_changed",
        "token.revoked",
        "token.regenerated",
        "token.deleted",
        "token.grace_ended",
        "token.reuse_after_revoke",
        "token.reuse_after_rotation",
        "token.reuse_after_expiry",
        "token.reuse_after_delete",
        "user.created",
        "user.updated",
        "user.permission_changed",
        "user.removed",
        "org.created",
        "org.updated",
        "bootstrap",
    }
)

# A page scans at most this many stream entries, so a filter that matches nothing in a
# long history still answers quickly; the response carries a cursor to continue.
_SCAN_LIMIT = 10_000
#: a Redis Stream entry id ``<ms>-<seq>``, the events cursor; anything else would reach
#: XREVRANGE raw and fail there (Redis answers an error, not an empty page).
_STREAM_ID = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
_U64 = 2**64 - 1


def _check_cursor(cursor: str) -> str:
    """A cursor this API can have returned: a stream id with both parts in 64 bits, and
    above ``0-0`` (XREVRANGE's exclusive ``(0-0`` is an error: nothing precedes it)."""
    m = _STREAM_ID.fullmatch(cursor)
    ms, seq = (int(m[1]), int(m[2])) if m else (0, 0)
    if not (ms <= _U64 and seq <= _U64 and (ms, seq) > (0, 0)):
        raise ValidationFailed("cursor: not a cursor returned by this API")
    return cursor


def event_json(
    kind: str,
    actor: Actor,
    now: float,
    *,
    org_id: str | None,
    token_id: str | None = None,
    user_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> str:
    assert kind in EVENT_TYPES, kind
    return audit_event(
        kind,
        now,
        org_id=org_id,
        actor={"type": actor.kind, "id": actor.id, "token_id": actor.token_id},
        ip=actor.ip,
        user_agent=actor.user_agent,
        token_id=token_id,
        user_id=user_id,
        data=data,
    )


@dataclass(frozen=True, slots=True)
class EventQuery:
    #: each org's events are in its partition's stream (keys.Keys.events): one org at a
    #: time, so a query reads one stream, not 1,024.
    org_id: str
    token_id: str | None = None
    actor: str | None = None
    type: str | None = None
    limit: int = 50
    cursor: str | None = None
    #: only the events of tokens this owner holds (a member's own audit trail, issue 13):
    #: ``("user", <id>)`` — token events whose ``user_id`` is that user, the reuse
    #: tripwire's included; ``("org", <org id>)`` — token events of org-owned tokens
    #: (``user_id`` null). None: every event of the org (an admin, the operator). The
    #: other filters only narrow it further.
    owner: tuple[OwnerKind, str] | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        return (
            event.get("org_id") == self.org_id
            and (self.owner is None or _owned(event, *self.owner))
            and (self.token_id is None or event.get("token_id") == self.token_id)
            and (self.actor is None or event.get("actor", {}).get("id") == self.actor)
            and (self.type is None or event.get("type") == self.type)
        )


def _owned(event: dict[str, Any], kind: OwnerKind, owner_id: str) -> bool:
    """Whether ``event`` is about a token of this owner. Token events carry the token's
    ``user_id`` when a user owns it and null for an org-owned one; events about users or
    the org itself (no ``token_id``) are nobody's token events."""
    if event.get("token_id") is None:
        return False
    user_id = event.get("user_id")
    return user_id is None if kind == "org" else user_id == owner_id


async def query_events(store: TokenStore, q: EventQuery) -> tuple[list[dict[str, Any]], str | None]:
    """Matching events newest first, and the cursor for the next page (or None)."""
    if q.cursor is not None:
        _check_cursor(q.cursor)
    found: list[dict[str, Any]] = []
    before = q.cursor
    scanned = 0
    while scanned < _SCAN_LIMIT:
        rows = await store.events(q.org_id, before=before, count=200)
        if not rows:
            return found, None
        for stream_id, blob in rows:
            scanned += 1
            before = stream_id
            event = json.loads(blob)
            if q.matches(event):
                event["id"] = stream_id
                found.append(event)
                if len(found) == q.limit:
                    return found, stream_id
    return found, before
