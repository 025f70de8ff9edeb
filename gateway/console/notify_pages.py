"""The org admin's notification settings (issue 14's features in the console): the
organization's signed webhook endpoints — which token events go where —, each one's
recent delivery attempts, a test delivery, and the notifications given up on.

The same objects as ``/v1/webhooks`` and ``/v1/notifications/dead``
(:class:`~patgate.gateway.notify.setup.Notifications`); the signing secret of a new or
rotated endpoint is shown once, like a token's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from patgate.gateway.notify.setup import Notifications
from patgate.gateway.notify.webhooks import EVENT_TYPES
from patgate.middleware.errors import ServiceError

from .forms import field_of

if TYPE_CHECKING:
    from .kit import Ctx, Kit

__all__ = ["NotifyPages"]

Endpoint = Callable[[Request], Awaitable[Response]]
_REUSED = "That form was already used; its secret was shown once. Open the page again."


class NotifyPages:
    def __init__(self, kit: Kit, notifications: Notifications) -> None:
        self.c = kit
        self.n = notifications

    def table(self) -> list[tuple[str, str, Endpoint]]:
        return [
            ("/admin/notifications", "GET", self.page),
            ("/admin/webhooks", "POST", self.create),
            ("/admin/webhooks/{id}/delete", "POST", self.delete),
            ("/admin/webhooks/{id}/test", "POST", self.test),
            ("/admin/webhooks/{id}/rotate", "POST", self.rotate),
            ("/admin/notifications/{id}/retry", "POST", self.retry),
        ]

    @staticmethod
    def _org(ctx: Ctx) -> str:
        ctx.actor.require_admin("tokens:admin")
        org_id = ctx.actor.org_id
        assert org_id is not None
        return org_id

    async def _page(
        self, ctx: Ctx, *, error: str | None = None, values: dict[str, str] | None = None,
        checked: list[str] | None = None, code: int = 200,
    ) -> Response:  # fmt: skip
        org_id = self._org(ctx)
        endpoints = await self.n.endpoints.list(ctx.actor, org_id)
        attempts = {e.id: await self.n.outbox.attempts(e.id, limit=5) for e in endpoints}
        dead = await self.n.outbox.dead_letters(org_id)
        return await self.c.html(
            ctx,
            "notifications.html",
            code,
            nav="notifications",
            endpoints=[e.to_json() for e in endpoints],
            attempts=attempts,
            dead=[d.to_json() for d in dead],
            event_types=[t for t in EVENT_TYPES if t != "webhook.test"],
            error=error,
            error_field=None if error is None else field_of(error),
            values=values or {},
            checked=set(checked or []),
            form_id=await self.c.new_form(ctx),
        )

    async def page(self, request: Request) -> Response:
        return await self._page(await self.c.ctx(request))

    async def create(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        if not await self.c.use_form(ctx, form):  # a re-post: no second endpoint
            return await self.c.redirect(ctx, "/admin/notifications", ("error", _REUSED))
        types = form.getlist("event_types") or ["*"]
        try:
            endpoint = await self.n.endpoints.create(
                ctx.actor,
                self._org(ctx),
                {
                    "url": form.get("url").strip(),
                    "description": form.get("description").strip(),
                    "event_types": types,
                },
            )
        except ServiceError as exc:
            return await self._page(
                ctx, error=str(exc), values=form.values(), checked=types, code=exc.status_code
            )
        return await self.c.html(
            ctx, "webhook_secret.html", 201, nav="notifications", endpoint=endpoint.to_json(),
            secret=endpoint.secret, heading="Webhook endpoint added",
        )  # fmt: skip

    async def rotate(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        if not await self.c.use_form(ctx, form):  # a re-post: no second rotation
            return await self.c.redirect(ctx, "/admin/notifications", ("error", _REUSED))
        try:
            endpoint = await self.n.endpoints.rotate(
                ctx.actor, self._org(ctx), request.path_params["id"]
            )
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/admin/notifications", ("error", str(exc)))
        return await self.c.html(
            ctx, "webhook_secret.html", 200, nav="notifications", endpoint=endpoint.to_json(),
            secret=endpoint.secret, heading="Signing secret rotated",
        )  # fmt: skip

    async def delete(self, request: Request) -> Response:
        ctx, _ = await self.c.action(request)
        try:
            await self.n.endpoints.delete(ctx.actor, self._org(ctx), request.path_params["id"])
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/admin/notifications", ("error", str(exc)))
        return await self.c.redirect(ctx, "/admin/notifications", ("ok", "Endpoint removed."))

    async def test(self, request: Request) -> Response:
        ctx, _ = await self.c.action(request)
        try:
            endpoint = await self.n.endpoints.get(
                ctx.actor, self._org(ctx), request.path_params["id"]
            )
            await self.n.send_test(endpoint, self.c.clock())
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/admin/notifications", ("error", str(exc)))
        return await self.c.redirect(
            ctx,
            "/admin/notifications",
            ("ok", "Test delivery queued; its outcome shows under the endpoint's attempts."),
        )

    async def retry(self, request: Request) -> Response:
        ctx, _ = await self.c.action(request)
        try:
            await self.n.retry_dead(self._org(ctx), request.path_params["id"], self.c.clock())
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/admin/notifications", ("error", str(exc)))
        return await self.c.redirect(
            ctx, "/admin/notifications", ("ok", "Queued again for delivery.")
        )
