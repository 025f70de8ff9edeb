"""The management API application: routes, JSON errors, OpenAPI."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patgate.gateway.lifecycle import Directory, TokenService
from patgate.middleware.errors import AuthError, ServiceError, StoreUnavailable
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

from .auth import ActorResolver
from .openapi import openapi_document
from .routes import ManagementApi, Verifier

__all__ = ["create_api_app"]

_log = logging.getLogger("patgate.api")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class _InternalErrors:
    """The safety net: an unexpected exception answers a JSON 500 and the connection
    stays usable.

    Not an ``exception_handlers[Exception]`` entry: Starlette runs that one in
    ``ServerErrorMiddleware`` and re-raises after answering, and uvicorn then closes a
    connection whose response already started, without ``Connection: close``. This sits
    inside it, so the error ends here. Only the exception's type and traceback are logged,
    never its message or the request (either may hold a token or a body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            _log.error(
                "internal error answering %s %s: %s\n%s",
                scope.get("method"),
                scope.get("path"),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            if started:  # too late for a clean answer; let the server end the connection
                raise
            await _error(500, "internal", "internal error")(scope, receive, send)


def _peer_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def create_api_app(
    store: TokenStore,
    token_format: TokenFormat,
    *,
    realm: str = "patgate",
    default_token_limit: int = 10,
    client_ip: Callable[[Request], str | None] = _peer_ip,
    verifier: Verifier | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    tokens = TokenService(store, token_format, clock=clock)
    directory = Directory(store, clock=clock, default_token_limit=default_token_limit)
    resolver = ActorResolver(store, token_format, client_ip=client_ip, clock=clock)
    api = ManagementApi(tokens, directory, resolver, verifier=verifier)
    routes = api.routes()
    api.openapi = openapi_document(token_format)

    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return _error(exc.status_code, exc.code, exc.detail)

    async def auth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)
        # RFC 6750 §3: the challenge goes in WWW-Authenticate; the JSON body repeats it.
        code = exc.error or "unauthenticated"
        detail = exc.description or "a Bearer token with management scopes is required"
        return _error(
            exc.status_code, code, detail, {"www-authenticate": exc.www_authenticate(realm)}
        )

    async def store_down(request: Request, exc: Exception) -> Response:
        _log.warning("store unavailable: %s", exc)
        return _error(
            503,
            "store_unavailable",
            "the token store is unavailable; retry later",
            {"retry-after": "1"},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    return Starlette(
        routes=routes,
        middleware=[Middleware(_InternalErrors)],
        exception_handlers={
            ServiceError: service_error,
            AuthError: auth_error,
            StoreUnavailable: store_down,
            HTTPException: http_error,
        },
    )
