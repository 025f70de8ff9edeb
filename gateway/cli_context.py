"""What a CLI management command runs with: the store, the services, the output style."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patgate.middleware.connect import StoreClient, check_reachable, parse_store_url
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import ConfigError
from patgate.middleware.keys import Keyspace
from patgate.middleware.runtime import DURABLE_TIMEOUT_MS, store_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

from .lifecycle import Actor, Directory, TokenService
from .settings import Settings

__all__ = ["Context", "connect_store", "human_duration", "human_time"]

#: (unit, seconds, from how many seconds on it is used): hours from 1 h, days from 2 days,
#: months from 120 days (so 90-day lifetimes read "90 days"), years from 2 years.
_UNITS = (
    ("year", 365 * 86400, 2 * 365 * 86400),
    ("month", 30 * 86400, 120 * 86400),
    ("day", 86400, 2 * 86400),
    ("hour", 3600, 3600),
)


def human_duration(seconds: float) -> str:
    """``"29 days"``, ``"36 hours"``, ``"5 min"``: the largest unit that reads well."""
    seconds = abs(seconds)
    for unit, size, start in _UNITS:
        if seconds >= start:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{max(1, int(seconds // 60))} min"


def human_time(ts: float | None, now: float, *, never: str = "never") -> str:
    """A table cell for a timestamp: ``2026-12-01 21:05 UTC (in 29 days)``."""
    if ts is None:
        return never
    when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    delta = ts - now
    if abs(delta) < 60:
        return f"{when} (just now)"
    span = human_duration(delta)
    return f"{when} (in {span})" if delta > 0 else f"{when} ({span} ago)"


def connect_store(settings: Settings, url: str) -> tuple[StoreClient, TokenStore]:
    try:
        # The runtime's factory and timeouts: the CLI's writes are durable (WAITAOF), so it
        # gets the management client, not the data plane's 1 s one.
        client = store_client(settings, url)
    except ValueError as exc:  # --redis-url is not checked by Settings.from_env
        raise ConfigError(f"PATGATE_REDIS_URL / --redis-url: {exc}") from None
    store = TokenStore(
        client,
        Keyspace(settings.namespace),
        events_maxlen=settings.events_maxlen,
        durable_writes=settings.durable_writes,
        durable_replicas=settings.durable_replicas,
        durable_timeout_ms=DURABLE_TIMEOUT_MS,
    )
    return client, store


def _has_store(data_dir: Path) -> bool:
    """A running server (``server.json``) or a stopped store (``valkey/``) is there.

    Without this check the CLI run from the wrong directory would start a new, empty
    store there, and ``bootstrap`` print an admin token the running server does not
    know (issue 10)."""
    path = data_dir.resolve()
    return (path / "server.json").is_file() or (path / "valkey").is_dir()


@dataclass
class Context:
    settings: Settings
    store: TokenStore
    tokens: TokenService
    directory: Directory
    actor: Actor
    json_output: bool

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, settings: Settings, *, json_output: bool, create: bool = False
    ) -> AsyncIterator[Context]:
        """Connect to the configured store, or join/start the data directory's embedded
        one; a data directory with no store in it is an error unless ``create``."""
        try:
            fmt = TokenFormat(settings.token_prefix, settings.pepper, settings.previous_pepper)
        except ValueError as exc:
            raise ConfigError(f"PATGATE_TOKEN_PREFIX / PATGATE_PEPPER: {exc}") from None
        embedded = None
        url = settings.redis_url
        if url is None:
            if not _has_store(settings.data_dir):
                if not create:
                    raise ConfigError(
                        f"no patgate store at {settings.data_dir.resolve()} (start patgate "
                        "serve there, pass --data-dir or PATGATE_REDIS_URL, or --create-store)"
                    )
                # Said out loud, so a bootstrap in the wrong directory is noticed at once.
                print(
                    f"patgate: creating a new store at {settings.data_dir.resolve()}",
                    file=sys.stderr,
                )
            embedded = EmbeddedValkey(settings.data_dir)
            url = embedded.start()
        client, store = connect_store(settings, url)
        try:
            if parse_store_url(url).mode != "standalone":
                # One line naming the topology now, rather than a bare connection error
                # from whichever command first needs a node (issue 11).
                await check_reachable(client, url)
            yield cls(
                settings=settings,
                store=store,
                tokens=TokenService(store, fmt, tombstone_ttl=settings.tombstone_ttl),
                directory=Directory(
                    store,
                    default_token_limit=settings.default_token_limit,
                    default_owner_token_limit=settings.default_owner_token_limit,
                    default_org=settings.default_org,
                ),
                actor=Actor.system(),
                json_output=json_output,
            )
        finally:
            await client.aclose()
            if embedded is not None:
                embedded.stop()

    # -- output --------------------------------------------------------------------------

    def when(self, ts: float | None, *, never: str = "never") -> str:
        return human_time(ts, self.tokens.clock(), never=never)

    def record_rows(self, data: dict[str, Any]) -> list[list[Any]]:
        """field/value rows of a record's JSON view, times and lifetimes made readable."""
        rows: list[list[Any]] = []
        for key, value in data.items():
            if key.endswith("_at") and isinstance(value, int | float | None):
                value = self.when(value, never="")
            elif key == "max_lifetime" and isinstance(value, int | float):
                value = f"{value:.0f} s ({human_duration(value)})"
            elif isinstance(value, list):
                value = " ".join(str(v) for v in value)
            elif isinstance(value, dict):  # roles: name → scopes
                value = "; ".join(
                    f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in value.items()
                )
            rows.append([key, value])
        return rows

    def emit(self, data: Any, text: str | None = None) -> None:
        if self.json_output:
            print(json.dumps(data, indent=2, sort_keys=True))
        elif text is not None:
            print(text)

    def table(self, data: Any, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
        if self.json_output:
            self.emit(data)
            return
        cells = [[str(h) for h in headers]] + [
            ["" if c is None else str(c) for c in r] for r in rows
        ]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for n, row in enumerate(cells):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
        if not rows:
            print("(none)", file=sys.stderr)
