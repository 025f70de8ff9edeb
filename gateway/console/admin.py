"""The org admin's pages: every token of the org, users and their switches, the audit
log, and the organization's settings (limits, lifetime, grace, roles, resources).

Access is the service layer's: a member who opens one gets its refusal as a 403 page.
The audit log is open to every viewer and shows what the API shows them (an admin the
org's events, anyone else the events of their own tokens).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from patgate.gateway.lifecycle import EventQuery, Filters, query_events
from patgate.gateway.lifecycle.audit import EVENT_TYPES
from patgate.gateway.lifecycle.expiry import PRESETS
from patgate.middleware.errors import ServiceError, ValidationFailed

from .forms import DURATIONS, GRACE_PERIODS, Form, field_of, lines
from .pages import label_confirmed

if TYPE_CHECKING:
    from .kit import Ctx, Kit

__all__ = ["AdminPages", "org_changes", "parse_roles", "with_current"]

Endpoint = Callable[[Request], Awaitable[Response]]
_TYPES = (("", "All types"), ("personal", "Personal"), ("oauth", "OAuth"), ("service", "Service"))
_STATUSES = (("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked"), ("all", "All"))
#: the organization's maximum token lifetime choices: the token form's presets (a
#: maximum of "never" or a custom date means nothing), or none.
LIFETIMES = (("", "No maximum"), *((k, t) for k, t in DURATIONS if k not in ("never", "custom")))


def parse_roles(text: str) -> dict[str, list[str]]:
    """Roles typed one per line: ``Developer: threads:read threads:write``."""
    roles: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, scopes = line.partition(":")
        if not sep or not name.strip():
            raise ValidationFailed(f"roles: line {number}: expected 'Name: scope scope ...'")
        roles[name.strip()] = lines(scopes)
    return roles


_DIGITS = re.compile(r"[0-9]{1,12}")


def _limit(form: Form, name: str) -> int | None:
    """Empty is no limit; anything else goes to the service as a number (which refuses
    0 and more than it allows, with its own message)."""
    raw = form.get(name).strip()
    if not raw:
        return None
    if not _DIGITS.fullmatch(raw):  # ASCII digits only: int() takes "²" and "٣" too
        raise ValidationFailed(f"{name}: a whole number of tokens, or empty for no limit")
    return int(raw)


def _seconds_label(seconds: int) -> str:
    for size, unit in ((86_400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} seconds"


def with_current(options: tuple[tuple[str, str], ...], current: str) -> tuple[tuple[str, str], ...]:
    """A select's options plus the current value when it is none of them (set through
    the API or the CLI): a save that changes something else must not change it too."""
    if not current or any(key == current for key, _ in options):
        return options
    label = _seconds_label(int(current)) if _DIGITS.fullmatch(current) else current
    return (*options, (current, f"{label} (current)"))


def _lifetime(raw: str) -> str | int | None:
    raw = raw.strip()
    return None if not raw else int(raw) if _DIGITS.fullmatch(raw) else raw


def org_changes(form: Form) -> dict[str, Any]:
    """The organization form → the body of :meth:`Directory.put_org` (a merge)."""
    grace = form.get("max_grace_period", "0").strip() or "0"
    if not _DIGITS.fullmatch(grace):
        raise ValidationFailed("max_grace_period: choose a grace period")
    return {
        "name": form.get("name").strip(),
        "token_limit": _limit(form, "token_limit"),
        "owner_token_limit": _limit(form, "owner_token_limit"),
        "max_lifetime": _lifetime(form.get("max_lifetime")),
        "allow_never": form.get("allow_never") == "on",
        "max_grace_period": int(grace),
        "default_can_manage_tokens": form.get("default_can_manage_tokens") == "on",
        "scopes_required": form.get("scopes_required") == "on",
        "resources": lines(form.get("resources")),
        "roles": parse_roles(form.get("roles")),
    }


class AdminPages:
    def __init__(self, console: Kit) -> None:
        self.c = console

    def table(self) -> list[tuple[str, str, Endpoint]]:
        return [
            ("/admin/tokens", "GET", self.tokens),
            ("/admin/tokens/{id}/revoke", "POST", self.revoke),
            ("/admin/users", "GET", self.users),
            ("/admin/users", "POST", self.add_user),
            ("/admin/users/{id}", "POST", self.put_user),
            ("/admin/users/{id}/remove", "POST", self.remove_user),
            ("/admin/org", "GET", self.org),
            ("/admin/org", "POST", self.put_org),
            ("/events", "GET", self.events),
        ]

    @staticmethod
    def _org_id(ctx: Ctx) -> str:
        org_id = ctx.actor.org_id
        assert org_id is not None  # console viewers are tokens or host users: in an org
        return org_id

    # -- tokens ----------------------------------------------------------------------------

    async def tokens(self, request: Request) -> Response:
        ctx = await self.c.ctx(request)
        ctx.actor.require_admin("tokens:admin")
        q = request.query_params
        filters = Filters.parse(
            status=q.get("status") or None,
            q=q.get("q") or None,
            type=q.get("type") or None,
            cursor=q.get("cursor") or None,
            default_status="active",
        )
        page = await self.c.tokens.list_org(ctx.actor, self._org_id(ctx), filters)
        rows = []
        for t in page.items:
            row = t.to_json(ctx.now)
            owner = page.owners.get(t.owner_id) if t.owner_kind == "user" else None
            row["owner_label"] = (
                "Organization" if t.owner_kind == "org"
                else (owner.email or owner.name) if owner is not None else t.owner_id
            )  # fmt: skip
            rows.append(row)
        return await self.c.html(
            ctx,
            "admin_tokens.html",
            nav="admin_tokens",
            tokens=rows,
            next_cursor=page.next_cursor,
            q=filters.q or "",
            type=filters.type or "",
            status=q.get("status") or "active",
            types=_TYPES,
            statuses=_STATUSES,
            back=request.url.path[len(ctx.base) :]
            + ("?" + request.url.query if request.url.query else ""),
        )

    async def revoke(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        back = self.c.back(ctx, form, "/admin/tokens")
        token_id = request.path_params["id"]
        try:
            ctx.actor.require_admin("tokens:admin")
            token = await self.c.tokens.get(ctx.actor, token_id)
            if not label_confirmed(token, form):
                raise ValidationFailed("confirm_label: type the token's label exactly to revoke it")
            await self.c.tokens.revoke(ctx.actor, token_id)
        except ServiceError as exc:
            return await self.c.redirect(ctx, back, ("error", str(exc)))
        return await self.c.redirect(ctx, back, ("ok", f"Token {token.name} revoked."))

    # -- users -----------------------------------------------------------------------------

    async def _users_page(
        self, ctx: Ctx, *, error: str | None = None, values: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:  # fmt: skip
        ctx.actor.require_admin("users:admin")
        users = await self.c.directory.list_users(ctx.actor, self._org_id(ctx))
        return await self.c.html(
            ctx,
            "users.html",
            status,
            nav="users",
            users=sorted(users, key=lambda u: (u.name or u.email).casefold()),
            error=error,
            error_field=None if error is None else field_of(error),
            values=values or {"role": "member"},
        )

    async def users(self, request: Request) -> Response:
        return await self._users_page(await self.c.ctx(request))

    async def add_user(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        user_id = form.get("id").strip()
        try:
            ctx.actor.require_admin("users:admin")
            if not user_id:
                raise ValidationFailed("id: the user's id in your product is required")
            if await self.c.store.get_user(self._org_id(ctx), user_id) is not None:
                raise ValidationFailed(f"id: a user {user_id!r} exists already")
            await self.c.directory.put_user(
                ctx.actor,
                user_id,
                {
                    "email": form.get("email").strip(),
                    "name": form.get("name").strip(),
                    "role": form.get("role", "member"),
                },
            )
        except ServiceError as exc:
            return await self._users_page(
                ctx, error=str(exc), values=form.values(), status=exc.status_code
            )
        return await self.c.redirect(ctx, "/admin/users", ("ok", f"User {user_id} added."))

    async def put_user(self, request: Request) -> Response:
        """The row's switches: enabled, the token permission, the role."""
        ctx, form = await self.c.action(request)
        user_id = request.path_params["id"]
        body = {
            "enabled": form.get("enabled") == "on",
            "can_manage_tokens": form.get("can_manage_tokens") == "on",
            "role": form.get("role", "member"),
        }
        try:
            user = await self.c.directory.put_user(ctx.actor, user_id, body)
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/admin/users", ("error", str(exc)))
        state = "enabled" if user.enabled else "disabled"
        perm = "may" if user.can_manage_tokens else "may not"
        return await self.c.redirect(
            ctx,
            "/admin/users",
            ("ok", f"{user.name or user.email}: {state}, {user.role}, {perm} manage tokens."),
        )

    async def remove_user(self, request: Request) -> Response:
        ctx, _ = await self.c.action(request)
        user_id = request.path_params["id"]
        try:
            revoked = await self.c.directory.remove_user(ctx.actor, user_id)
        except ServiceError as exc:
            return await self.c.redirect(ctx, "/admin/users", ("error", str(exc)))
        n = len(revoked)
        return await self.c.redirect(
            ctx,
            "/admin/users",
            ("ok", f"User {user_id} removed; {n} personal token{'' if n == 1 else 's'} revoked."),
        )

    # -- organization ----------------------------------------------------------------------

    async def _org_page(
        self, ctx: Ctx, *, error: str | None = None, values: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:  # fmt: skip
        ctx.actor.require_admin("users:admin")
        org = await self.c.directory.get_org(ctx.actor, self._org_id(ctx))
        if values is None:
            values = {
                "name": org.name,
                "token_limit": "" if org.token_limit is None else str(org.token_limit),
                "owner_token_limit": (
                    "" if org.owner_token_limit is None else str(org.owner_token_limit)
                ),
                "max_lifetime": _lifetime_choice(org.max_lifetime),
                "max_grace_period": str(int(org.max_grace_period)),
                "resources": " ".join(org.resources),
                "roles": "\n".join(f"{n}: {' '.join(s)}" for n, s in org.roles.items()),
            }
            for flag in ("allow_never", "default_can_manage_tokens", "scopes_required"):
                if getattr(org, flag):
                    values[flag] = "on"
        return await self.c.html(
            ctx,
            "org.html",
            status,
            nav="org",
            org=org,
            values=values,
            error=error,
            error_field=None if error is None else field_of(error),
            lifetimes=with_current(LIFETIMES, values.get("max_lifetime", "")),
            graces=with_current(GRACE_PERIODS, values.get("max_grace_period", "")),
        )

    async def org(self, request: Request) -> Response:
        return await self._org_page(await self.c.ctx(request))

    async def put_org(self, request: Request) -> Response:
        ctx, form = await self.c.action(request)
        try:
            await self.c.directory.put_org(ctx.actor, self._org_id(ctx), org_changes(form))
        except ServiceError as exc:
            return await self._org_page(
                ctx, error=str(exc), values=form.values(), status=exc.status_code
            )
        return await self.c.redirect(ctx, "/admin/org", ("ok", "Organization settings saved."))

    # -- audit log -------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        ctx = await self.c.ctx(request)
        actor = ctx.actor
        owner = None
        if not actor.is_admin("tokens:admin"):
            actor.require("tokens:read", own=True)
            assert actor.owner_kind is not None
            owner = (actor.owner_kind, actor.id)
        q = request.query_params
        kind = q.get("type") or None
        if kind is not None and kind not in EVENT_TYPES:
            raise ValidationFailed(f"type: {kind[:40]!r} is not an event type")
        query = EventQuery(
            org_id=self._org_id(ctx),
            token_id=q.get("token_id") or None,
            actor=q.get("actor") or None,
            type=kind,
            limit=50,
            cursor=q.get("cursor") or None,
            owner=owner,
        )
        items, cursor = await query_events(self.c.store, query)
        return await self.c.html(
            ctx,
            "events.html",
            nav="events",
            events=items,
            next_cursor=cursor,
            filters={
                "token_id": query.token_id or "",
                "actor": query.actor or "",
                "type": kind or "",
            },
            types=sorted(EVENT_TYPES),
        )


def _lifetime_choice(seconds: float | None) -> str:
    for name, value in PRESETS.items():
        if value is not None and seconds == value:
            return name
    return "" if seconds is None else str(int(seconds))
