"""Filtered, cursor-paginated token listings (own tokens and the org admin view)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from middleware.errors import ValidationFailed
from middleware.records import Token, TokenStatus, TokenType, User
from middleware.store import TokenStore

__all__ = ["Filters", "Page", "decode_cursor", "encode_cursor", "scan"]

_STATUSES: tuple[TokenStatus, ...] = ("active", "expired", "revoked")
_TYPES: tuple[TokenType, ...] = ("personal", "service", "oauth")
_CHUNK = 200
# One page request reads at most this many tokens before answering with a cursor, so a
# filter that matches little in a big org still answers promptly.
_SCAN_LIMIT = 20_000
MAX_LIMIT = 200


def encode_cursor(score: int, token_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{token_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, token_id = raw.partition(":")
        if not token_id:
            raise ValueError(raw)
        return int(score), token_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailed("cursor: not a cursor returned by this API") from None


@dataclass(frozen=True, slots=True)
class Filters:
    status: TokenStatus | None = None
    q: str | None = None
    type: TokenType | None = None
    limit: int = 50
    cursor: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        status: str | None = None,
        q: str | None = None,
        type: str | None = None,
        limit: str | int | None = None,
        cursor: str | None = None,
    ) -> Filters:
        st = next((s for s in _STATUSES if s == status), None)
        if status is not None and st is None:
            raise ValidationFailed(f"status: expected one of {', '.join(_STATUSES)}")
        tt = next((t for t in _TYPES if t == type), None)
        if type is not None and tt is None:
            raise ValidationFailed(f"type: expected one of {', '.join(_TYPES)}")
        n = 50
        if limit is not None:
            try:
                n = int(limit)
            except ValueError:
                raise ValidationFailed("limit: expected an integer") from None
            if not 1 <= n <= MAX_LIMIT:
                raise ValidationFailed(f"limit: must be between 1 and {MAX_LIMIT}")
        if cursor is not None:
            decode_cursor(cursor)
        return cls(status=st, q=(q or None), type=tt, limit=n, cursor=cursor)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Token]
    next_cursor: str | None
    owners: dict[str, User] = field(default_factory=dict)


def _matches(f: Filters, token: Token, now: float, owner: User | None) -> bool:
    if f.status is not None and token.status(now) != f.status:
        return False
    if f.type is not None and token.type != f.type:
        return False
    if f.q is not None:
        needle = f.q.casefold()
        hay = [token.name, token.owner_id]
        if owner is not None:
            hay += [owner.email, owner.name]
        if not any(needle in h.casefold() for h in hay):
            return False
    return True


async def scan(
    store: TokenStore, zkey: str, f: Filters, now: float, *, match_owner: bool = False
) -> Page:
    """Newest first; ``match_owner`` lets ``q`` match the owner's email and name too."""
    before = None if f.cursor is None else decode_cursor(f.cursor)
    items: list[Token] = []
    owners: dict[str, User] = {}
    scanned = 0
    while scanned < _SCAN_LIMIT:
        rows = await store.token_page(zkey, before=before, count=_CHUNK)
        if not rows:
            return Page(items, None, owners)
        scores = dict(rows)
        tokens = await store.get_tokens([i for i, _ in rows])
        if match_owner:
            wanted = {t.owner_id for t in tokens if t.owner_kind == "user"} - set(owners)
            owners.update((u.id, u) for u in await store.get_users(wanted))
        for token in tokens:
            scanned += 1
            before = (scores[token.id], token.id)
            owner = owners.get(token.owner_id) if token.owner_kind == "user" else None
            if _matches(f, token, now, owner):
                items.append(token)
                if len(items) == f.limit:
                    return Page(items, encode_cursor(*before), owners)
        before = (rows[-1][1], rows[-1][0])
        if len(rows) < _CHUNK:
            return Page(items, None, owners)
    return Page(items, None if before is None else encode_cursor(*before), owners)
