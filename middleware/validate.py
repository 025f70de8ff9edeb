"""Step "decide status" of the auth path: is this stored token usable right now?

Shared by the data plane (after a cache or Redis lookup) and the management API, so the
rules live in one place: revoked → expired → owner removed, disabled, or without the
token permission. Expiry is evaluated against ``now`` on every call — a cached record
never extends a token's life. The identity carries the token's *effective* scopes and
workspaces (:func:`middleware.grants.effective`): never more than the owner may grant now.
"""

from __future__ import annotations

from .errors import InvalidToken
from .grants import effective
from .records import Identity, Org, Token, User

__all__ = ["check_usable", "identity_of", "usable_identity"]


def identity_of(token: Token, org: Org | None = None, owner: User | None = None) -> Identity:
    scopes, workspaces = effective(token, org, owner)
    return Identity(
        token_id=token.id,
        token_name=token.name,
        token_type=token.type,
        owner_kind=token.owner_kind,
        owner_id=token.owner_id,
        org_id=token.org_id,
        scopes=frozenset(scopes),
        workspaces=None if workspaces is None else frozenset(workspaces),
        expires_at=token.expires_at,
    )


def check_usable(token: Token, owner: User | None, now: float) -> None:
    """Raise :class:`InvalidToken` with its reason unless the token may be used now.

    RFC 6750 lets ``error_description`` say "revoked"/"expired" here because the caller
    proved possession of a secret whose hash matched; unknown tokens never reach this.
    """
    if token.revoked_at is not None:
        raise InvalidToken("token revoked", reason="revoked")
    if token.expires_at is not None and now >= token.expires_at:
        raise InvalidToken("token expired", reason="expired")
    if token.owner_kind == "user":
        # Disabling a user or the permission suspends their tokens without deleting them
        # (SPEC, concepts: User); each has its own reason (issue 9).
        if owner is None:
            raise InvalidToken("token revoked", reason="revoked")
        if not owner.enabled:
            raise InvalidToken("token owner disabled", reason="disabled")
        if not owner.can_manage_tokens:
            raise InvalidToken("token owner lacks the token permission", reason="no_permission")


def usable_identity(
    token: Token, owner: User | None, now: float, org: Org | None = None
) -> Identity:
    """The identity a matched token speaks for, or :class:`InvalidToken` with a reason."""
    check_usable(token, owner, now)
    return identity_of(token, org, owner)
