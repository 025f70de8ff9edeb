"""``PatgateMiddleware``: the pure-ASGI authentication middleware.

Pure ASGI, like Starlette's ``AuthenticationMiddleware`` (never the base HTTP middleware class,
which costs ~90 µs a layer). Per request it asks the :class:`~middleware.auth.Authenticator`
and either answers the refusal itself (precomputed RFC 6750 response) or annotates the
scope in Starlette's conventions, so ``@requires("threads:read")`` works::

    scope["auth"]             AuthCredentials with the token's scopes (wildcard-aware ``in``)
    scope["user"]             PatgateUser (``.token`` is the Identity) / UnauthenticatedUser
    scope["patgate.identity"] Identity, or None on a public route
    scope["patgate.errors"]   the ErrorResponses renderer, so ``patgate.requires`` and the
                              FastAPI dependency answer with the same realm and bodies

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

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.authentication import AuthCredentials, UnauthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patgate.policies.engine import Policy

from .auth import Authenticator, Lookup, Resolved
from .config import DataPlaneConfig
from .errors import AuthError, StoreUnavailable
from .runtime import Runtime

__all__ = ["LifespanHooks", "PatgateMiddleware"]

_WS_POLICY_VIOLATION = 1008


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
        self._responses = authenticator.responses
        self._anonymous = AuthCredentials()
        self._nobody = UnauthenticatedUser()

    @classmethod
    def from_settings(
        cls, app: ASGIApp, settings: DataPlaneConfig, *, policy: Policy | str | Path | None = None
    ) -> PatgateMiddleware:
        return cls(app, settings=settings, policy=policy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"])
        method = scope["method"] if kind == "http" else "GET"
        headers = scope["headers"]
        authenticator = self._authenticator
        try:
            # A cached token is decided without a coroutine; only a miss awaits the store.
            decided = authenticator.authenticate_now(method, path, headers, scope)
            if isinstance(decided, Lookup):
                resolved: Resolved | None = await authenticator.finish(
                    decided, method, headers, scope
                )
            else:
                resolved = decided
        except (AuthError, StoreUnavailable) as exc:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
            else:
                await self._responses.for_error(exc).send(send)
            return
        if resolved is None:
            scope["auth"] = self._anonymous
            scope["user"] = self._nobody
            scope["patgate.identity"] = None
        else:
            scope["auth"] = resolved.credentials
            scope["user"] = resolved.user
            scope["patgate.identity"] = resolved.identity
        scope["patgate.errors"] = self._responses
        await self._downstream(scope, receive, send)


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
