"""The rate limit of ``POST /v1/credentials/revoke`` (issue 12): leaked-credential reports
come without authentication, so each client address (an IPv6 /64 counts as one) may send
``limit`` of them per ``window`` seconds, counted in the store so every process and
replica shares the count. Over it, the answer is 429 with ``Retry-After``."""

from __future__ import annotations

import math

from patgate.middleware.errors import TooManyRequests
from patgate.middleware.limits import client_key, counter_partition
from patgate.middleware.store import TokenStore

__all__ = ["ReportLimit"]


class ReportLimit:
    def __init__(self, store: TokenStore, *, limit: int = 10, window: float = 60.0) -> None:
        self._store = store
        self.limit = limit
        self.window = window

    async def admit(self, address: str | None) -> None:
        """Count one report from ``address``; :class:`TooManyRequests` when over."""
        # Clients without an address (a Unix-socket peer) share one budget.
        key = client_key(address) or "unknown"
        partition = counter_partition(key)
        counter = self._store.keyspace.partition(partition).reports(key)
        [(count, left_ms)] = await self._store.add_counts(
            partition,
            [(counter, key, 1)],
            limit=self.limit,
            window_ms=max(1, int(self.window * 1000)),
            announce=False,
        )
        if count > self.limit:
            wait = max(1, math.ceil(left_ms / 1000))
            raise TooManyRequests(
                f"at most {self.limit} credential reports per {self.window:g} s; retry in {wait} s",
                retry_after=wait,
            )
