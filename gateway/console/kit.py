"""The plumbing every console page goes through (:class:`Kit`), and one request's
context (:class:`Ctx`).

1. **session** — the cookie's server-side session (:mod:`.sessions`), or a new one;
2. **viewer** — who is signed in (:mod:`.identity`): the session's management token,
   read fresh, or the host hook's user; nobody → the sign-in page (standalone) or a
   "sign in to the product first" page (host);
3. **CSRF** — every POST carries the session's token in a hidden ``csrf`` field,
   compared in constant time, and a cross-site ``Origin`` is refused outright;
4. **render** — the page, with the session written back when it changed and the cookie
   (HttpOnly, SameSite=Strict, Secure behind HTTPS) set when it is new.

Pages (:mod:`.pages`, :mod:`.admin`) get the kit; :class:`~.app.Console` is the kit
plus routes, sign-in and the ASGI entry point.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope

from patgate.gateway.api.auth import actor_of, record_use
from patgate.gateway.lifecycle import Actor, Directory, TokenService
from patgate.gateway.lifecycle.tokens import DEFAULT_TOMBSTONE_TTL
from patgate.gateway.notify.setup import Notifications
from patgate.middleware.auth import Authenticator
from patgate.middleware.errors import AuthError
from patgate.middleware.grants import grantable
from patgate.middleware.store import TokenStore
from patgate.middleware.trust import TrustedProxies
from patgate.policies.scopes import intersect

from .config import ConsoleConfig
from .forms import Form, read_form
from .identity import HOST_SCOPES, ConsoleUser, SignedIn, Viewer
from .render import Renderer
from .sessions import Session, SessionStore

__all__ = ["COOKIE", "CSRF_COOKIE", "Ctx", "Denied", "Kit", "Redirect"]

COOKIE = "patgate_console"
#: the sign-in form's double-submit CSRF token, for a browser with no session yet.
CSRF_COOKIE = "patgate_console_csrf"
_CSRF_TTL = 3600.0
_CSRF = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(slots=True)
class Ctx:
    """One request's console context."""

    request: Request
    session: Session
    viewer: Viewer | None
    base: str
    now: float
    #: the session must get a new cookie (it is new, or its id changed).
    new_cookie: bool = False

    @property
    def actor(self) -> Actor:
        assert self.viewer is not None
        return self.viewer.actor

    def url(self, path: str) -> str:
        return self.base + path


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class Denied(Exception):
    """The viewer may not use the console (host user unknown, disabled, no permission)."""

    def __init__(self, title: str, detail: str, status: int = 403) -> None:
        self.title, self.detail, self.status = title, detail, status


class Kit:
    """The services and the request plumbing shared by every page."""

    def __init__(
        self,
        store: TokenStore,
        authenticator: Authenticator,
        *,
        client_ip: Callable[[Scope], str | None],
        config: ConsoleConfig | None = None,
        signed_in: SignedIn | None = None,
        clock: Callable[[], float] = time.time,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        default_token_limit: int | None = 10,
        default_owner_token_limit: int | None = None,
        trusted: TrustedProxies | None = None,
    ) -> None:
        self.config = config if config is not None else ConsoleConfig()
        #: the proxies whose X-Forwarded-Proto says the browser spoke HTTPS.
        self.trusted = trusted
        self.store = store
        self.authenticator = authenticator
        self.client_ip = client_ip
        self.signed_in = signed_in
        self.clock = clock
        self.tokens = TokenService(
            store, authenticator.token_format, clock=clock, tombstone_ttl=tombstone_ttl
        )
        self.directory = Directory(
            store,
            clock=clock,
            default_token_limit=default_token_limit,
            default_owner_token_limit=default_owner_token_limit,
        )
        self.sessions = SessionStore(store.client, store.keyspace.namespace)
        self.renderer = Renderer(self.config.title)
        #: the notification pages' objects (:class:`~.app.Console` sets them), or None.
        self.notifications: Notifications | None = None

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def plain_page(self, request: Request, status: int, title: str, detail: str) -> Response:
        body = self.renderer.render(
            "message.html",
            {"base": self.base(request), "viewer": None, "csrf": "", "flash": None,
             "title": title, "detail": detail, "nav": ""},
        )  # fmt: skip
        return HTMLResponse(body, status_code=status)

    def _secure(self, request: Request) -> bool:
        mode = self.config.secure_cookie
        if mode != "auto":
            return mode == "always"
        if request.url.scheme == "https":
            return True
        # Behind a TLS-terminating proxy, its X-Forwarded-Proto counts only when the
        # peer is one of the trusted proxies (PATGATE_TRUSTED_PROXIES).
        peer = request.client.host if request.client else None
        if peer is None or self.trusted is None or peer not in self.trusted:
            return False
        return request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"

    async def session(self, request: Request, now: float) -> tuple[Session, bool]:
        """The cookie's stored session, or a new one that is stored only once someone
        signs in; until then its CSRF token is the browser's CSRF cookie, if it has one
        (a double-submit token: the sign-in form must repeat it)."""
        session = await self.sessions.load(request.cookies.get(COOKIE), now)
        if session is not None:
            return session, False
        session = self.sessions.new(now, self.config.session_ttl)
        presented = request.cookies.get(CSRF_COOKIE)
        if presented is not None and _CSRF.fullmatch(presented):
            session.csrf = presented
        return session, True

    async def viewer(self, request: Request, session: Session, now: float) -> Viewer | None:
        """Who the session (or the host) says is signed in, read fresh; None: nobody."""
        ip = self.client_ip(request.scope)
        ua = request.headers.get("user-agent")
        if self.signed_in is not None:
            user = await self.signed_in(request)
            return None if user is None else await self._host_viewer(user, ip, ua)
        if session.digest is None or session.partition is None:
            return None
        try:
            resolved = await self.authenticator.recall(
                bytes.fromhex(session.digest), session.partition, client=ip
            )
        except AuthError:
            # Revoked, expired, rotated, disabled, outside the allowlist: signed out.
            session.digest = session.partition = None
            session.set_flash(
                "error", "Your session ended: the management token is no longer valid."
            )
            return None
        record_use(self.authenticator, resolved, now, request.method, request.url.path, ip, ua)
        if resolved.org is None:
            raise Denied("Organization missing", "This token's organization no longer exists.")
        return Viewer(actor_of(resolved, ip, ua), resolved.org, resolved.owner, "token")

    async def _host_viewer(self, who: ConsoleUser, ip: str | None, ua: str | None) -> Viewer:
        user = await self.store.get_user(who.org_id, who.user_id)
        org = await self.store.get_org(who.org_id)
        if user is None or org is None:
            raise Denied(
                "No API token access",
                "Your account is not set up for API tokens. Ask an administrator.",
            )
        if not user.can_authenticate:
            raise Denied(
                "No API token access",
                "Your account may not manage API tokens (it is disabled, or the token "
                "permission is off). Ask an administrator.",
            )
        # The role's console scopes, bounded by what the user may grant now, exactly as
        # a management token of theirs would be (middleware.grants): an admin whose
        # grantable_scopes the host narrowed gets no admin page the API would refuse.
        scopes = frozenset(intersect(tuple(HOST_SCOPES[user.role]), grantable(org, user)))
        actor = Actor(
            kind="user",
            id=user.id,
            org_id=user.org_id,
            role=user.role,
            scopes=scopes,
            ip=ip,
            user_agent=ua,
        )
        return Viewer(actor, org, user, "host")

    async def ctx(self, request: Request, *, sign_in: bool = True) -> Ctx:
        now = self.clock()
        session, new = await self.session(request, now)
        viewer = await self.viewer(request, session, now)
        ctx = Ctx(request, session, viewer, self.base(request), now, new_cookie=new)
        if self.signed_in is not None and viewer is not None:
            # Host mode: the session only carries CSRF and flashes, bound to the user the
            # host names; another user (a sign-out and in on the host) gets a fresh one.
            key = f"{viewer.actor.org_id}/{viewer.actor.id}"
            if session.host_user != key:
                if not new:
                    await self.sessions.delete(session.id)
                ctx.session = self.sessions.new(now, self.config.session_ttl)
                ctx.session.host_user = key
                ctx.new_cookie = True
        if viewer is None and sign_in:
            if self.signed_in is not None:
                raise Denied("Please sign in", "Sign in to the product first.", 401)
            if session.dirty and not new:
                await self.sessions.save(session, now)
            raise Redirect(ctx.url("/login"))
        return ctx

    async def action(self, request: Request) -> tuple[Ctx, Form]:
        """A state-changing request: same-origin, signed in, with the session's CSRF."""
        self._same_origin(request)
        ctx = await self.ctx(request)
        form = await read_form(request)
        if ctx.new_cookie or not ctx.session.csrf_ok(form.get("csrf") or None):
            raise Denied(
                "Form expired",
                "This form was not sent from this console session (it may have expired). "
                "Go back, reload the page and try again.",
            )
        return ctx, form

    @staticmethod
    def _same_origin(request: Request) -> None:
        """A browser names the page a POST came from in ``Origin`` (RFC 6454 §7); one from
        another site is refused before anything else (the CSRF token is the main check)."""
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise Denied("Cross-site request refused", "This form came from another site.")

    async def html(self, ctx: Ctx, template: str, code: int = 200, **values: Any) -> HTMLResponse:
        flash = ctx.session.take_flash()
        context = {
            "base": ctx.base,
            "viewer": ctx.viewer,
            "csrf": ctx.session.csrf,
            "flash": flash,
            "now": ctx.now,
            "nav": values.pop("nav", ""),
            "hosted": self.signed_in is not None,
            "notify": self.notifications is not None,
            **values,
        }
        body = self.renderer.render(template, context)
        response = HTMLResponse(body, status_code=code)
        await self.finish(ctx, response)
        return response

    async def finish(self, ctx: Ctx, response: Response) -> None:
        """Write the session back when it changed; set the cookie when it is new. A new
        session nobody signed in to is not stored: the browser gets the CSRF cookie of
        the sign-in form instead (issue 15: anonymous requests write nothing)."""
        session = ctx.session
        secure = self._secure(ctx.request)
        path = ctx.base or "/"
        if ctx.new_cookie and not session.signed_in:
            if ctx.request.cookies.get(CSRF_COOKIE) != session.csrf:
                response.set_cookie(CSRF_COOKIE, session.csrf, max_age=int(_CSRF_TTL),
                                    path=path, secure=secure, httponly=True,
                                    samesite="strict")  # fmt: skip
            return
        if session.dirty or ctx.new_cookie:
            await self.sessions.save(session, ctx.now)
        if ctx.new_cookie:
            response.set_cookie(
                COOKIE,
                session.id,
                max_age=max(1, int(session.expires_at - ctx.now)),
                path=path,
                secure=secure,
                httponly=True,
                samesite="strict",
            )

    async def new_form(self, ctx: Ctx) -> str:
        """A one-time id for a form that reveals a secret (:class:`SessionStore`)."""
        return await self.sessions.new_form(ctx.session, ctx.now)

    async def use_form(self, ctx: Ctx, form: Form) -> bool:
        return await self.sessions.use_form(ctx.session, form.get("form_id") or None)

    async def redirect(self, ctx: Ctx, path: str, flash: tuple[str, str] | None = None) -> Response:
        if flash is not None:
            ctx.session.set_flash(*flash)
        response = RedirectResponse(ctx.url(path), status_code=303)
        await self.finish(ctx, response)
        return response

    def back(self, ctx: Ctx, form: Form, default: str) -> str:
        """A page-local return path from a form (``back``): only ever inside the console."""
        back = form.get("back")
        if back.startswith("/") and not back.startswith("//") and "\\" not in back:
            return back
        return default
