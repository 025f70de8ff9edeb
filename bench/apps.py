"""The applications under test; uvicorn ``--factory`` targets, configured by environment.

All Starlette variants serve the same handler (``GET /items`` → a small JSON body) and
differ only in what wraps it:

=================  ====================================================================
``bare_app``       the Starlette app alone
``patgate_app``    ``PatgateMiddleware`` around it (warm cache after the first request)
``naive_app``      the peer: a hand-rolled pure-ASGI middleware doing one Redis ``GET``
                   of ``sha256(secret)`` per request, then a scope check in Python — the
                   common "look the token up in Redis every time" approach
``floor_app``      the floor of any Starlette auth middleware (issue 16): Starlette's own
                   ``AuthenticationMiddleware`` with an in-memory dict backend and
                   ``@requires`` on the handler — no checksum, hashing, policy, expiry,
                   owner status, last-used or metrics
``upstream_app``   a minimal pure-ASGI upstream for the gateway rows
``gateway_app``    ``create_gateway_app`` (PatgateMiddleware + ProxyApp) → upstream
``authz_app``      ``create_authz_app``: the forward-auth endpoint for nginx
=================  ====================================================================

Settings come from ``PATGATE_*`` (``Settings.from_env()``); the naive peer reads the
same ``PATGATE_REDIS_URL`` and ``PATGATE_NAMESPACE``. Every app except the upstream is
wrapped in :class:`BenchStats`, which answers ``GET /__bench/stats`` (cache hits and
misses, last-used flushes) before anything else sees the request — one string compare
per request, the same for every variant, so it cancels out of the ratios.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from patgate.gateway.app import create_authz_app, create_gateway_app, gateway_core
from patgate.gateway.fastpath import GatewayApp, GatewayProtocol
from patgate.gateway.settings import Settings
from patgate.middleware.asgi import LifespanHooks, PatgateMiddleware
from patgate.middleware.runtime import Runtime, redis_client
from patgate.policies.engine import Policy, parse_policy

__all__ = [
    "BENCH_POLICY",
    "BODY",
    "SCOPE",
    "STATS_PATH",
    "BenchStats",
    "NaiveRedisAuth",
    "authz_app",
    "bare_app",
    "bench_policy",
    "floor_app",
    "gateway_app",
    "naive_app",
    "naive_key",
    "patgate_app",
    "upstream_app",
]

#: the one client factory (issue 10), with room for the benchmark's bulk operations.
_BENCH_TIMEOUT = 60.0

BODY = b'{"items":[{"id":1,"name":"alpha"},{"id":2,"name":"beta"}],"next":null}'
SCOPE = "items:read"
STATS_PATH = "/__bench/stats"
#: public probes plus one scoped route: a realistic decision (route, token, scope).
BENCH_POLICY = f"""
version = 1
default = "deny"

[[rules]]
name = "probes"
methods = ["GET"]
paths = ["/healthz"]
public = true

[[rules]]
name = "items-read"
methods = ["GET"]
path = "/items"
scopes = ["{SCOPE}"]
"""


def bench_policy() -> Policy:
    return parse_policy(BENCH_POLICY, "bench-policy.toml")


def naive_key(namespace: str, digest_hex: str) -> str:
    """Where the naive peer keeps a token: ``naive:<ns>:<sha256 hex>`` → JSON record."""
    return f"naive:{namespace}:{digest_hex}"


# -- the shared handler ----------------------------------------------------------------


async def _items(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


async def _healthz(request: Request) -> Response:
    return Response(b"ok", media_type="text/plain")


def _starlette() -> Starlette:
    return Starlette(routes=[Route("/items", _items), Route("/healthz", _healthz)])


# -- instrumentation ---------------------------------------------------------------------


class BenchStats:
    """Answers ``GET /__bench/stats`` with the runtime's counters; passes the rest on.

    Also logs every last-used flush (monotonic time, entries written) by wrapping the
    recorder's ``flush`` on this instance, so the bench can count writes per flush
    interval without reading Redis."""

    def __init__(self, app: ASGIApp, runtime: Runtime | None = None) -> None:
        self.app = app
        self._runtime = runtime
        self._flushes: list[tuple[float, int]] = []
        if runtime is not None:
            recorder = runtime.recorder
            original = recorder.flush
            log = self._flushes

            async def flush() -> int:
                written = await original()
                if written:
                    log.append((time.monotonic(), written))
                    del log[:-1000]  # bounded: the bench reads only recent flushes
                return written

            # The recorder's loop calls self.flush(); an instance attribute shadows the
            # method for this one object only.
            setattr(recorder, "flush", flush)  # noqa: B010

    def _stats(self) -> bytes:
        out: dict[str, Any] = {"pid": os.getpid()}
        runtime = self._runtime
        if runtime is not None:
            sample = runtime.metrics.registry.get_sample_value
            out.update(
                hits=sample("patgate_cache_hits_total") or 0.0,
                misses=sample("patgate_cache_misses_total") or 0.0,
                flushed=sample("patgate_lastused_flushed_total") or 0.0,
                decisions=sample("patgate_decision_seconds_count") or 0.0,
                decision_seconds=sample("patgate_decision_seconds_sum") or 0.0,
                cache_entries=len(runtime.cache),
                cache_flushes=sample("patgate_cache_invalidations_total", {"kind": "flush"}) or 0.0,
                subscriber_errors=sample("patgate_redis_errors_total", {"op": "subscribe"}) or 0.0,
                cache_active=runtime.cache.active,
                interval=runtime.settings.lastused_interval,
                flushes=self._flushes,
                now=time.monotonic(),
            )
        return json.dumps(out).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == STATS_PATH:
            body = self._stats()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


# -- the naive peer ---------------------------------------------------------------------

_UNAUTHORIZED = b'{"error":"invalid_token"}'
_FORBIDDEN = b'{"error":"insufficient_scope"}'


async def _refuse(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class NaiveRedisAuth:
    """The peer: pure ASGI, one ``GET`` per request, no local cache, no policy engine."""

    def __init__(self, app: ASGIApp, client: aioredis.Redis, namespace: str, scope: str) -> None:
        self.app = app
        self._client = client
        self._prefix = naive_key(namespace, "")
        self._scope = scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        secret = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                secret = value[7:].strip()
                break
        if not secret:
            await _refuse(send, 401, _UNAUTHORIZED)
            return
        record = await self._client.get(self._prefix + hashlib.sha256(secret).hexdigest())
        if record is None:
            await _refuse(send, 401, _UNAUTHORIZED)
            return
        token = json.loads(record)
        if token.get("revoked") or self._scope not in token.get("scopes", ()):
            await _refuse(send, 403, _FORBIDDEN)
            return
        scope["user"] = token["owner"]
        await self.app(scope, receive, send)


# -- the floor: Starlette's own authentication ---------------------------------------------


class DictBackend(AuthenticationBackend):
    """Bearer secrets looked up in a dict: the least any token middleware can do."""

    def __init__(self, tokens: dict[str, tuple[str, ...]]) -> None:
        self.tokens = tokens

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        header = conn.headers.get("authorization")
        if header is None or header[:7].lower() != "bearer ":
            return None
        scopes = self.tokens.get(header[7:].strip())
        if scopes is None:
            raise AuthenticationError("invalid token")
        return AuthCredentials(list(scopes)), SimpleUser("owner")


@requires(SCOPE)
async def _items_required(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


def floor_app() -> ASGIApp:
    """``BENCH_FLOOR_TOKEN`` is the one valid secret (the bench's token)."""
    tokens = {os.environ["BENCH_FLOOR_TOKEN"]: (SCOPE,)}
    app = Starlette(
        routes=[Route("/items", _items_required), Route("/healthz", _healthz)],
        middleware=[Middleware(AuthenticationMiddleware, backend=DictBackend(tokens))],
    )
    return BenchStats(app)


# -- factories (uvicorn --factory bench.apps:<name>) -------------------------------------


def _runtime(settings: Settings | None = None) -> Runtime:
    return Runtime(settings or Settings.from_env(), policy=bench_policy())


def bare_app() -> ASGIApp:
    return BenchStats(_starlette())


def patgate_app() -> ASGIApp:
    runtime = _runtime()
    return BenchStats(PatgateMiddleware(_starlette(), runtime=runtime), runtime)


def naive_app() -> ASGIApp:
    settings = Settings.from_env()
    if settings.redis_url is None:
        raise RuntimeError("naive_app needs PATGATE_REDIS_URL")
    client = redis_client(settings.redis_url, timeout=_BENCH_TIMEOUT)

    async def startup() -> None:
        await client.ping()

    app = NaiveRedisAuth(_starlette(), client, settings.namespace, SCOPE)
    return BenchStats(LifespanHooks(app, startup, client.aclose))


async def _upstream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def upstream_app() -> ASGIApp:
    return _upstream


#: the gateway core :func:`gateway_app` built in this process, for its fast path.
_GATEWAY: GatewayApp | None = None
_STATS_RAW = STATS_PATH.encode()


def gateway_app() -> ASGIApp:
    global _GATEWAY
    runtime = _runtime()
    app = create_gateway_app(runtime)
    _GATEWAY = gateway_core(app)
    return BenchStats(app, runtime)


class GatewayBenchProtocol(GatewayProtocol):
    """The gateway's own protocol (``patgate gateway`` serves with it), run by uvicorn's
    command line for :func:`gateway_app`: the same fast path, with the stats path left to
    :class:`BenchStats` on the ASGI path."""

    def fast_path(self, raw_path: bytes) -> GatewayApp | None:
        return None if raw_path == _STATS_RAW else _GATEWAY


def authz_app() -> ASGIApp:
    runtime = _runtime()
    return BenchStats(create_authz_app(runtime), runtime)
