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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import ConfigError
from patgate.middleware.runtime import Runtime
from patgate.policies.reload import PolicyHolder

from .api import create_api_app
from .api.verify import make_verifier
from .app import create_admin_app, create_authz_app, create_gateway_app
from .protocol import limited_protocol
from .sample import sample_upstream
from .settings import Settings

__all__ = ["build_listeners", "run_role"]

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
    sock.set_inheritable(True)
    return sock


def _config(
    app: ASGIApp,
    settings: Settings,
    *,
    proxied: bool = False,
    lifespan: Literal["on", "off"] = "on",
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # httptools with bounded request heads and strict Host (431/414/400 before any
        # ASGI app runs): gateway/protocol.py, issue 9.
        http=limited_protocol(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_url_bytes=settings.max_url_bytes,
        ),
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
    settings: Settings, role: str, runtime: Runtime[Settings]
) -> list[tuple[ASGIApp, tuple[str, int]]]:
    """The (app, address) pairs a role serves; the runtime is shared by all of them."""
    api = create_api_app(
        runtime.store,
        runtime.token_format,
        realm=settings.realm,
        default_token_limit=settings.default_token_limit,
        client_ip=lambda request: runtime.trusted.client_ip(request.scope),
        verifier=make_verifier(runtime),
        # Callers are resolved by the data plane's lookup path (read fresh, uncached).
        authenticator=runtime.authenticator,
    )
    admin = (create_admin_app(runtime, api), settings.admin_listen)
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


async def _serve(
    settings: Settings,
    role: str,
    store_process: EmbeddedValkey | None = None,
    stop_requested: threading.Event | None = None,
) -> None:
    sockets: list[tuple[_Server, socket.socket]] = []
    try:
        if role == "serve" and settings.upstream_url is None:
            sock = _bind("127.0.0.1", 0)
            port = sock.getsockname()[1]
            settings = settings.evolve(upstream_url=f"http://127.0.0.1:{port}")
            sockets.append((_Server(_config(sample_upstream, settings)), sock))
            _log.warning(
                "no PATGATE_UPSTREAM_URL: serving the sample upstream on %s",
                settings.upstream_url,
            )
        if role in ("serve", "gateway") and settings.upstream_url is None:
            raise ConfigError("the gateway needs an upstream: PATGATE_UPSTREAM_URL or --upstream")
        runtime = Runtime(settings, store_process=store_process)
        listeners = zip(
            build_listeners(settings, role, runtime), _listener_names(role), strict=True
        )
        for n, ((app, (host, port)), name) in enumerate(listeners):
            proxied = n == 0 and role in ("serve", "gateway")
            config = _config(app, settings, proxied=proxied)
            sockets.append((_Server(config), _bind(host, port, name)))
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server, _ in sockets:
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, _reload_policy, runtime)
        if stop_requested is not None and stop_requested.is_set():
            stop()  # SIGTERM arrived during start-up: serve nothing, shut down in order
        for _, sock in sockets:
            host, port = sock.getsockname()[:2]
            _log.info("listening on %s:%d", host, port)
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in sockets))
    finally:
        for _, sock in sockets:
            sock.close()


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
        if settings.redis_url is None:
            embedded = EmbeddedValkey(settings.data_dir)
            url = embedded.start()
            _log.info("embedded Valkey store in %s (AOF on)", embedded.data_dir)
            settings = settings.evolve(redis_url=url)
            # Restart the valkey-server child whenever it dies (a no-op if another process
            # owns the data directory's server: that process supervises it).
            embedded.supervise()
        owned = embedded if embedded is not None and embedded.owns_server else None
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvicorn[standard] brings it
            asyncio.run(_serve(settings, role, owned, stop_requested))
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_serve(settings, role, owned, stop_requested))
    finally:
        if embedded is not None:
            embedded.stop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    return 0
