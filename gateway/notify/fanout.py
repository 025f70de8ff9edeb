"""From one audit event to its notifications: the mail and the webhook jobs (issue 14).

Who is mailed (the product pages): a personal token's **owner**; for an organization's
token, **every admin** of the org, the mail naming its creator. Only the lifecycle events
people are told about by mail are mailed (created, revoked, regenerated, and the expiry
reminders); webhooks get every token event their endpoint subscribed to.

A job's key is its idempotency key, stable across re-reads and workers: the partition and
stream id of its event (``m-<p>-<stream id>``; a webhook adds the endpoint's id), or for
a reminder the token, lead time and expiry it is about. Mails show the token's display
prefix, masked (``pat_3kF9…``); nothing here ever sees a secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from patgate.middleware.records import Token, User
from patgate.middleware.store import TokenStore

from .endpoints import Endpoints
from .mail import MailConfig, mask, render
from .outbox import Job
from .webhooks import EVENT_TYPES, payload

__all__ = ["MAIL_KINDS", "Fanout", "human_time"]

#: audit event type → mail template kind.
MAIL_KINDS = {
    "token.created": "created",
    "token.revoked": "revoked",
    "token.regenerated": "regenerated",
    "token.expiring": "expiring",
    "token.expired": "expired",
}
_WEBHOOK_TYPES = frozenset(EVENT_TYPES)


def human_time(at: float | None) -> str:
    if at is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


class Fanout:
    def __init__(
        self,
        store: TokenStore,
        endpoints: Endpoints,
        mail: MailConfig | None,
        *,
        product: str = "patgate",
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.mail = mail
        self.product = product

    async def jobs(self, key: str, event: Mapping[str, Any]) -> list[Job]:
        """The jobs of one event; ``key`` names the event (partition and stream id)."""
        org_id = event.get("org_id")
        kind = event.get("type")
        if not isinstance(org_id, str) or not isinstance(kind, str):
            return []
        token_id = event.get("token_id")
        token = None
        if isinstance(token_id, str):
            token = await self.store.get_token(token_id, org_id)
        at = float(event.get("at") or time.time())
        jobs: list[Job] = []
        if self.mail is not None and kind in MAIL_KINDS and token is not None:
            recipients = await self._recipients(token)
            if recipients:
                subject, text, html = render(
                    MAIL_KINDS[kind], self._context(event, token), self.mail.templates
                )
                jobs.append(
                    Job(
                        key="m-" + key,
                        channel="mail",
                        org_id=org_id,
                        target=recipients,
                        content={"subject": subject, "text": text, "html": html},
                        event_type=kind,
                        created_at=at,
                    )
                )
        if kind in _WEBHOOK_TYPES:
            for endpoint in await self.endpoints.all(org_id):
                if endpoint.wants(kind):
                    body = payload(kind, self._data(event, token), at)
                    jobs.append(
                        Job(
                            key=f"w-{key}-{endpoint.id}",
                            channel="webhook",
                            org_id=org_id,
                            target=endpoint.id,
                            content={"body": body.decode()},
                            event_type=kind,
                            created_at=at,
                        )
                    )
        return jobs

    async def _recipients(self, token: Token) -> list[str]:
        """The owner's address, or every enabled admin's for an org-owned token."""
        if token.owner_kind == "user":
            user = await self.store.get_user(token.org_id, token.owner_id)
            return [user.email] if user is not None and user.enabled and user.email else []
        ids = await self.store.org_user_ids(token.org_id)
        admins: list[User] = [
            u
            for u in await self.store.get_users(token.org_id, ids)
            if u.role == "admin" and u.enabled and u.email
        ]
        return sorted({u.email for u in admins})

    def _context(self, event: Mapping[str, Any], token: Token) -> dict[str, Any]:
        data = event.get("data") or {}
        actor = event.get("actor") or {}
        org_token = token.owner_kind == "org"
        return {
            "kind": MAIL_KINDS[str(event["type"])],
            "token_name": token.name,
            "token_id": token.id,
            "token_prefix": mask(token.prefix) if token.prefix else "(registered by digest)",
            "token_type": token.type,
            "scopes": list(token.scopes),
            "expires_at": human_time(token.expires_at),
            "at": human_time(float(event.get("at") or 0)),
            "ip": event.get("ip"),
            "user_agent": event.get("user_agent"),
            "actor": "the operator" if actor.get("type") == "system" else actor.get("id"),
            "owner": f"organization {token.org_id}" if org_token else token.owner_id,
            "org_id": token.org_id,
            "org_token": org_token,
            "creator": token.created_by,
            "lead": data.get("lead"),
            "product": self.product,
        }

    @staticmethod
    def _data(event: Mapping[str, Any], token: Token | None) -> dict[str, Any]:
        """A webhook's ``data``: the event's public fields and the token's, if it
        still exists (a deleted one is only its id)."""
        out: dict[str, Any] = {
            "org_id": event.get("org_id"),
            "token_id": event.get("token_id"),
            "user_id": event.get("user_id"),
            "actor": event.get("actor"),
            "ip": event.get("ip"),
            "user_agent": event.get("user_agent"),
            "details": event.get("data") or {},
        }
        if token is not None:
            out["token"] = {
                "id": token.id,
                "name": token.name,
                "prefix": token.prefix,
                "type": token.type,
                "owner": {"type": token.owner_kind, "id": token.owner_id},
                "scopes": list(token.scopes),
                "expires_at": token.expires_at,
                "issuer": token.issuer,
            }
        return out
