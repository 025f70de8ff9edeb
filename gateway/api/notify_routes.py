"""The notification endpoints of the management API (issue 14): webhook endpoints and
the dead letters. Org admins (``tokens:admin``), their own org; the operator names one
with ``?org_id=``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from patgate.gateway.lifecycle import Actor
from patgate.gateway.notify.setup import Notifications
from patgate.middleware.errors import ValidationFailed

__all__ = ["NotifyApi"]

_NO_STORE = {"cache-control": "no-store"}
Resolve = Callable[[Request], Awaitable[Actor]]
Body = Callable[[Request], Awaitable[dict[str, Any]]]


class NotifyApi:
    def __init__(
        self,
        notifications: Notifications,
        resolve: Resolve,
        body: Body,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.n = notifications
        self.resolve = resolve
        self.body = body
        self.clock = clock

    async def _caller(self, request: Request) -> tuple[Actor, str]:
        actor = await self.resolve(request)
        org_id = request.query_params.get("org_id", actor.org_id)
        if org_id is None:
            raise ValidationFailed("org_id: required")
        actor.require_admin("tokens:admin")
        actor.require_org(org_id)
        return actor, org_id

    async def create(self, request: Request) -> Response:
        actor, org_id = await self._caller(request)
        endpoint = await self.n.endpoints.create(actor, org_id, await self.body(request))
        # The signing secret, once: the receiver needs it to verify signatures.
        out = {**endpoint.to_json(), "secret": endpoint.secret}
        return JSONResponse(out, status_code=201, headers=_NO_STORE)

    async def list_endpoints(self, request: Request) -> Response:
        actor, org_id = await self._caller(request)
        items = [e.to_json() for e in await self.n.endpoints.list(actor, org_id)]
        return JSONResponse({"items": items})

    async def get(self, request: Request) -> Response:
        actor, org_id = await self._caller(request)
        endpoint = await self.n.endpoints.get(actor, org_id, request.path_params["id"])
        return JSONResponse(endpoint.to_json())

    async def delete(self, request: Request) -> Response:
        actor, org_id = await self._caller(request)
        await self.n.endpoints.delete(actor, org_id, request.path_params["id"])
        return Response(status_code=204)

    async def rotate(self, request: Request) -> Response:
        actor, org_id = await self._caller(request)
        endpoint = await self.n.endpoints.rotate(actor, org_id, request.path_params["id"])
        out = {**endpoint.to_json(), "secret": endpoint.secret}
        return JSONResponse(out, headers=_NO_STORE)

    async def test(self, request: Request) -> Response:
        """Queue a ``webhook.test`` delivery to the endpoint (202: the worker sends it;
        its outcome shows in the endpoint's attempts)."""
        actor, org_id = await self._caller(request)
        endpoint = await self.n.endpoints.get(actor, org_id, request.path_params["id"])
        job = await self.n.send_test(endpoint, self.clock())
        return JSONResponse({"id": job.key, "status": "queued"}, status_code=202)

    async def attempts(self, request: Request) -> Response:
        actor, org_id = await self._caller(request)
        endpoint = await self.n.endpoints.get(actor, org_id, request.path_params["id"])
        return JSONResponse({"items": await self.n.outbox.attempts(endpoint.id)})

    async def dead(self, request: Request) -> Response:
        _, org_id = await self._caller(request)
        jobs = await self.n.outbox.dead_letters(org_id)
        return JSONResponse({"items": [j.to_json() for j in jobs]})

    async def retry_dead(self, request: Request) -> Response:
        _, org_id = await self._caller(request)
        job = await self.n.retry_dead(org_id, request.path_params["id"], self.clock())
        return JSONResponse(job.to_json())

    def table(self) -> list[tuple[str, str, Callable[[Request], Awaitable[Response]]]]:
        return [
            ("/v1/webhooks", "POST", self.create),
            ("/v1/webhooks", "GET", self.list_endpoints),
            ("/v1/webhooks/{id}", "GET", self.get),
            ("/v1/webhooks/{id}", "DELETE", self.delete),
            ("/v1/webhooks/{id}/rotate", "POST", self.rotate),
            ("/v1/webhooks/{id}/test", "POST", self.test),
            ("/v1/webhooks/{id}/attempts", "GET", self.attempts),
            ("/v1/notifications/dead", "GET", self.dead),
            ("/v1/notifications/dead/{id}/retry", "POST", self.retry_dead),
        ]
