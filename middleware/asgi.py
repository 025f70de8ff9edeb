"""``PatgateMiddleware``: the pure-ASGI authentication middleware.

Pure ASGI, like Starlette's ``AuthenticationMiddleware`` (never the base HTTP middleware class,
which costs ~90 µs a layer). Per request it asks the :class:`~middleware.auth.Authenticator`
and either answers the refusal itself (precomputed RFC 6750 response) or annotates the
scope in Starlette's conventions, so ``@requires("threads:read")`` works::

    scope["auth"]  PatgateCredentials: ``.scopes`` (wildcard-aware ``in``), ``.identity``
                   (the Identity, or None on a public route) and ``.errors`` (the
                   renderer, so ``patgate.requires`` and the FastAPI dependency answer
                   with the same realm and bodies)
    scope["user"]  PatgateUser (``.token`` is the Identity) / UnauthenticatedUser

Websocket handshakes are authenticated the same way (as ``GET``); a refusal closes the
socket with 1008 (policy violation) before accepting, which servers send as HTTP 403.

Two ways to build it::

    app.add_middleware(PatgateMiddleware, redis_url="redis://…", policy="policy.toml")
    PatgateMiddleware(app, authenticator)          # you own the Runtime and its lifespan

The first builds a :class:`~patgate.middleware.runtime.Runtime` and wraps the app's lifespan: the
runtime (invalidation subscriber, last-used recorder) starts before the app's startup and
closes after the app's shutdown. With no Redis URL the runtime's start is also where the
embedded Valkey of ``data_dir`` is started or joined, as ``patgate serve`` does. Without a
lifespan the cache stays off (every request goes to Redis), last-used entries are flushed
only by an explicit ``aclose``, and the embedded default never starts (every request
answers 503): run the server with lifespan on (uvicorn's default ``auto`` does).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.authentication import UnauthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patgate.policies.engine import Policy

from .auth import Authenticator, Lookup, Resolved
from .config import DataPlaneConfig
from .errors import AuthError, StoreUnavailable
from .runtime import Runtime
from .user import PatgateCredentials

__all__ = ["LifespanHooks", "PatgateMiddleware", "mark_coroutine_function"]

_WS_POLICY_VIOLATION = 1008
_F = TypeVar("_F", bound=Callable[..., Any])


def mark_coroutine_function(func: _F) -> _F:
    """Mark a plain function that returns an awaitable as a coroutine function, for
    ``inspect.iscoroutinefunction`` (3.12+) and ``asyncio.iscoroutinefunction`` (what
    uvicorn and Starlette ask before 3.14), as asgiref's ``markcoroutinefunction``."""
    if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+
        marked: _F = inspect.markcoroutinefunction(func)
        return marked
    func._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
    return func


class PatgateMiddleware:
    """Authenticate every http/websocket request; pass other scopes through."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator | None = None,
        *,
        runtime: Runtime[Any] | None = None,
        settings: DataPlaneConfig | None = None,
        redis_url: str | None = None,
        policy: Policy | str | Path | None = None,
        namespace: str = "patgate",
    ) -> None:
        # No **kwargs on purpose: mypy cannot match a **kwargs signature against
        # Starlette's Middleware() factory protocol. Pass settings= for anything else.
        # Requests go straight to the app; only lifespan goes through LifespanHooks (one
        # coroutine frame less per request).
        self._downstream = app
        if authenticator is None:
            if runtime is None:
                if settings is None:
                    settings = DataPlaneConfig(redis_url=redis_url, namespace=namespace)
                runtime = Runtime(settings, policy=policy)
            authenticator = runtime.authenticator
            app = LifespanHooks(app, runtime.start, runtime.aclose)
        self.app = app
        self.runtime = runtime
        self._authenticator = authenticator
        #: bound once: one attribute walk less per request.
        self._decide = authenticator.authenticate_now
        self._responses = authenticator.responses
        self._anonymous = PatgateCredentials.anonymous(self._responses)
        self._nobody = UnauthenticatedUser()

    @classmethod
    def from_settings(
        cls, app: ASGIApp, settings: DataPlaneConfig, *, policy: Policy | str | Path | None = None
    ) -> PatgateMiddleware:
        return cls(app, settings=settings, policy=policy)

    @mark_coroutine_function
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not ``async def`` (issue 16): a request whose token is cached is decided right
        # here and handed the app's own coroutine, so it runs with one coroutine frame
        # fewer (the middleware's, which every await of the app would pass through). A
        # miss or a refusal returns a coroutine of this class instead. Marked as a
        # coroutine function: servers (uvicorn's ASGI 2/3 detection) and frameworks ask.
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            return self.app(scope, receive, send)
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"])
        method = scope["method"] if kind == "http" else "GET"
        headers = scope["headers"]
        try:
            # A cached token is decided without a coroutine; only a miss awaits the store.
            decided = self._decide(method, path, headers, scope)
        except (AuthError, StoreUnavailable) as exc:
            return self._refuse(exc, kind, send)
        if isinstance(decided, Resolved):  # the usual request: _annotate(), inlined
            scope["auth"] = decided.credentials
            scope["user"] = decided.user
        elif decided is None:
            scope["auth"] = self._anonymous
            scope["user"] = self._nobody
        else:
            return self._finish(decided, method, headers, scope, receive, send)
        return self._downstream(scope, receive, send)

    def _annotate(self, scope: Scope, resolved: Resolved | None) -> None:
        # Two keys only (middleware.user: a third and fourth cost a dict resize).
        if resolved is None:
            scope["auth"] = self._anonymous
            scope["user"] = self._nobody
        else:
            scope["auth"] = resolved.credentials
            scope["user"] = resolved.user

    async def _finish(
        self,
        lookup: Lookup,
        method: str,
        headers: list[tuple[bytes, bytes]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """A token the cache did not hold: one store round trip, then the app."""
        try:
            resolved = await self._authenticator.finish(lookup, method, headers, scope)
        except (AuthError, StoreUnavailable) as exc:
            await self._refuse(exc, scope["type"], send)
            return
        self._annotate(scope, resolved)
        await self._downstream(scope, receive, send)

    async def _refuse(self, exc: AuthError | StoreUnavailable, kind: str, send: Send) -> None:
        if kind == "websocket":
            await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
        else:
            await self._responses.for_error(exc).send(send)


class LifespanHooks:
    """Run ``startup`` before the wrapped app's lifespan startup and ``shutdown`` after
    its shutdown completes. An app that does not speak lifespan (raises or returns
    without reading the startup message) gets the protocol handled here instead."""

    def __init__(
        self,
        app: ASGIApp,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self._startup = startup
        self._shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        inner_spoke = False

        async def inner_receive() -> Message:
            nonlocal inner_spoke
            inner_spoke = True
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Raising here makes a Starlette app report lifespan.startup.failed.
                await self._startup()
            return message

        async def inner_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._shutdown()
            await send(message)

        try:
            await self.app(scope, inner_receive, inner_send)
        except Exception:
            if inner_spoke:
                raise
            await self._own_lifespan(receive, send)
            return
        if not inner_spoke:
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
