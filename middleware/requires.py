"""``@requires``: Starlette's decorator, answering a refusal with the RFC 6750 challenge.

Starlette's own ``starlette.authentication.requires`` keeps working behind
:class:`~patgate.middleware.asgi.PatgateMiddleware` (``request.auth.scopes`` is
wildcard-aware), but its refusal is a bare ``HTTPException(403)``: no
``WWW-Authenticate``, no scope. This one has the same signature and answers like the data
plane itself (RFC 6750 §3.1), from the same renderer
(:class:`~patgate.middleware.responses.ErrorResponses`, the middleware's realm)::

    no identity (public route, or not behind the middleware)
        → 401  WWW-Authenticate: Bearer realm="…"
    a token without every named scope
        → 403  WWW-Authenticate: Bearer realm="…", error="insufficient_scope", scope="a b"
             {"error": "insufficient_scope", "detail": "…"}

A websocket endpoint is refused before the handshake: with the same 401/403 response where
the server supports the ASGI denial-response extension (uvicorn does), else a close with
1008 (policy violation). ``status_code`` other than 403 and ``redirect`` behave exactly as
in Starlette.

For code that keeps Starlette's decorator, or raises ``HTTPException(403)`` itself,
:func:`refusal_handler` registered for 403 turns those into the challenge too (without a
``scope``: the exception does not say which), and it renders :class:`AuthRefused`, which
the FastAPI dependency (:mod:`patgate.middleware.fastapi`) raises.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec
from urllib.parse import urlencode

from starlette.authentication import has_required_scope
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.websockets import WebSocket

from .errors import AuthError, InsufficientScope, MissingCredentials
from .responses import Prepared
from .user import identity_of, renderer_of

__all__ = ["AuthRefused", "refusal", "refusal_handler", "requires"]

_P = ParamSpec("_P")
_WS_POLICY_VIOLATION = 1008
_DENIAL = "websocket.http.response"


class AuthRefused(HTTPException):
    """A refusal already rendered as the data plane renders it.

    An ``HTTPException``, so that even without :func:`refusal_handler` registered the
    framework's own handler answers with the right status and ``WWW-Authenticate``
    (only the body then differs: ``{"detail": …}``).
    """

    def __init__(self, prepared: Prepared) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in prepared.headers}
        headers.pop("content-length", None)
        headers.pop("content-type", None)
        super().__init__(prepared.status, detail=_detail(prepared), headers=headers)
        self.prepared = prepared


def _detail(prepared: Prepared) -> str:
    body: dict[str, str] = json.loads(prepared.body)
    return body["detail"]


def refusal(conn: HTTPConnection, scopes: Sequence[str]) -> Prepared | None:
    """``None`` if ``conn`` holds every scope in ``scopes``; else the 401/403 to answer."""
    if identity_of(conn.scope) is None:
        error: AuthError = MissingCredentials()
    elif has_required_scope(conn, scopes):
        return None
    else:
        # RFC 6750 §3: scope= names what the resource needs, here everything it asked for.
        error = InsufficientScope(scope=" ".join(scopes))
    return renderer_of(conn.scope).for_error(error)


async def refusal_handler(request: Request, exc: Exception) -> Response:
    """Exception handler: :class:`AuthRefused` as rendered; any other ``HTTPException``
    with status 403 as the ``insufficient_scope`` challenge (401 if there is no identity).

    ``Starlette(exception_handlers={403: refusal_handler, AuthRefused: refusal_handler})``
    or, in FastAPI, ``app.add_exception_handler(AuthRefused, refusal_handler)``.
    """
    if isinstance(exc, AuthRefused):
        return exc.prepared.as_response()
    if isinstance(exc, HTTPException) and exc.status_code == 403:
        if identity_of(request.scope) is None:
            return renderer_of(request.scope).for_error(MissingCredentials()).as_response()
        return renderer_of(request.scope).for_error(InsufficientScope()).as_response()
    raise exc


def _connection_parameter(func: Callable[..., Any]) -> tuple[int, str]:
    for idx, parameter in enumerate(inspect.signature(func).parameters.values()):
        if parameter.name in ("request", "websocket"):
            return idx, parameter.name
    raise TypeError(f'No "request" or "websocket" argument on function "{func}"')


def requires(
    scopes: str | Sequence[str],
    status_code: int = 403,
    redirect: str | None = None,
) -> Callable[[Callable[_P, Any]], Callable[_P, Any]]:
    """``starlette.authentication.requires``, refusing with the RFC 6750 challenge."""
    scopes_list = [scopes] if isinstance(scopes, str) else list(scopes)

    def decorator(func: Callable[_P, Any]) -> Callable[_P, Any]:
        idx, kind = _connection_parameter(func)

        def connection(args: Any, kwargs: Any, cls: type[HTTPConnection]) -> Any:
            conn = kwargs.get(kind, args[idx] if idx < len(args) else None)
            if not isinstance(conn, cls):
                raise TypeError(f"parameter {kind!r} must be a {cls.__name__}")
            return conn

        def refuse(request: Request, prepared: Prepared) -> Response:
            if redirect is not None:
                query = urlencode({"next": str(request.url)})
                return RedirectResponse(f"{request.url_for(redirect)}?{query}", status_code=303)
            if status_code != 403:
                raise HTTPException(status_code=status_code)  # as Starlette's
            return prepared.as_response()

        if kind == "websocket":

            @functools.wraps(func)
            async def websocket_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
                websocket: WebSocket = connection(args, kwargs, WebSocket)
                prepared = refusal(websocket, scopes_list)
                if prepared is None:
                    await func(*args, **kwargs)
                elif _DENIAL in websocket.scope.get("extensions", {}):
                    await websocket.send_denial_response(prepared.as_response())
                else:
                    await websocket.close(_WS_POLICY_VIOLATION)

            return websocket_wrapper

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                request: Request = connection(args, kwargs, Request)
                prepared = refusal(request, scopes_list)
                if prepared is not None:
                    return refuse(request, prepared)
                return await func(*args, **kwargs)

            return async_wrapper

        @functools.wraps(func)
        def sync_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            request: Request = connection(args, kwargs, Request)
            prepared = refusal(request, scopes_list)
            if prepared is not None:
                return refuse(request, prepared)
            return func(*args, **kwargs)

        return sync_wrapper

    return decorator
