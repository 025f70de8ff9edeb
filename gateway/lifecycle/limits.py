"""Token limits: how many *active* tokens an org, and each owner in it, may hold.

"Up to 10 API keys per organization" (issue 13): :attr:`Org.token_limit` counts every
active token of the org, whoever owns it (10 by default, ``PATGATE_DEFAULT_TOKEN_LIMIT``),
and :attr:`Org.owner_token_limit` those of one owner (off by default). Either may be
off (None). Only active tokens count: a revoked or expired one never blocks a new one,
and expiry frees a place by the clock alone, without any write.

The count is exact under concurrent writers without a counter that expiry would have to
decrement: the writer reads every token of the org with the org's *active version*
(:meth:`TokenStore.roster`, one script call), counts in Python, and commits with a
compare-and-set on that version, which it bumps (:meth:`Plan.hold_active_count`). Every
change that can add an active token — a create, a regeneration of a revoked or expired
token — goes through here, so two of them cannot both pass on the same count: the later
commit is stale and retries against the new count. Revokes, deletes and expiry only ever
lower the count and need no version. Nothing is stored per token.

A full limit is 409 with the code naming it (``org_token_limit`` or
``owner_token_limit``), not 429, which clients read as "retry later".
"""

from __future__ import annotations

from patgate.middleware.errors import LimitReached
from patgate.middleware.records import Org, Token
from patgate.middleware.store import Plan, TokenStore

__all__ = ["LIMIT_ATTEMPTS", "MAX_TOKEN_LIMIT", "hold_limits", "limits_apply"]

#: the highest limit an org may set (each check reads the org's tokens).
MAX_TOKEN_LIMIT = 10_000
#: compare-and-set attempts of a create under a limit: every stale attempt means another
#: create in the org succeeded meanwhile, so this bounds the concurrent creators per org
#: that are all served (the rest get 409 ``conflict``, as any other write does).
LIMIT_ATTEMPTS = 64


def limits_apply(org: Org) -> bool:
    return org.token_limit is not None or org.owner_token_limit is not None


async def hold_limits(store: TokenStore, plan: Plan, org: Org, token: Token, now: float) -> None:
    """Refuse ``token`` becoming active if that would pass one of ``org``'s limits;
    otherwise make ``plan`` commit only if no other active token appeared meanwhile.

    ``token`` is the record as it will be written: a new token, or a revoked or expired
    one being regenerated (its own old record is not counted)."""
    if not limits_apply(org):
        return
    version, tokens = await store.roster(org.id)
    active = [t for t in tokens if t.id != token.id and t.status(now) == "active"]
    if org.token_limit is not None and len(active) >= org.token_limit:
        raise LimitReached(
            f"the organization's limit of {org.token_limit} active tokens is reached; "
            "revoke or delete a token first",
            code="org_token_limit",
            limit=org.token_limit,
        )
    if org.owner_token_limit is not None:
        own = sum(1 for t in active if t.owner_key == token.owner_key)
        if own >= org.owner_token_limit:
            owner = "the organization" if token.owner_kind == "org" else token.owner_id
            raise LimitReached(
                f"the limit of {org.owner_token_limit} active tokens per owner is reached "
                f"for {owner}; revoke or delete one of its tokens first",
                code="owner_token_limit",
                limit=org.owner_token_limit,
            )
    plan.hold_active_count(org.id, version)
