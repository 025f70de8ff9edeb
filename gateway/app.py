"""The ASGI applications of the gateway's listeners, built around one :class:`Runtime`.

=========  =======================================================================
listener   serves
=========  =======================================================================
gateway    :class:`~gateway.fastpath.GatewayApp`: authentication and :class:`ProxyApp`
           (the proxied API) in one coroutine
authz      ``/authz`` forward-auth, ``/healthz``, ``/readyz``
admin      ``/metrics``, ``/healthz``, ``/readyz``, ``/authz``, ``/console``, then the
           management API
=========  =======================================================================

Each app's lifespan starts the runtime and closes it on shutdown. The runtime counts its
users, so several listeners in one process (``patgate serve``) share one runtime that
closes when the last of them shuts down.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from patgate.middleware.asgi import LifespanHooks
from patgate.middleware.metrics import CONTENT_TYPE_LATEST, render
from patgate.middleware.responses import json_error
from patgate.middleware.runtime import Runtime

from .fastpath import GatewayApp
from .forwardauth import ForwardAuthApp
from .health import HealthEndpoints
from .proxy import ProxyApp
from .settings import Settings

__all__ = ["create_admin_app", "create_authz_app", "create_gateway_app", "gateway_core"]

_NOT_FOUND = json_error(404, "not_found", "no such endpoint")


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await _NOT_FOUND.send(send)


class _Paths:
    """Exact paths and path prefixes dispatched before a fallback app (which also gets
    the lifespan scope). A prefixed app sees the prefix as its ``root_path``, as under a
    Starlette ``Mount``, so it builds its links from where it is mounted."""

    def __init__(
        self,
        exact: Mapping[str, ASGIApp],
        prefixed: Mapping[str, tuple[ASGIApp, bool]],
        fallback: ASGIApp,
    ) -> None:
        self._exact = exact
        #: prefix → (app, whether it is mounted: root_path and a path relative to it).
        self._prefixed = tuple(prefixed.items())
        self._fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            app = self._exact.get(path)
            if app is not None:
                await app(scope, receive, send)
                return
            for prefix, (prefixed, mounted) in self._prefixed:
                if path == prefix or path.startswith(prefix + "/"):
                    if mounted:
                        root = scope.get("root_path", "") + prefix
                        # Starlette ≥ 0.33 routes on path minus root_path (get_route_path).
                        scope = {**scope, "root_path": root}
                    await prefixed(scope, receive, send)
                    return
        await self._fallback(scope, receive, send)


def create_gateway_app(runtime: Runtime[Settings], proxy: ProxyApp | None = None) -> ASGIApp:
    proxy = proxy if proxy is not None else ProxyApp(runtime.settings, metrics=runtime.metrics)

    async def shutdown() -> None:
        await proxy.aclose()
        await runtime.aclose()

    return LifespanHooks(GatewayApp(proxy, runtime.authenticator), runtime.start, shutdown)


def gateway_core(app: ASGIApp) -> GatewayApp | None:
    """The :class:`GatewayApp` inside :func:`create_gateway_app`'s ``app`` — for the
    listener's fast path (:mod:`gateway.fastpath`) — or ``None`` when ``app`` is anything
    else (a wrapped app keeps every request on its ASGI path: nothing is bypassed)."""
    if isinstance(app, LifespanHooks) and isinstance(app.app, GatewayApp):
        return app.app
    return None


def create_authz_app(runtime: Runtime[Settings], *, prefix: str = "/authz") -> ASGIApp:
    health = HealthEndpoints(runtime)
    source = runtime.settings.forward_auth_source
    authz = ForwardAuthApp(runtime.authenticator, runtime.trusted, prefix=prefix, source=source)
    paths = _Paths(
        {"/healthz": health.healthz, "/readyz": health.readyz}, {prefix: (authz, False)}, _not_found
    )
    return LifespanHooks(paths, runtime.start, runtime.aclose)


def create_admin_app(
    runtime: Runtime[Settings], api_app: ASGIApp | None = None, console: ASGIApp | None = None
) -> ASGIApp:
    """``api_app`` (``gateway.api.create_api_app``) defines its own ``/v1/...`` routes;
    ``console`` (``gateway.console``) is mounted at ``/console``."""
    health = HealthEndpoints(runtime)
    metrics = runtime.metrics

    async def metrics_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        body = render(metrics)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    exact = {"/metrics": metrics_endpoint, "/healthz": health.healthz, "/readyz": health.readyz}
    source = runtime.settings.forward_auth_source
    authz = ForwardAuthApp(runtime.authenticator, runtime.trusted, source=source)
    prefixed: dict[str, tuple[ASGIApp, bool]] = {"/authz": (authz, False)}
    if console is not None:
        prefixed["/console"] = (console, True)
    paths = _Paths(exact, prefixed, api_app if api_app is not None else _not_found)
    return LifespanHooks(paths, runtime.start, runtime.aclose)
