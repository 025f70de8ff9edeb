"""The management API application: routes, JSON errors, OpenAPI.

Callers are resolved by the data plane's :class:`~patgate.middleware.auth.Authenticator`
(pass the runtime's as ``authenticator=``; without one, an uncached one over ``store``),
and every error body and challenge comes from the one renderer,
:class:`~patgate.middleware.responses.ErrorResponses`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from patgate.gateway.internal_errors import InternalErrors
from patgate.gateway.lifecycle import Directory, TokenService
from patgate.gateway.lifecycle.tokens import DEFAULT_TOMBSTONE_TTL
from patgate.gateway.notify.setup import Notifications
from patgate.gateway.settings import Settings
from patgate.middleware.auth import Authenticator
from patgate.middleware.errors import AuthError, ServiceError, StoreUnavailable
from patgate.middleware.responses import ErrorResponses, json_error
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

from .auth import ActorResolver
from .credentials import ReportLimit
from .openapi import openapi_document
from .routes import ManagementApi, Verifier

__all__ = ["create_api_app"]

_log = logging.getLogger("patgate.api")
#: the body of a bare 401 here (the challenge is the data plane's).
_MISSING = ("unauthenticated", "a Bearer token with management scopes is required")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _peer_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def create_api_app(
    store: TokenStore,
    token_format: TokenFormat,
    *,
    realm: str = "patgate",
    default_token_limit: int | None = 10,
    default_owner_token_limit: int | None = None,
    client_ip: Callable[[Request], str | None] = _peer_ip,
    verifier: Verifier | None = None,
    clock: Callable[[], float] = time.time,
    authenticator: Authenticator | None = None,
    tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    credential_report_limit: int = 10,
    credential_report_window: float = 60.0,
    notifications: Notifications | None = None,
) -> Starlette:
    """The management API over ``store``. ``authenticator`` (the runtime's, in
    ``patgate serve``) resolves callers through the data plane's lookup path, read fresh;
    by default an uncached one over ``store`` and ``token_format``."""
    tokens = TokenService(store, token_format, clock=clock, tombstone_ttl=tombstone_ttl)
    directory = Directory(
        store,
        clock=clock,
        default_token_limit=default_token_limit,
        default_owner_token_limit=default_owner_token_limit,
    )
    if authenticator is None:
        authenticator = Authenticator.uncached(store, token_format, realm=realm, clock=clock)
    resolver = ActorResolver(authenticator, client_ip=client_ip, clock=clock)
    reports = ReportLimit(store, limit=credential_report_limit, window=credential_report_window)
    if notifications is None:
        # Webhook endpoints and dead letters with the default settings (no private URLs).
        notifications = Notifications.build(
            Settings(namespace=store.keyspace.namespace), store, clock=clock
        )
    api = ManagementApi(
        tokens,
        directory,
        resolver,
        verifier=verifier,
        reports=reports,
        notifications=notifications,
    )
    routes = api.routes()
    api.openapi = openapi_document(token_format)
    responses = ErrorResponses(realm, missing_credentials=_MISSING)

    async def patgate_error(request: Request, exc: Exception) -> Response:
        # RFC 6750 §3: an auth error's challenge goes in WWW-Authenticate; the JSON body
        # repeats it. A store error is the data plane's 503.
        assert isinstance(exc, ServiceError | AuthError | StoreUnavailable)
        if isinstance(exc, StoreUnavailable):
            _log.warning("store unavailable: %s", exc)
        return responses.for_error(exc).as_response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in (exc.headers or {}).items()
        ]
        return json_error(exc.status_code, code, str(exc.detail), headers).as_response()

    return Starlette(
        routes=routes,
        middleware=[Middleware(InternalErrors, responses.internal.send, _log)],
        exception_handlers={
            ServiceError: patgate_error,
            AuthError: patgate_error,
            StoreUnavailable: patgate_error,
            HTTPException: http_error,
        },
    )
