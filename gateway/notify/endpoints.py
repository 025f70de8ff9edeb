"""Webhook endpoints: per organization, managed by its admins (issue 14).

An endpoint is a URL (checked by :func:`.webhooks.check_url`: no private addresses
unless ``PATGATE_WEBHOOK_ALLOW_PRIVATE``), the event types it wants, and a signing
secret (Standard Webhooks ``whsec_…``), shown once when it is made or rotated — the
receiver verifies signatures with it, so patgate keeps it (it is not a token secret:
it authenticates patgate to the receiver, not anyone to patgate).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from patgate.gateway.lifecycle import Actor
from patgate.middleware.errors import NotFound, ValidationFailed
from patgate.middleware.store import redis_errors_wrapped

from .outbox import Job, OutboxKeys
from .webhooks import check_event_types, check_url, new_secret, payload

__all__ = ["MAX_ENDPOINTS", "Endpoint", "Endpoints", "test_job"]

#: endpoints per organization.
MAX_ENDPOINTS = 20


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    org_id: str
    url: str
    event_types: tuple[str, ...]
    secret: str
    created_at: float
    description: str = ""

    def wants(self, event_type: str) -> bool:
        return "*" in self.event_types or event_type in self.event_types

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, blob: bytes | str) -> Endpoint:
        v = json.loads(blob)
        v["event_types"] = tuple(v["event_types"])
        return cls(**v)

    def to_json(self) -> dict[str, Any]:
        """What lists show: never the secret."""
        return {
            "id": self.id,
            "org_id": self.org_id,
            "url": self.url,
            "event_types": list(self.event_types),
            "description": self.description,
            "created_at": self.created_at,
        }


def test_job(endpoint: Endpoint, now: float) -> Job:
    """A ``webhook.test`` delivery to ``endpoint`` (API and CLI "test"); its outcome shows
    in the endpoint's attempts."""
    body = payload("webhook.test", {"org_id": endpoint.org_id, "endpoint": endpoint.id}, now)
    return Job(
        key=f"t-{secrets.token_hex(8)}-{endpoint.id}",
        channel="webhook",
        org_id=endpoint.org_id,
        target=endpoint.id,
        content={"body": body.decode()},
        event_type="webhook.test",
        created_at=now,
    )


class Endpoints:
    """Create, list, delete and rotate an org's endpoints (admins: ``tokens:admin``)."""

    def __init__(
        self,
        client: Any,
        namespace: str,
        *,
        allow_private: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.r: Any = client
        self.keys = OutboxKeys(namespace)
        self.allow_private = allow_private
        self.clock = clock

    @staticmethod
    def _authorize(actor: Actor, org_id: str) -> None:
        actor.require_admin("tokens:admin")
        actor.require_org(org_id)

    async def create(self, actor: Actor, org_id: str, body: dict[str, Any]) -> Endpoint:
        self._authorize(actor, org_id)
        unknown = set(body) - {"url", "event_types", "description"}
        if unknown:
            raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")
        url = check_url(body.get("url"), allow_private=self.allow_private)
        types = check_event_types(body.get("event_types", ["*"]))
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > 200:
            raise ValidationFailed("description: expected a string of at most 200 chars")
        endpoint = Endpoint(
            id="wh_" + secrets.token_hex(8),
            org_id=org_id,
            url=url,
            event_types=types,
            secret=new_secret(),
            created_at=self.clock(),
            description=description,
        )
        key = self.keys.endpoints(org_id)
        with redis_errors_wrapped():
            if await self.r.hlen(key) >= MAX_ENDPOINTS:
                raise ValidationFailed(f"an organization has at most {MAX_ENDPOINTS} endpoints")
            await self.r.hset(key, endpoint.id, endpoint.encode())
        return endpoint

    async def all(self, org_id: str) -> list[Endpoint]:
        """Every endpoint of ``org_id`` (the worker's read; no authorization)."""
        with redis_errors_wrapped():
            rows = await self.r.hgetall(self.keys.endpoints(org_id))
        return sorted((Endpoint.decode(v) for v in rows.values()), key=lambda e: e.created_at)

    async def list(self, actor: Actor, org_id: str) -> list[Endpoint]:
        self._authorize(actor, org_id)
        return await self.all(org_id)

    async def get(self, actor: Actor, org_id: str, endpoint_id: str) -> Endpoint:
        self._authorize(actor, org_id)
        return await self.find(org_id, endpoint_id)

    async def find(self, org_id: str, endpoint_id: str) -> Endpoint:
        with redis_errors_wrapped():
            blob = await self.r.hget(self.keys.endpoints(org_id), endpoint_id)
        if blob is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found")
        return Endpoint.decode(blob)

    async def delete(self, actor: Actor, org_id: str, endpoint_id: str) -> None:
        self._authorize(actor, org_id)
        with redis_errors_wrapped():
            if not await self.r.hdel(self.keys.endpoints(org_id), endpoint_id):
                raise NotFound(f"webhook endpoint {endpoint_id} not found")
            await self.r.delete(self.keys.attempts(endpoint_id))

    async def rotate(self, actor: Actor, org_id: str, endpoint_id: str) -> Endpoint:
        """A new signing secret, effective for every delivery from now on (retries of
        earlier jobs included: they are signed when sent)."""
        endpoint = await self.get(actor, org_id, endpoint_id)
        rotated = replace(endpoint, secret=new_secret())
        with redis_errors_wrapped():
            await self.r.hset(self.keys.endpoints(org_id), endpoint_id, rotated.encode())
        return rotated
