"""One client factory for the three ways to reach the store (issue 11).

``PATGATE_REDIS_URL`` selects the mode by its scheme::

    redis://[user:pass@]host[:port][/db]            standalone (rediss:// = TLS)
    unix://[user:pass@]/path/to/socket[?db=0]       standalone on a Unix socket
    redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>[?db=0]
                                                    the primary Sentinel names for
                                                    <service> (rediss+sentinel:// = TLS)
    redis+cluster://[user:pass@]h1:7000,h2:7001     a Cluster, from these seed nodes
                                                    (rediss+cluster:// = TLS)

User and password (ACL) authenticate to the data nodes in every mode; sentinels that
require their own take ``?sentinel_username=…&sentinel_password=…``. A port left out is
6379 (26379 for a sentinel). :func:`connect` returns ``redis.asyncio.Redis`` for the
first and second modes (Sentinel's ``master_for``: a pool that asks the sentinels for the
current primary on every new connection) and ``RedisCluster`` for the third, all with the
same timeouts and retry policy. Constructing does no I/O; :func:`check_reachable` is the
start-up probe that turns an unreachable cluster or sentinel group into one error line.

Errors: a URL that does not parse is a :class:`~.errors.ConfigError`; an unreachable
topology a :class:`~.errors.StoreUnavailable`. Both name the URL without its password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel

from .errors import ConfigError, StoreUnavailable

__all__ = [
    "Mode",
    "StoreClient",
    "StoreURL",
    "check_reachable",
    "connect",
    "parse_store_url",
    "ready",
    "redacted",
]

Mode = Literal["standalone", "sentinel", "cluster"]
#: what :func:`connect` returns; TokenStore and the subscriber accept either.
StoreClient: TypeAlias = "aioredis.Redis | RedisCluster"

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for error messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class StoreURL:
    mode: Mode
    tls: bool
    #: seed nodes (Cluster), sentinels (Sentinel); empty for standalone.
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    service: str | None = None
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _hosts(netloc: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    """``h1:p1,[::1]:p2,h3`` → ((host, port), …)."""
    out: list[tuple[str, int]] = []
    for item in netloc.rpartition("@")[2].split(","):
        item = item.strip()
        if item.startswith("["):  # an IPv6 literal
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest
        else:
            host, _, port = item.partition(":")
        port = port or str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"PATGATE_REDIS_URL: bad host:port {item!r} in {redacted(url)}")
        out.append((host, int(port)))
    return tuple(out)


def parse_store_url(url: str) -> StoreURL:
    """Parse ``url`` (the grammar in the module docstring), or raise ConfigError."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError as exc:
        raise ConfigError(f"PATGATE_REDIS_URL: {exc}: {redacted(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        expected = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ConfigError(
            f"PATGATE_REDIS_URL: unknown scheme in {redacted(url)} (expected {expected})"
        )
    mode, tls = _SCHEMES[scheme]
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    user = unquote(username) if username else None
    secret = unquote(password) if password is not None else None
    if mode == "standalone":
        return StoreURL(mode, tls, (), user, secret)
    if not parts.netloc.rpartition("@")[2]:
        raise ConfigError(f"PATGATE_REDIS_URL: no hosts in {redacted(url)}")
    db = query.get("db", "0")
    if not db.isdigit():
        raise ConfigError(f"PATGATE_REDIS_URL: db must be a number in {redacted(url)}")
    if mode == "sentinel":
        service = parts.path.strip("/")
        if not service or "/" in service:
            raise ConfigError(
                f"PATGATE_REDIS_URL: a Sentinel URL names its service: "
                f"redis+sentinel://host:26379,…/<service>, got {redacted(url)}"
            )
        return StoreURL(
            mode,
            tls,
            _hosts(parts.netloc, 26379, url),
            user,
            secret,
            service=service,
            db=int(db),
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
        )
    if parts.path.strip("/") or int(db) != 0:
        # A Cluster has database 0 only.
        raise ConfigError(f"PATGATE_REDIS_URL: a Cluster URL has no database: {redacted(url)}")
    return StoreURL(mode, tls, _hosts(parts.netloc, 6379, url), user, secret)


class _SentinelMaster(aioredis.Redis):
    """The primary's client; closing it also closes its connections to the sentinels
    (redis-py leaves those open, one per sentinel, until garbage collection)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool
        for client in pool.sentinel_manager.sentinels:
            await client.aclose()


def connect(url: str, options: dict[str, Any]) -> StoreClient:
    """The client for ``url`` with connection ``options`` (timeouts, retry, keepalive:
    :func:`patgate.middleware.runtime.redis_client` builds them). No I/O."""
    spec = parse_store_url(url)
    if spec.mode == "standalone":
        try:
            return aioredis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"PATGATE_REDIS_URL: {exc}: {redacted(url)}") from None
    auth: dict[str, Any] = {"username": spec.username, "password": spec.password}
    tls: dict[str, Any] = {"ssl": True} if spec.tls else {}
    if spec.mode == "sentinel":
        assert spec.service is not None
        sentinel_options = {k: v for k, v in options.items() if k != "health_check_interval"} | tls
        if spec.sentinel_password is not None:
            sentinel_options |= {
                "username": spec.sentinel_username,
                "password": spec.sentinel_password,
            }
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed since redis 8.2
            list(spec.hosts), sentinel_kwargs=sentinel_options, **options, **auth, **tls
        )
        master: aioredis.Redis = sentinel.master_for(
            spec.service, redis_class=_SentinelMaster, db=spec.db
        )
        return master
    retry: Retry = options.pop("retry")
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in spec.hosts],
        retry=retry,
        # Only a connection-level retry (the options' Retry); a MOVED or ASK is always
        # followed, a dead node makes the client refresh its slot map.
        **options,
        **auth,
        **tls,
    )


async def ready(client: StoreClient) -> None:
    """Load a Cluster client's slot map if it has none yet (a no-op otherwise).

    Commands do this themselves; a pub/sub SUBSCRIBE does not, and picks its node from
    the map (redis-py 8.1 fails with a KeyError on an empty one)."""
    if isinstance(client, RedisCluster):
        await client.initialize()


async def check_reachable(client: StoreClient, url: str) -> None:
    """Raise :class:`StoreUnavailable` naming ``url`` (without its password) unless the
    store answers: for a Cluster the slot map is loaded, for Sentinel the primary found."""
    what = {
        "standalone": "the store",
        "sentinel": "a primary through the sentinels",
        "cluster": "the cluster",
    }[parse_store_url(url).mode]
    try:
        await ready(client)
        await client.ping()
    except (
        redis_errors.RedisError,
        redis_errors.RedisClusterException,
        OSError,
        TimeoutError,
    ) as exc:
        raise StoreUnavailable(
            f"cannot reach {what} at {redacted(url)}: {exc.__class__.__name__}: {exc}"
        ) from exc
