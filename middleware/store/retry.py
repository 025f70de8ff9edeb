"""The one compare-and-set retry loop: re-read and re-plan until a commit is not stale.

Every write reads the records it changes and commits a :class:`~.plan.Plan` that checks
them unchanged; a concurrent writer makes the commit raise :class:`~.client.StaleWrite`.
:func:`retry_stale` runs the whole read → plan → commit attempt again after a short,
jittered, growing pause (so a burst of edits to one record converges instead of every
writer retrying in lockstep), and gives up with 409 ``conflict`` after ``attempts``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from patgate.middleware.errors import Conflict

from .client import StaleWrite

__all__ = ["DEFAULT_ATTEMPTS", "retry_stale"]

T = TypeVar("T")

DEFAULT_ATTEMPTS = 8
#: the backoff's unit: attempt n waits uniformly in [0, n * _STEP) seconds.
_STEP = 0.002


async def retry_stale(
    attempt: Callable[[], Awaitable[T]],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    message: str = "the record changed concurrently too often; try again",
) -> T:
    """``await attempt()`` until it does not raise :class:`StaleWrite`; after ``attempts``
    stale tries raise :class:`~patgate.middleware.errors.Conflict` (``code="conflict"``).

    ``attempt`` must re-read what it changes each time: its plan's checks are built from
    that read."""
    last: StaleWrite | None = None
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except StaleWrite as exc:
            last = exc
            if n < attempts:
                await asyncio.sleep(random.uniform(0, _STEP * n))
    raise Conflict(message, code="conflict") from last
