"""Expiry reminders (issue 14): a mail and a webhook ahead of a token's expiry, at each
lead time (7 days and 1 day by default, ``PATGATE_REMINDER_LEADS``), and once more when
it expires — as GitLab does.

Found through the expiry index (``keys.Keys.expiring``: one set per partition and hour
of expiry, kept by every commit that writes a token), never by scanning tokens. For each
lead ``L`` the worker reads the buckets of the hours up to ``now + L``; a token of a
bucket whose ``expires_at - L`` has come is due. Each reminder's job key is
``r-<token>-<L>-<expiry>`` — once per token, lead time and expiry date, however many
workers read the bucket and however often (the outbox enqueues a key once, and
remembers it delivered for a week). A regeneration gives the token a new expiry, so a
new bucket and new keys: its reminders are scheduled again.

A per-lead cursor in the store (the last hour fully read) survives restarts, so after
downtime the worker catches up rather than skipping reminders — one pass reads any range
of hours with one command per partition (``keys.Keys.expiry_hours`` lists the hours that
have buckets), then only the buckets that exist. On its very first pass it starts at the
current hour (no reminders for the past). A revoked token gets no reminder, and no
expiry mail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from patgate.middleware.records import Token
from patgate.middleware.store import TokenStore, redis_errors_wrapped

from .fanout import Fanout
from .outbox import Outbox

__all__ = ["DEFAULT_LEADS", "Reminders", "describe_lead"]

#: lead times in seconds (the expiry itself, 0, is always added).
DEFAULT_LEADS = (7 * 86_400.0, 86_400.0)
_HOUR = 3600
#: hours of expiry kept listed after they passed (keys.Keys.expiry_hours), for the
#: expiry mails of a worker that was down: as long as the buckets themselves live.
_KEEP_HOURS = 72


def describe_lead(seconds: float) -> str:
    """``7 days``, ``1 day``, ``12 hours``, ``30 minutes`` — for the mail."""
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{int(seconds)} seconds"


class Reminders:
    def __init__(
        self,
        store: TokenStore,
        outbox: Outbox,
        fanout: Fanout,
        leads: Sequence[float] = DEFAULT_LEADS,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.fanout = fanout
        self.leads = tuple(sorted({float(lead) for lead in leads if lead > 0}, reverse=True))
        self._r: Any = store.client

    def _cursor_key(self, lead: float) -> str:
        return self.outbox.keys.base + f"remcur:{int(lead)}"

    async def tick(self, now: float, partitions: Sequence[int] | None = None) -> int:
        """Enqueue every reminder that has come due; how many were new. ``partitions``:
        the ones that hold tokens at all (those with an audit stream; default all)."""
        queued = 0
        for lead in (*self.leads, 0.0):
            queued += await self._lead(lead, now, partitions)
        await self.store.trim_expiry_hours(math.floor(now / _HOUR) - _KEEP_HOURS, partitions)
        return queued

    async def _lead(self, lead: float, now: float, partitions: Sequence[int] | None) -> int:
        current = math.floor((now + lead) / _HOUR)
        key = self._cursor_key(lead)
        with redis_errors_wrapped():
            # The first pass ever starts at the current hour, and says so for the next.
            await self._r.set(key, str(current - 1), nx=True)
            done = int(await self._r.get(key))
        if done >= current:
            return 0  # another worker is ahead (its clock, or a lead removed and re-added)
        queued = 0
        shorter = max((x for x in self.leads if x < lead), default=0.0)
        due = await self.store.expiring(done + 1, current, partitions)
        for (partition, hour), ids in due.items():
            for token in await self.store.tokens_in(partition, ids):
                if self._due(token, hour, lead, shorter, now):
                    queued += await self._enqueue(token, lead, now)
        if current - 1 > done:
            # Every token of an hour before the current one was due: those are read.
            with redis_errors_wrapped():
                await self._r.set(key, str(current - 1))
        return queued

    @staticmethod
    def _due(token: Token, hour: int, lead: float, shorter: float, now: float) -> bool:
        expires = token.expires_at
        if expires is None or math.floor(expires / _HOUR) != hour:
            return False  # a stale entry: regenerated to another expiry since
        if token.revoked_at is not None or expires - lead > now:
            return False
        if not lead:
            return now >= expires  # the expiry mail, once it has expired
        # A lead reminder only while it is news: not for a token issued inside the lead
        # (a 7-day token is not told "7 days left" at birth), and not once the next
        # shorter one is due too (a worker catching up sends only the latest).
        return expires - token.issued_at > lead and expires - shorter > now

    async def _enqueue(self, token: Token, lead: float, now: float) -> int:
        assert token.expires_at is not None
        kind = "token.expiring" if lead else "token.expired"
        event = {
            "type": kind,
            "at": now,
            "org_id": token.org_id,
            "token_id": token.id,
            "user_id": token.owner_id if token.owner_kind == "user" else None,
            "actor": {"type": "system", "id": "patgate", "token_id": None},
            "ip": None,
            "user_agent": None,
            "data": {
                "lead": describe_lead(lead) if lead else None,
                "expires_at": token.expires_at,
            },
        }
        key = f"{token.id}-{int(lead)}-{int(token.expires_at)}"
        queued = 0
        for job in await self.fanout.jobs("r-" + key, event):
            queued += await self.outbox.enqueue(job, now)
        return queued
