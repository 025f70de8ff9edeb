"""Everything one process needs on the data plane, built from one :class:`Settings`.

``Runtime(settings)`` only constructs (no I/O); ``await start()`` starts the invalidation
subscriber, the last-used recorder and the policy watcher; ``await aclose()`` stops them
(the recorder's final flush first, while Redis is still open) and closes the clients.
The Redis URL must already be resolved: the CLI starts ``gateway.embedded.EmbeddedValkey``
when ``settings.redis_url`` is ``None`` and passes settings with the URL set.

Two Redis clients, on purpose:

* ``redis`` — lookups, last-used, the management API. Short timeouts and at most one quick
  retry (a pooled connection may be stale after a Redis restart), so an outage turns into
  a 503 within ~1 s instead of redis-py's default ten retries with backoff.
* the subscriber's — no retries at all: a dropped subscription must surface so the cache
  is switched off, not be silently re-established (see :mod:`middleware.invalidation`).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from middleware.auth import Authenticator, PolicySource, Resolved
from middleware.cache import TokenCache
from middleware.errors import ConfigError
from middleware.invalidation import InvalidationSubscriber
from middleware.keys import Keys
from middleware.lastused import LastUsedRecorder
from middleware.metrics import Metrics
from middleware.store import TokenStore
from middleware.tokenformat import TokenFormat
from policies.engine import Policy, default_policy
from policies.reload import PolicyHolder

from .headers import TrustedProxies
from .settings import Settings

__all__ = ["Runtime", "redis_client"]

#: seconds; WAITAOF (durable token writes) waits up to 2 s, so reads must wait longer.
_SOCKET_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 1.0
_POLICY_POLL = 1.0


def redis_client(url: str, *, retries: int = 1) -> aioredis.Redis:
    """A client with patgate's timeouts; ``retries=0`` for the pub/sub subscriber."""
    options: dict[str, Any] = {
        "socket_timeout": _SOCKET_TIMEOUT,
        "socket_connect_timeout": _CONNECT_TIMEOUT,
        "health_check_interval": 30,
        "retry": (
            Retry(ExponentialBackoff(cap=0.05, base=0.01), retries)
            if retries
            else Retry(NoBackoff(), 0)
        ),
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True
    return aioredis.from_url(url, **options)


class Runtime:
    """The process-wide data-plane objects and their start/stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        policy: Policy | str | Path | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if settings.redis_url is None:
            raise ConfigError(
                "no Redis URL: pass redis_url= (or PATGATE_REDIS_URL); the patgate CLI "
                "starts the embedded store itself"
            )
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.keys = Keys(settings.namespace)
        self.redis = redis_client(settings.redis_url)
        self._subscriber_redis = redis_client(settings.redis_url, retries=0)
        self.store = TokenStore(
            self.redis,
            self.keys,
            events_maxlen=settings.events_maxlen,
            durable_writes=settings.durable_writes,
        )
        self.token_format = TokenFormat(settings.token_prefix, settings.pepper)
        self.cache: TokenCache[Resolved] = TokenCache(
            settings.cache_size, settings.cache_ttl, settings.negative_ttl, self.metrics
        )
        self.subscriber = InvalidationSubscriber(
            self._subscriber_redis, self.keys.channel, self.cache, self.metrics
        )
        self.recorder = LastUsedRecorder(
            self.store,
            self.metrics,
            interval=settings.lastused_interval,
            max_pending=settings.lastused_max_pending,
        )
        self.policies = self._policy_source(policy)
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.authenticator = Authenticator(
            self.store,
            self.cache,
            self.token_format,
            self.policies,
            self.metrics,
            self.recorder,
            realm=settings.realm,
            client_ip=self.trusted.client_ip,
        )
        self._watch: asyncio.Task[None] | None = None
        self._users = 0

    def _policy_source(self, policy: Policy | str | Path | None) -> PolicySource:
        if isinstance(policy, Policy):
            return _FixedPolicy(policy)
        path = Path(policy) if policy is not None else self.settings.policy_file
        if path is None:
            return _FixedPolicy(default_policy())
        return PolicyHolder(path, self.metrics)

    async def start(self) -> None:
        """Start the background tasks, or count one more user if already started.

        Waits briefly for the invalidation subscription; until it is confirmed the cache
        stays off, which is safe, just slower.
        """
        self._users += 1
        if self._users > 1:
            return
        self.recorder.start()
        if isinstance(self.policies, PolicyHolder):
            self._watch = asyncio.create_task(
                self.policies.watch(_POLICY_POLL), name="patgate-policy-watch"
            )
        await self.subscriber.start(wait=2.0)

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
        await self.subscriber.aclose()
        await self.redis.aclose()
        await self._subscriber_redis.aclose()

    async def ready(self) -> dict[str, str]:
        """Readiness checks by name → ``"ok"`` or what failed (for ``/readyz``)."""
        checks = {"redis": "ok", "subscriber": "ok"}
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await self.store.ping()
        except Exception as exc:
            checks["redis"] = f"ping failed: {exc.__class__.__name__}"
        if not self.subscriber.connected:
            checks["subscriber"] = "invalidation subscription not connected"
        return checks


class _FixedPolicy:
    __slots__ = ("current",)

    def __init__(self, policy: Policy) -> None:
        self.current = policy
