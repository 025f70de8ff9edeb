"""What the data plane is configured with: one frozen object (issue 10).

The library owns its configuration; the gateway's :class:`patgate.gateway.settings.Settings`
extends it with listeners, the upstream and the management API, and reads both from
``PATGATE_*`` variables. A middleware user can pass either::

    PatgateMiddleware(app, settings=DataPlaneConfig(redis_url="redis://…"))
    PatgateMiddleware(app, settings=Settings.from_env())

With ``redis_url=None`` the data plane uses the embedded default store in ``data_dir``
(started, or joined when another patgate process already runs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

__all__ = ["DataPlaneConfig"]


@dataclass(frozen=True, slots=True)
class DataPlaneConfig:
    #: ``None``: the embedded Valkey server in ``data_dir``.
    redis_url: str | None = None
    data_dir: Path = Path(".patgate")
    namespace: str = "patgate"
    token_prefix: str = "pat"
    pepper: bytes | None = field(default=None, repr=False)
    #: the pepper before ``pepper`` while tokens are re-indexed under it (issue 12);
    #: ``b""`` (``PATGATE_PEPPER_PREVIOUS=none``): the previous digests had no pepper.
    previous_pepper: bytes | None = field(default=None, repr=False)
    durable_writes: bool = True
    #: replicas a durable write waits for (``WAITAOF 1 <n>``); None: 1 when the primary
    #: has a replica, else 0 (issue 11: a failover must not lose a secret already shown).
    durable_replicas: int | None = None
    #: seconds per data-plane Redis operation: a black-holed store answers 503 this fast.
    redis_timeout: float = 1.0
    redis_connect_timeout: float = 0.5
    #: seconds a silently cut invalidation link may go unnoticed (the cache is then off).
    invalidation_staleness: float = 1.5
    policy_file: Path | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    realm: str = "patgate"
    cache_size: int = 10_000
    cache_ttl: float = 30.0
    negative_ttl: float = 2.0
    lastused_interval: float = 5.0
    lastused_max_pending: int = 100_000
    events_maxlen: int = 1_000_000
    #: failed authentications per client and window before 429 (issue 12); 0: no limit.
    auth_failure_limit: int = 50
    auth_failure_window: float = 60.0
    #: seconds a deleted or rotated-out secret's digest is remembered (reuse tripwire).
    tombstone_ttl: float = 30 * 86_400.0
    #: whether credentials of another shape are looked up as registered external tokens
    #: (issue 13, middleware.external); off: only patgate secrets reach the store.
    external_tokens: bool = True

    def evolve(self, **changes: Any) -> Self:
        return replace(self, **changes)
