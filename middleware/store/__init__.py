"""The token store, split along its seams (issue 10):

==========  ==========================================================================
module      holds
==========  ==========================================================================
scripts     the Lua scripts (COMMIT, LOOKUP, FORWARD, PAGES, TOUCH)
plan        :class:`Plan`: one atomic change, with named operations — the only writer
            of key names and of the invalidation wire format
client      :class:`TokenStore`: the narrow async interface, one partition per call;
            :class:`StaleWrite`;
            :func:`redis_errors_wrapped` (redis errors → ``StoreUnavailable``)
retry       :func:`retry_stale`: the one compare-and-set retry loop, jittered backoff
==========  ==========================================================================
"""

from __future__ import annotations

from .client import Buried, Found, PlanBatch, StaleWrite, TokenStore, redis_errors_wrapped
from .plan import Plan
from .retry import retry_stale

__all__ = [
    "Buried",
    "Found",
    "Plan",
    "PlanBatch",
    "StaleWrite",
    "TokenStore",
    "redis_errors_wrapped",
    "retry_stale",
]
