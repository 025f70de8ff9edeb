"""``patgate pepper status``: how many tokens still depend on the previous pepper
(issue 12, pepper rotation), so an operator knows when ``PATGATE_PEPPER_PREVIOUS`` can go.

A pepper rotation works like this (docs/deploy.md, "Rotating the pepper"):

1. set ``PATGATE_PEPPER`` to the new pepper and ``PATGATE_PEPPER_PREVIOUS`` to the old one
   (``none`` when there was no pepper before) on every process;
2. each token presented from then on is found under the previous pepper's digest (in the
   same lookup call, only after the current one missed) and re-indexed atomically under
   the current one; tokens created or regenerated meanwhile use the current one;
3. once this reports 0 tokens under the previous pepper — or the remaining ones are not
   worth keeping (their owners can regenerate them) — drop ``PATGATE_PEPPER_PREVIOUS``.

Every token record names the pepper its digest was made with (a 16-bit fingerprint,
:attr:`~patgate.middleware.tokenformat.TokenFormat.pepper_id`), and so does the previous
secret of a token in its grace period; this reads every record once (HSCAN per partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patgate.middleware.records import Token
from patgate.middleware.store import TokenStore, redis_errors_wrapped
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["PepperStatus", "pepper_status"]


@dataclass(slots=True)
class PepperStatus:
    tokens: int = 0
    #: tokens every secret of which is hashed with the current pepper.
    current: int = 0
    #: tokens with a secret still hashed with the previous pepper (they need it).
    previous: int = 0
    #: tokens hashed with a pepper that is neither (they no longer authenticate).
    other: int = 0
    rotating: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "current_pepper": self.current,
            "previous_pepper": self.previous,
            "other_pepper": self.other,
            "rotating": self.rotating,
            "previous_pepper_can_be_dropped": self.rotating and self.previous == 0,
        }


def _classify(ids: set[int | None], fmt: TokenFormat) -> str:
    if ids <= {fmt.pepper_id}:
        return "current"
    if fmt.rotating and fmt.previous_pepper_id in ids:
        return "previous"
    return "other"


async def pepper_status(store: TokenStore, fmt: TokenFormat, *, now: float) -> PepperStatus:
    """Count every token of the namespace by the peppers its live secrets were hashed
    with (a previous secret counts only while its grace period lasts)."""
    status = PepperStatus(rotating=fmt.rotating)
    r: Any = store.client
    for keys in store.keyspace.partitions:
        with redis_errors_wrapped():
            async for _, blob in r.hscan_iter(keys.tokens, count=1000):
                token = Token.decode(blob)
                ids = {token.pepper_id}
                prev = token.previous
                if prev is not None and now < prev.until:
                    ids.add(prev.pepper_id)
                status.tokens += 1
                kind = _classify(ids, fmt)
                setattr(status, kind, getattr(status, kind) + 1)
    return status
