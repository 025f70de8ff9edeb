"""Step "decide status" of the auth path: is this stored token usable right now?

Shared by the data plane (after a cache or Redis lookup) and the management API, so the
rules live in one place: revoked → expired → owner removed, disabled or without the
token permission. Expiry is evaluated against ``now`` on every call — a cached record
never extends a token's life.
"""

from __future__ import annotations

from .errors import InvalidToken
from .records import Identity, Token, User

__all__ = ["identity_of", "usable_identity"]


def identity_of(token: Token) -> Identity:
    return Identity(
        token_id=token.id,
        token_name=token.name,
        token_type=token.type,
        owner_kind=token.owner_kind,
        owner_id=token.owner_id,
        org_id=token.org_id,
        scopes=frozenset(token.scopes),
        workspaces=None if token.workspaces is None else frozenset(token.workspaces),
        expires_at=token.expires_at,
    )


def usable_identity(token: Token, owner: User | None, now: float) -> Identity:
    """The identity a matched token speaks for, or :class:`InvalidToken` with a reason.

    RFC 6750 lets ``error_description`` say "revoked"/"expired" here because the caller
    proved possession of a secret whose hash matched; unknown tokens never reach this.
    """
    if token.revoked_at is not None:
        raise InvalidToken("token revoked", reason="revoked")
    if token.expires_at is not None and now >= token.expires_at:
        raise InvalidToken("token expired", reason="expired")
    if token.owner_kind == "user":
        # Disabling a user or the permission suspends their tokens without deleting them
        # (SPEC, concepts: User).
        if owner is None:
            raise InvalidToken("token revoked", reason="revoked")
        if not owner.can_authenticate:
            raise InvalidToken("token owner disabled", reason="disabled")
    return identity_of(token)
