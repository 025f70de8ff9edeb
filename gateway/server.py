"""Run patgate's roles: several uvicorn listeners sharing one runtime in one process.

==========  ==========================================================================
role        listeners
==========  ==========================================================================
serve       gateway + admin (management API, /metrics, health, /authz); embedded store
            and a sample upstream by default
gateway     gateway + admin
authz       forward-auth + admin
api         admin
==========  ==========================================================================

One SIGINT/SIGTERM handler stops every listener (uvicorn's per-server handlers would
only stop the last one installed); the runtime closes when the last listener's
lifespan shuts down, after the final last-used flush. SIGHUP reloads the policy file of
every role and never stops the process (with no policy file it is only logged).

Start-up is all or nothing (issue 10): a listener that cannot bind or a bad policy file
stops the embedded store this process started before the error reaches the caller, and
a SIGTERM before the listeners are up stops the process in order as soon as they are, so
nothing is left running.

With ``PATGATE_WORKERS=N`` (``--workers N``, N > 1) this process binds the listeners,
owns the embedded store, and supervises N worker processes that serve them
(gateway/workers.py: pre-fork, restarts, SIGTERM/SIGHUP passed on, ``/metrics``
aggregated); each worker runs :func:`worker_main`. With N = 1 nothing changes: one
process, no supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp

from patgate.middleware.connect import check_reachable
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import ConfigError, PatgateError
from patgate.middleware.runtime import Runtime, redis_client
from patgate.policies.reload import PolicyHolder

from .api import create_api_app
from .api.verify import make_verifier
from .app import create_admin_app, create_authz_app, create_gateway_app, gateway_core
from .console import create_console_app
from .fastpath import gateway_protocol
from .notify.setup import Notifications, running
from .protocol import limited_protocol
from .sample import sample_upstream
from .settings import Settings

__all__ = ["build_listeners", "check_store", "run_role", "worker_main"]

_log = logging.getLogger("patgate")
_ROLES = ("serve", "gateway", "authz", "api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals are handled once for all listeners in run_role().
        yield


#: how each listener is configured, for the error that names it.
_LISTENER_FLAGS = {
    "listen": "--listen / PATGATE_LISTEN",
    "admin_listen": "--admin-listen / PATGATE_ADMIN_LISTEN",
    "authz_listen": "--authz-listen / PATGATE_AUTHZ_LISTEN",
}


#: the listen backlog (uvicorn's default).
_BACKLOG = 2048


def _bind(host: str, port: int, listener: str | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: with proto=0 asyncio does not set TCP_NODELAY on accepted
    # connections and every response waits ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        what = "" if listener is None else f" (the {listener.replace('_', ' ')}er)"
        hint = "" if listener is None else f"; choose another with {_LISTENER_FLAGS[listener]}"
        raise ConfigError(f"cannot listen on {host}:{port}{what}: {exc.strerror}{hint}") from None
    # Listen now, not when the first worker's uvicorn gets to it after its start-up (the
    # store probe, the subscription): connections that arrive in between wait in the
    # backlog instead of being refused. uvicorn's create_server listens again; harmless.
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _config(
    app: ASGIApp,
    settings: Settings,
    *,
    proxied: bool = False,
    lifespan: Literal["on", "off"] = "on",
) -> uvicorn.Config:
    limits = {
        "max_header_bytes": settings.max_header_bytes,
        "max_headers": settings.max_headers,
        "max_url_bytes": settings.max_url_bytes,
    }
    # The proxied listener serves bodiless requests on its fast path (issue 16).
    protocol = (
        gateway_protocol(gateway_core(app), **limits) if proxied else limited_protocol(**limits)
    )
    return uvicorn.Config(
        app,
        # httptools with bounded request heads and strict Host (431/414/400 before any
        # ASGI app runs): gateway/protocol.py, issue 9.
        http=protocol,
        loop="none",
        lifespan=lifespan,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,  # patgate decides whom to trust (PATGATE_TRUSTED_PROXIES)
        server_header=False,
        # The proxied upstream's own Server/Date headers pass through; uvicorn adding its
        # own would duplicate them.
        date_header=not proxied,
        timeout_graceful_shutdown=10,
    )


def build_listeners(
    settings: Settings,
    role: str,
    runtime: Runtime[Settings],
    notifications: Notifications | None = None,
) -> list[tuple[ASGIApp, tuple[str, int]]]:
    """The (app, address) pairs a role serves; the runtime is shared by all of them."""
    api = create_api_app(
        runtime.store,
        runtime.token_format,
        realm=settings.realm,
        default_token_limit=settings.default_token_limit,
        default_owner_token_limit=settings.default_owner_token_limit,
        client_ip=lambda request: runtime.trusted.client_ip(request.scope),
        verifier=make_verifier(runtime),
        # Callers are resolved by the data plane's lookup path (read fresh, uncached).
        authenticator=runtime.authenticator,
        tombstone_ttl=settings.tombstone_ttl,
        credential_report_limit=settings.credential_report_limit,
        credential_report_window=settings.credential_report_window,
        notifications=notifications,
    )
    console = (
        create_console_app(runtime, managed=True, notifications=notifications)
        if settings.console
        else None
    )
    admin = (create_admin_app(runtime, api, console), settings.admin_listen)
    if role in ("serve", "gateway"):
        return [(create_gateway_app(runtime), settings.listen), admin]
    if role == "authz":
        return [(create_authz_app(runtime), settings.authz_listen), admin]
    return [admin]


def _listener_names(role: str) -> list[str]:
    """The settings field of each of build_listeners()'s addresses, in the same order."""
    if role in ("serve", "gateway"):
        return ["listen", "admin_listen"]
    if role == "authz":
        return ["authz_listen", "admin_listen"]
    return ["admin_listen"]


def _reload_policy(runtime: Runtime[Settings]) -> None:
    """SIGHUP: read the policy file again (an invalid one keeps the current policy)."""
    policies = runtime.policies
    if isinstance(policies, PolicyHolder):
        _log.info("SIGHUP: reloading the policy from %s", policies.path)
        policies.reload()
    else:
        _log.info("SIGHUP: no policy file configured (PATGATE_POLICY_FILE); nothing to reload")


#: the sockets a role serves, in :func:`_bind_role` order, and whether the first one is
#: the sample upstream's.
_Bound = tuple[list[socket.socket], bool]


def _bind_role(settings: Settings, role: str) -> tuple[Settings, _Bound]:
    """Bind every listener of ``role`` (build_listeners() order), after the sample
    upstream's when ``serve`` has no upstream (``settings`` then gains its URL)."""
    bound: list[socket.socket] = []
    sample = role == "serve" and settings.upstream_url is None
    try:
        if sample:
            bound.append(_bind("127.0.0.1", 0))
            port = bound[0].getsockname()[1]
            settings = settings.evolve(upstream_url=f"http://127.0.0.1:{port}")
            _log.warning(
                "no PATGATE_UPSTREAM_URL: serving the sample upstream on %s",
                settings.upstream_url,
            )
        if role in ("serve", "gateway") and settings.upstream_url is None:
            raise ConfigError("the gateway needs an upstream: PATGATE_UPSTREAM_URL or --upstream")
        for name in _listener_names(role):
            host, port = getattr(settings, name)
            bound.append(_bind(host, port, name))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return settings, (bound, sample)


async def _serve(
    settings: Settings,
    role: str,
    store_process: EmbeddedValkey | None = None,
    stop_requested: threading.Event | None = None,
    bound: _Bound | None = None,
    on_start: Callable[[Callable[[], None]], None] | None = None,
) -> None:
    """Serve ``role`` on ``bound`` (a worker's inherited sockets), or bind them here.
    ``on_start`` gets the stop function once the signal handlers are in place."""
    if bound is None:
        settings, bound = _bind_role(settings, role)
    listening, sample = bound
    sockets: list[tuple[_Server, socket.socket]] = []
    try:
        if sample:
            sockets.append((_Server(_config(sample_upstream, settings)), listening[0]))
        runtime = Runtime(settings, store_process=store_process)
        notifications = Notifications.build(settings, runtime.store, runtime.metrics.registry)
        listeners = zip(
            build_listeners(settings, role, runtime, notifications),
            listening[sample:],
            strict=True,
        )
        for n, ((app, _), sock) in enumerate(listeners):
            proxied = n == 0 and role in ("serve", "gateway")
            sockets.append((_Server(_config(app, settings, proxied=proxied)), sock))
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server, _ in sockets:
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, _reload_policy, runtime)
        if on_start is not None:
            on_start(stop)
        if stop_requested is not None and stop_requested.is_set():
            stop()  # SIGTERM arrived during start-up: serve nothing, shut down in order
        for _, sock in sockets:
            host, port = sock.getsockname()[:2]
            _log.info("listening on %s:%d", host, port)
        async with contextlib.AsyncExitStack() as stack:
            if role == "serve" and settings.notify:
                # The notification worker (issue 14), one replica per process: the
                # consumer group and the outbox's leases make any number safe. Its group
                # exists before the first request when the store is up (else the worker
                # creates it once the store answers).
                with contextlib.suppress(PatgateError):
                    await notifications.notifier.ensure_groups()
                await stack.enter_async_context(running(notifications))
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in sockets))
    finally:
        for sock in listening:
            sock.close()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(main)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)


#: how the supervisor starts a worker (a fresh interpreter: gateway/workers.py says why).
_WORKER_COMMAND = (
    "import sys; from patgate.gateway.server import worker_main; sys.exit(worker_main())"
)
#: seconds a worker has to stop after SIGTERM: uvicorn's graceful shutdown (10 s), then
#: the runtime's final last-used flush.
_WORKER_GRACE = 20.0


def _run_workers(settings: Settings, role: str, stop_requested: threading.Event) -> int:
    """Bind here, then supervise ``settings.workers`` processes serving the sockets."""
    from .workers import Supervisor, metrics_dir

    settings, (listening, sample) = _bind_role(settings, role)
    try:
        with metrics_dir() as directory:
            supervisor = Supervisor(
                [sys.executable, "-c", _WORKER_COMMAND],
                (settings, role, [sock.fileno() for sock in listening], sample),
                [sock.fileno() for sock in listening],
                settings.workers,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory},
                metrics_dir=directory,
                grace=_WORKER_GRACE,
            )
            for sock in listening:
                host, port = sock.getsockname()[:2]
                _log.info("listening on %s:%d with %d workers", host, port, settings.workers)
            return supervisor.run(stop_requested)
    finally:
        for sock in listening:
            sock.close()


def worker_main() -> int:
    """One worker of :func:`_run_workers`: serve the inherited sockets until SIGTERM (or
    until the supervisor is gone). The store is the parent's: ``redis_url`` is set."""
    from .workers import assignment, started

    (settings, role, fds, sample), ready_fd = assignment()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s",
    )
    # As in run_role(): a stop before the loop's handlers exist is honoured once they do.
    stop_requested = threading.Event()

    def early_signal(signum: int, frame: object) -> None:
        if signum != signal.SIGHUP:
            stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, early_signal)
    bound = ([socket.socket(fileno=fd) for fd in fds], sample)
    try:
        _run(
            _serve(
                settings,
                role,
                None,
                stop_requested,
                bound,
                on_start=lambda stop: started(ready_fd, stop),
            )
        )
    except ConfigError as exc:
        print(f"patgate: error: {exc}", file=sys.stderr)
        return 2
    except PatgateError as exc:
        print(f"patgate: error: {exc}", file=sys.stderr)
        return 1
    return 0


def check_store(settings: Settings) -> None:
    """Before binding anything: the configured store answers (for a Cluster, its slot
    map loads; for Sentinel, a primary is found), or one error line names the URL and
    what failed (issue 11) — rather than a server that answers 503 to everything."""
    url = settings.redis_url
    if url is None:
        return

    async def probe() -> None:
        client = redis_client(
            url,
            timeout=settings.redis_connect_timeout,
            connect_timeout=settings.redis_connect_timeout,
        )
        try:
            await check_reachable(client, url)
        finally:
            await client.aclose()

    asyncio.run(probe())


def run_role(settings: Settings, role: str) -> int:
    """Run ``role`` until SIGINT/SIGTERM; the embedded store lives exactly as long."""
    if role not in _ROLES:
        raise ConfigError(f"unknown role {role!r}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Until the event loop's handlers take over: SIGTERM is remembered and honoured as
    # soon as the listeners exist (never raised from a signal frame, which could land in
    # a GC callback and be swallowed), and SIGHUP, which would kill the process by
    # default, is ignored while the policy is being loaded anyway.
    stop_requested = threading.Event()

    def early_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGTERM:
            stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, early_signal)
    embedded = None
    try:
        check_store(settings)
        if settings.redis_url is None:
            embedded = EmbeddedValkey(settings.data_dir)
            url = embedded.start()
            _log.info("embedded Valkey store in %s (AOF on)", embedded.data_dir)
            settings = settings.evolve(redis_url=url)
            # Restart the valkey-server child whenever it dies (a no-op if another process
            # owns the data directory's server: that process supervises it).
            embedded.supervise()
        owned = embedded if embedded is not None and embedded.owns_server else None
        if settings.workers > 1:
            # The workers join this process's store (redis_url is set): never their own.
            return _run_workers(settings, role, stop_requested)
        _run(_serve(settings, role, owned, stop_requested))
    finally:
        if embedded is not None:
            embedded.stop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    return 0
