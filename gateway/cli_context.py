"""What a CLI management command runs with: the store, the services, the output style."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import ConfigError
from patgate.middleware.keys import Keys
from patgate.middleware.runtime import DURABLE_TIMEOUT_MS, store_client
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

from .lifecycle import Actor, Directory, TokenService
from .settings import Settings

__all__ = ["Context", "connect_store"]


def connect_store(settings: Settings, url: str) -> tuple[aioredis.Redis, TokenStore]:
    try:
        # The runtime's factory and timeouts: the CLI's writes are durable (WAITAOF), so it
        # gets the management client, not the data plane's 1 s one.
        client = store_client(settings, url)
    except ValueError as exc:  # --redis-url is not checked by Settings.from_env
        raise ConfigError(f"PATGATE_REDIS_URL / --redis-url: {exc}") from None
    store = TokenStore(
        client,
        Keys(settings.namespace),
        events_maxlen=settings.events_maxlen,
        durable_writes=settings.durable_writes,
        durable_timeout_ms=DURABLE_TIMEOUT_MS,
    )
    return client, store


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
    async def open(cls, settings: Settings, *, json_output: bool) -> AsyncIterator[Context]:
        """Connect to the configured store, or start/join the embedded one."""
        try:
            fmt = TokenFormat(settings.token_prefix, settings.pepper)
        except ValueError as exc:
            raise ConfigError(f"PATGATE_TOKEN_PREFIX: {exc}") from None
        embedded = None
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedValkey(settings.data_dir)
            url = embedded.start()
        client, store = connect_store(settings, url)
        try:
            yield cls(
                settings=settings,
                store=store,
                tokens=TokenService(store, fmt),
                directory=Directory(
                    store,
                    default_token_limit=settings.default_token_limit,
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
