"""The console's ASGI application: routes, sign-in, security headers, the safety net.

Every page goes through the plumbing of :class:`~.kit.Kit` (session, viewer, CSRF,
render); this module adds what makes it an app:

* the routes of :mod:`.pages` and :mod:`.admin`, each behind one guard that turns the
  kit's redirects, refusals and service errors into pages (never a 500 for any input);
* standalone sign-in and sign-out with a management token;
* :class:`SecurityHeaders` on every response: a strict CSP with no inline script,
  ``frame-ancestors`` from the config, ``no-store`` on every page (they show tokens,
  and two of them a secret);
* the console's own assets, and the runtime's start (its lifespan, or the first request
  where no lifespan reaches a mount).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patgate.gateway.api.auth import actor_of
from patgate.gateway.internal_errors import InternalErrors
from patgate.gateway.lifecycle.tokens import DEFAULT_TOMBSTONE_TTL
from patgate.gateway.notify.setup import Notifications
from patgate.middleware.auth import Authenticator
from patgate.middleware.errors import (
    AuthError,
    Forbidden,
    NotFound,
    ServiceError,
    StoreUnavailable,
    TooManyFailures,
    ValidationFailed,
)
from patgate.middleware.store import TokenStore
from patgate.middleware.trust import TrustedProxies

from .admin import AdminPages
from .config import ConsoleConfig
from .forms import read_form
from .identity import SignedIn
from .kit import COOKIE, Ctx, Denied, Kit, Redirect
from .notify_pages import NotifyPages
from .pages import TokenPages

__all__ = ["COOKIE", "Console", "Ctx", "SecurityHeaders"]

_log = logging.getLogger("patgate.console")
Handler = Callable[[Request], Awaitable[Response]]
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class SecurityHeaders:
    """Pure ASGI: the console's security headers on every response it sends."""

    def __init__(self, app: ASGIApp, frame_ancestors: str) -> None:
        self.app = app
        csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; "
            f"frame-ancestors {frame_ancestors}"
        )
        headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if frame_ancestors == "'none'":
            headers.append((b"x-frame-options", b"DENY"))  # for browsers before CSP 2
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name for name, _ in headers}
                headers += [h for h in extra if h[0] not in names]
                if b"cache-control" not in names:
                    # Pages show tokens (two of them a secret): no cache may keep one.
                    headers += [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_INTERNAL = (
    b"<!doctype html><html lang=en><meta charset=utf-8><title>Error</title>"
    b"<h1>Something went wrong</h1><p>The error was logged. Go back and try again.</p></html>"
)


async def _internal_page(send: Send) -> None:
    headers = [(b"content-type", b"text/html; charset=utf-8"),
               (b"content-length", str(len(_INTERNAL)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": _INTERNAL})


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """The console's own assets, read once at start-up: nothing from a CDN."""
    out: dict[str, tuple[bytes, str, str]] = {}
    folder = resources.files("patgate.gateway.console").joinpath("static")
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            out[entry.name] = (body, _STATIC_TYPES[suffix], etag)
    return out


class Console(Kit):
    """The console as an ASGI app; mount it anywhere (``/console`` on the admin listener).

    ``start``/``close`` are the runtime's (counted, so a host's middleware and the
    console can share one); None (``patgate serve``): its owner starts and closes it.
    Otherwise it starts on its own lifespan, or on the first request."""

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
        start: Callable[[], Awaitable[None]] | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
        notifications: Notifications | None = None,
    ) -> None:
        super().__init__(
            store,
            authenticator,
            client_ip=client_ip,
            config=config,
            signed_in=signed_in,
            clock=clock,
            tombstone_ttl=tombstone_ttl,
            default_token_limit=default_token_limit,
            default_owner_token_limit=default_owner_token_limit,
            trusted=trusted,
        )
        self.static = _static_files()
        self._start, self._close = start, close
        self._started = start is None
        self._lock = asyncio.Lock()
        pages, admin = TokenPages(self), AdminPages(self)
        #: webhook endpoints and dead letters (issue 14), where the runtime has them.
        self.notifications = notifications
        notify = [] if notifications is None else NotifyPages(self, notifications).table()
        routes = [
            Route("/", self._guard(self.home), methods=["GET"]),
            Route("/login", self._guard(self.login_page), methods=["GET"]),
            Route("/login", self._guard(self.login), methods=["POST"]),
            Route("/logout", self._guard(self.logout), methods=["POST"]),
            Route("/static/{name}", self.asset, methods=["GET"]),
            *[Route(p, self._guard(h), methods=[m]) for p, m, h in pages.table()],
            *[Route(p, self._guard(h), methods=[m]) for p, m, h in admin.table()],
            *[Route(p, self._guard(h), methods=[m]) for p, m, h in notify],
        ]
        self.app = SecurityHeaders(
            InternalErrors(
                Starlette(
                    routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed}
                ),
                _internal_page,
                _log,
            ),
            self.config.frame_ancestors,
        )

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self._started:
            async with self._lock:
                if not self._started:
                    assert self._start is not None
                    await self._start()
                    self._started = True
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if not self._started:
                        await self.start()
                except Exception as exc:  # reported to the server, which stops
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        async with self._lock:
            if self._start is not None and not self._started:
                await self._start()
            self._started = True

    async def aclose(self) -> None:
        if self._close is not None and self._started and self._start is not None:
            await self._close()
            self._started = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """For a host's ``Starlette(lifespan=console.lifespan)``: start with the host."""
        await self.start()
        try:
            yield
        finally:
            await self.aclose()

    # -- plumbing --------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Redirect as r:
                return RedirectResponse(r.location, status_code=303)
            except Denied as d:
                return self.plain_page(request, d.status, d.title, d.detail)
            except StoreUnavailable as exc:
                _log.warning("console: store unavailable: %s", exc)
                return self.plain_page(
                    request,
                    503,
                    "Temporarily unavailable",
                    "The token store cannot be reached; try again shortly.",
                )
            except TooManyFailures as exc:
                return self.plain_page(request, 429, "Too many attempts", str(exc))
            except ServiceError as exc:
                status = int(getattr(exc, "status_code", 400))
                return self.plain_page(request, status, "That did not work", str(exc))

        return endpoint

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        page = self.plain_page(request, 405, "Not allowed", "Use the page's own links and buttons.")
        # RFC 9110 §15.5.6: a 405 names the methods the page has.
        page.headers.update(getattr(exc, "headers", None) or {})
        return page

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.plain_page(request, 404, "Not found", "There is no such page here.")

    # -- sign-in ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        ctx = await self.ctx(request)
        return await self.redirect(ctx, "/tokens")

    async def login_page(self, request: Request) -> Response:
        if self.signed_in is not None:  # the host signs its users in, never the console
            return await self._not_found(request, NotFound("no sign-in here"))
        ctx = await self.ctx(request, sign_in=False)
        if ctx.viewer is not None:
            return await self.redirect(ctx, "/tokens")
        return await self.html(ctx, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        """A management token in, a new session out (a fresh id: no session fixation)."""
        if self.signed_in is not None:
            return await self._not_found(request, NotFound("no sign-in here"))
        self._same_origin(request)
        ctx = await self.ctx(request, sign_in=False)
        form = await read_form(request)
        # A browser with no session proves the form is its own by repeating its CSRF
        # cookie (double submit); one with a session, by the session's token.
        if not ctx.session.csrf_ok(form.get("csrf") or None):
            return await self.html(
                ctx, "login.html", 400, error="The sign-in form expired; please try again."
            )
        secret = form.get("token").strip()
        ip = self.client_ip(request.scope)
        error = None
        try:
            if not secret:
                raise ValidationFailed("paste a management token")
            resolved = await self.authenticator.identify(
                [(b"authorization", b"Bearer " + secret.encode("latin-1", "replace"))],
                fresh=True,
                client=ip,
                method="POST",
                path=request.url.path,
            )
            actor = actor_of(resolved, ip, request.headers.get("user-agent"))
            if not actor.may("tokens:read", own=True):
                raise Forbidden("this token has no management scopes (tokens:read:own)")
            digest, partition = self.authenticator.locate(secret)
        except TooManyFailures as exc:
            error = str(exc)
        except AuthError:
            error = "That token is not valid: unknown, revoked, expired or not allowed here."
        except ValidationFailed as exc:
            error = str(exc)
        except Forbidden as exc:
            error = str(exc).capitalize() + "."
        if error is not None:
            return await self.html(ctx, "login.html", 401, error=error)
        if not ctx.new_cookie:
            await self.sessions.delete(ctx.session.id)
        ctx.session = self.sessions.new(ctx.now, self.config.session_ttl)
        ctx.session.digest, ctx.session.partition = digest.hex(), partition
        ctx.new_cookie = True
        return await self.redirect(ctx, "/tokens")

    async def logout(self, request: Request) -> Response:
        ctx, _ = await self.action(request)
        await self.sessions.delete(ctx.session.id)
        response = RedirectResponse(
            ctx.url("/login") if self.signed_in is None else ctx.url("/"), status_code=303
        )
        response.delete_cookie(COOKIE, path=ctx.base or "/", httponly=True, samesite="strict")
        return response

    async def asset(self, request: Request) -> Response:
        found = self.static.get(request.path_params["name"])
        if found is None:
            return await self._not_found(request, NotFound("no such asset"))
        body, content_type, etag = found
        headers = {"etag": etag, "cache-control": "public, max-age=3600"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=content_type, headers=headers)
