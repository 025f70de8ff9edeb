"""The "Settings → API Tokens" pages of one user (or one org token): list, create,
detail, edit, scopes, revoke, regenerate, delete.

Every action is one call into :class:`~patgate.gateway.lifecycle.TokenService` with the
viewer's actor, so the rules are the API's: a refusal is the service's own message,
shown on the page, and changes nothing. Actions answer with a redirect and a one-time
message (post/redirect/get), except the two that reveal a secret: create and
regenerate answer the POST itself, with ``no-store``, so the secret is never in a URL,
a session, a redirect or a log — and a reload cannot bring it back (their forms are
one-time, :meth:`SessionStore.use_form`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from patgate.gateway.lifecycle import Filters
from patgate.gateway.lifecycle.shaping import RESTRICTED_OPERATIONS
from patgate.middleware.errors import ServiceError, ValidationFailed
from patgate.middleware.records import Token

from .forms import (
    DURATIONS,
    GRACE_PERIODS,
    Form,
    create_arguments,
    expiry_arguments,
    field_of,
    lines,
)

if TYPE_CHECKING:
    from .kit import Ctx, Kit

__all__ = ["TokenPages", "label_confirmed"]

_REUSED = (
    "This form was already used. A secret is shown only once: if you did not copy it, "
    "regenerate the token."
)
_STATUSES = (("", "All"), ("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked"))
Endpoint = Callable[[Request], Awaitable[Response]]


def label_confirmed(token: Token, form: Form) -> bool:
    """Organization tokens are revoked or deleted only by typing their label (the name)."""
    return token.owner_kind != "org" or form.get("confirm_label").strip() == token.name


def grace_seconds(form: Form) -> float:
    raw = form.get("grace_period", "0").strip() or "0"
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise ValidationFailed("grace_period: choose how long the old secret keeps working")
    return float(raw)


class TokenPages:
    def __init__(self, console: Kit) -> None:
        self.c = console

    def table(self) -> list[tuple[str, str, Endpoint]]:
        return [
            ("/tokens", "GET", self.list),
            ("/tokens/new", "GET", self.new),
            ("/tokens/new", "POST", self.create),
            ("/tokens/delete-all", "POST", self.delete_all),
            ("/tokens/{id}", "GET", self.detail),
            ("/tokens/{id}/edit", "POST", self.edit),
            ("/tokens/{id}/allowlist", "POST", self.allowlist),
            ("/tokens/{id}/role", "POST", self.role),
            ("/tokens/{id}/scopes/add", "POST", self.add_scope),
            ("/tokens/{id}/scopes/remove", "POST", self.remove_scope),
            ("/tokens/{id}/scopes/clear", "POST", self.clear_scopes),
            ("/tokens/{id}/revoke", "POST", self.revoke),
            ("/tokens/{id}/regenerate", "POST", self.regenerate),
            ("/tokens/{id}/end-grace", "POST", self.end_grace),
            ("/tokens/{id}/delete", "POST", self.delete),
        ]

    # -- list ------------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        ctx = await self.c.ctx(request)
        q = request.query_params
        filters = Filters.parse(
            status=q.get("status") or None, q=q.get("q") or None, cursor=q.get("cursor") or None
        )
        page = await self.c.tokens.list_own(ctx.actor, filters)
        return await self.c.html(
            ctx,
            "tokens.html",
            nav="tokens",
            tokens=[t.to_json(ctx.now) for t in page.items],
            next_cursor=page.next_cursor,
            status=filters.status or "",
            q=filters.q or "",
            statuses=_STATUSES,
        )

    # -- create ----------------------------------------------------------------------------

    async def _form_page(
        self, ctx: Ctx, values: dict[str, str], error: ServiceError | None, status: int = 200
    ) -> Response:
        return await self.c.html(
            ctx,
            "token_new.html",
            status,
            nav="tokens",
            form_id=await self.c.new_form(ctx),
            values=values,
            checked=set(values.get("__ops", "").split()),
            error=None if error is None else str(error),
            error_field=None if error is None else field_of(error),
            durations=DURATIONS,
            operations=RESTRICTED_OPERATIONS,
            org=ctx.viewer.org if ctx.viewer else None,
        )

    async def new(self, request: Request) -> Response:
        ctx = await self.c.ctx(request)
        defaults = {
            "expiration": "30d",
            "access": "default",
            "workspace_scope": "all",
            "owner": "me",
        }
        return await self._form_page(ctx, defaults, None)

    async def create(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        assert ctx.viewer is not None
        if not await self.c.use_form(ctx, form):
            return await self.c.html(
                ctx, "message.html", 409, title="Already submitted", detail=_REUSED
            )
        values = form.values()
        values["__ops"] = " ".join(form.getlist("op"))
        try:
            arguments = create_arguments(form, ctx.viewer.org, admin=ctx.viewer.manages_tokens)
            token, secret = await self.c.tokens.create(ctx.actor, **arguments)
        except ServiceError as exc:
            return await self._form_page(ctx, values, exc, exc.status_code)
        assert secret is not None
        return await self.c.html(
            ctx, "secret.html", 201, nav="tokens", token=token.to_json(ctx.now), secret=secret,
            heading="Token created",
        )  # fmt: skip

    # -- one token -------------------------------------------------------------------------

    async def detail(self, request: Request) -> Response:
        ctx = await self.c.ctx(request)
        return await self._detail(ctx, request.path_params["id"])

    async def _detail(
        self,
        ctx: Ctx,
        token_id: str,
        *,
        error: str | None = None,
        values: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        token = await self.c.tokens.get(ctx.actor, token_id)
        viewer = ctx.viewer
        assert viewer is not None
        own = viewer.actor.owns(token.owner_kind, token.owner_id)
        data = token.to_json(ctx.now)
        return await self.c.html(
            ctx,
            "token.html",
            status,
            nav="tokens",
            token=data,
            own=own,
            org_token=token.owner_kind == "org",
            writable=own or (token.owner_kind == "org" and viewer.manages_tokens),
            form_id=await self.c.new_form(ctx),
            durations=DURATIONS,
            graces=GRACE_PERIODS,
            operations=RESTRICTED_OPERATIONS,
            org=viewer.org,
            error=error,
            values=values
            or {
                "name": token.name,
                "description": token.description,
                "workspace_scope": "all" if token.workspaces is None else "some",
                "workspaces": ", ".join(token.workspaces or ()),
            },
        )

    async def _act(
        self,
        request: Request,
        run: Callable[[Ctx, Form, str], Awaitable[str]],
        *,
        to: str | None = None,
    ) -> Response:
        """One action on a token: ``run`` returns the success message; a service error
        becomes the flash instead, and either way the browser goes back to the page."""
        ctx, form = await self.c.action(request)
        token_id = request.path_params["id"]
        back = self.c.back(ctx, form, f"/tokens/{token_id}")
        try:
            done = await run(ctx, form, token_id)
        except ServiceError as exc:
            return await self.c.redirect(ctx, back, ("error", str(exc)))
        return await self.c.redirect(ctx, to or back, ("ok", done))

    async def edit(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        token_id = request.path_params["id"]
        changes: dict[str, Any] = {
            "name": form.get("name").strip(),
            "description": form.get("description").strip(),
        }
        if form.has("workspace_scope"):
            some = form.get("workspace_scope") == "some"
            changes["workspaces"] = lines(form.get("workspaces")) if some else None
        try:
            if changes.get("workspaces") == []:
                raise ValidationFailed("workspaces: list at least one workspace, or choose all")
            await self.c.tokens.update(ctx.actor, token_id, changes)
        except ServiceError as exc:
            # The edit form again, with the message and what was typed.
            return await self._detail(
                ctx, token_id, error=str(exc), values=form.values(), status=exc.status_code
            )
        return await self.c.redirect(ctx, f"/tokens/{token_id}", ("ok", "Changes saved."))

    async def allowlist(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            ips = lines(form.get("allowed_ips"))
            await self.c.tokens.update(ctx.actor, token_id, {"allowed_ips": ips or None})
            return "IP allowlist saved." if ips else "The token works from any address now."

        return await self._act(request, run)

    async def role(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            role = form.get("role") or None
            await self.c.tokens.update(ctx.actor, token_id, {"role": role})
            return f"Role set to {role}." if role else "Role removed."

        return await self._act(request, run)

    async def add_scope(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            scopes = lines(form.get("scope"))
            if not scopes and form.get("resource") and form.get("operation"):
                scopes = [f"{form.get('resource')}:{form.get('operation')}"]
            if not scopes:
                raise ValidationFailed("scopes: type a scope, or pick a resource and operation")
            await self.c.tokens.add_scopes(ctx.actor, token_id, scopes)
            return f"Added {', '.join(scopes)}."

        return await self._act(request, run)

    async def remove_scope(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            scope = form.get("scope")
            await self.c.tokens.remove_scope(ctx.actor, token_id, scope)
            return f"Removed {scope}."

        return await self._act(request, run)

    async def clear_scopes(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            await self.c.tokens.clear_scopes(ctx.actor, token_id)
            return "All scopes removed: the token can no longer do anything until you add one."

        return await self._act(request, run)

    async def revoke(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            token = await self.c.tokens.get(ctx.actor, token_id)
            if not label_confirmed(token, form):
                raise ValidationFailed("confirm_label: type the token's label exactly to revoke it")
            await self.c.tokens.revoke(ctx.actor, token_id)
            return f"Token {token.name} revoked."

        return await self._act(request, run)

    async def end_grace(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            await self.c.tokens.end_grace(ctx.actor, token_id)
            return "The previous secret no longer works."

        return await self._act(request, run)

    async def delete(self, request: Request) -> Response:
        async def run(ctx: Ctx, form: Form, token_id: str) -> str:
            token = await self.c.tokens.get(ctx.actor, token_id)
            if not label_confirmed(token, form):
                raise ValidationFailed("confirm_label: type the token's label exactly to delete it")
            await self.c.tokens.delete(ctx.actor, token_id)
            return f"Token {token.name} deleted."

        return await self._act(request, run, to="/tokens")

    async def delete_all(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        if ctx.actor.owner_kind == "org":
            # Signed in with an organization token: its "own" tokens are the org's, each
            # deleted only by typing its label, never all at once from here.
            return await self.c.redirect(
                ctx, "/tokens", ("error", "Delete organization tokens one at a time.")
            )
        if form.get("confirm") != "delete all":
            return await self.c.redirect(
                ctx, "/tokens", ("error", 'Type "delete all" to confirm deleting every token.')
            )
        try:
            count = await self.c.tokens.delete_all_own(ctx.actor)
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/tokens", ("error", str(exc)))
        return await self.c.redirect(
            ctx, "/tokens", ("ok", f"Deleted {count} token{'' if count == 1 else 's'}.")
        )

    async def regenerate(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        token_id = request.path_params["id"]
        if not await self.c.use_form(ctx, form):
            return await self.c.html(
                ctx, "message.html", 409, title="Already submitted", detail=_REUSED
            )
        try:
            token, secret = await self.c.tokens.regenerate(
                ctx.actor, token_id, grace_period=grace_seconds(form), **expiry_arguments(form)
            )
        except ServiceError as exc:
            return await self.c.redirect(ctx, f"/tokens/{token_id}", ("error", str(exc)))
        return await self.c.html(
            ctx, "secret.html", 200, nav="tokens", token=token.to_json(ctx.now), secret=secret,
            heading="Token regenerated",
        )  # fmt: skip
