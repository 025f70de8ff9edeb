"""Filtered, cursor-paginated token listings (own tokens and the org admin view)."""

from __future__ import annotations

import base64
import binascii
import heapq
import re
from collections import deque
from dataclasses import dataclass, field

from patgate.middleware.errors import ValidationFailed
from patgate.middleware.records import Token, TokenStatus, TokenType, User
from patgate.middleware.store import TokenStore

__all__ = ["ALL_STATUSES", "Filters", "Page", "decode_cursor", "encode_cursor", "scan", "scan_org"]

_STATUSES: tuple[TokenStatus, ...] = ("active", "expired", "revoked")
#: ``?status=all``: tokens of every status (the admin view shows active ones by default).
ALL_STATUSES = "all"
_TYPES: tuple[TokenType, ...] = ("personal", "service", "oauth")
_CHUNK = 200
# One page request reads at most this many tokens before answering with a cursor, so a
# filter that matches little in a big org still answers promptly.
_SCAN_LIMIT = 20_000
MAX_LIMIT = 200
#: scores are creation times in milliseconds; 2**53 keeps them exact as Redis doubles.
_MAX_SCORE = 2**53
#: ``<score>:<token id>`` (ids as gateway.lifecycle.inputs checks them), base64url.
_CURSOR = re.compile(r"(0|[1-9][0-9]{0,15}):([A-Za-z0-9][A-Za-z0-9_.@-]{0,127})")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_CURSOR = 200
_LIMIT = re.compile(r"[0-9]{1,4}")
_MAX_QUERY = 200


def encode_cursor(score: int, token_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{token_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The ``(score, token id)`` of a cursor made by :func:`encode_cursor`; anything else
    is a 400 here, before it reaches a Redis command (a score Redis cannot read as a
    double, e.g. 400 digits, would be a Redis error there)."""
    m = None
    if len(cursor) <= _MAX_CURSOR and _B64URL.fullmatch(cursor):
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raw = ""
        m = _CURSOR.fullmatch(raw)
    if m is None or int(m[1]) > _MAX_SCORE:
        raise ValidationFailed("cursor: not a cursor returned by this API")
    return int(m[1]), m[2]


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
        default_status: TokenStatus | None = None,
    ) -> Filters:
        """Query parameters to filters, each checked (bad input is a 400). ``status``
        ``all`` is every status; no ``status`` is ``default_status`` — every status too,
        except in a view that shows fewer by default (the admin view: ``active``)."""
        st = next((s for s in _STATUSES if s == status), None)
        if status is None:
            st = default_status
        elif status != ALL_STATUSES and st is None:
            raise ValidationFailed(
                f"status: expected one of {', '.join(_STATUSES)} or {ALL_STATUSES}"
            )
        tt = next((t for t in _TYPES if t == type), None)
        if type is not None and tt is None:
            raise ValidationFailed(f"type: expected one of {', '.join(_TYPES)}")
        n = 50
        if limit is not None:
            # Only ASCII digits: int() also takes " 7", "1_0" and other scripts' digits.
            if isinstance(limit, bool) or not _LIMIT.fullmatch(str(limit)):
                raise ValidationFailed(f"limit: expected an integer from 1 to {MAX_LIMIT}")
            n = int(limit)
            if not 1 <= n <= MAX_LIMIT:
                raise ValidationFailed(f"limit: must be between 1 and {MAX_LIMIT}")
        if cursor is not None:
            decode_cursor(cursor)
        if q is not None and len(q) > _MAX_QUERY:
            raise ValidationFailed(f"q: at most {_MAX_QUERY} characters")
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


class _Single:
    """One zset (an owner's tokens), newest first."""

    def __init__(self, store: TokenStore, zkey: str, before: tuple[int, str] | None) -> None:
        self._store = store
        self._zkey = zkey
        self._before = before

    async def take(self, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` (id, score) rows; fewer only once the zset is exhausted."""
        rows = await self._store.token_page(self._zkey, before=self._before, count=count)
        if rows:
            self._before = (rows[-1][1], rows[-1][0])
        return rows


class _Head:
    """The next row of one zset in the merge heap; ``heapq`` pops the newest first."""

    __slots__ = ("key", "zkey")

    def __init__(self, row: tuple[str, int], zkey: str) -> None:
        self.key = (row[1], row[0])
        self.zkey = zkey

    def __lt__(self, other: _Head) -> bool:
        return self.key > other.key


class _Merged:
    """Many zsets merged newest first, exactly as if they were one zset.

    The org admin view: Redis keeps no per-org zset of tokens (a skiplist costs ~80 B per
    token, SPEC: ≤ 400 B per token), so the org's owners' ``own:`` zsets are merged here
    on the zsets' own order (score, then member, both descending) with the same
    ``(score, id)`` cursor. Each zset is read in pipelined batches from its own position;
    one is re-read only when its batch runs out while it may hold more."""

    def __init__(self, store: TokenStore, zkeys: list[str], before: tuple[int, str] | None) -> None:
        self._store = store
        self._heap: list[_Head] = []
        self._rest: dict[str, deque[tuple[str, int]]] = {}
        self._more: set[str] = set()
        self._due = {zkey: before for zkey in zkeys}
        self._first = True

    async def take(self, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` (id, score) rows; fewer only once every zset is exhausted."""
        out: list[tuple[str, int]] = []
        while len(out) < count:
            if self._due:
                await self._fill(count)
            if not self._heap:
                break
            head = heapq.heappop(self._heap)
            score, token_id = head.key
            out.append((token_id, score))
            rest = self._rest[head.zkey]
            if rest:
                heapq.heappush(self._heap, _Head(rest.popleft(), head.zkey))
            elif head.zkey in self._more:
                self._due[head.zkey] = head.key
        return out

    async def _fill(self, count: int) -> None:
        due = list(self._due.items())
        self._due.clear()
        # The first read covers every owner, so it takes only a few rows of each when
        # there are many (a page needs the head of every owner, not all their tokens);
        # an owner that runs out while it may hold more is re-read alone, a full chunk.
        size = count
        if self._first:
            size = min(count, max(4, 2 * count // len(due)))
            self._first = False
        pages = await self._store.token_pages(due, count=size)
        for (zkey, _), rows in zip(due, pages, strict=True):
            if len(rows) == size:
                self._more.add(zkey)
            else:
                self._more.discard(zkey)
            if rows:
                rest = deque(rows)
                heapq.heappush(self._heap, _Head(rest.popleft(), zkey))
                self._rest[zkey] = rest


async def scan(
    store: TokenStore,
    org_id: str,
    owner: str,
    f: Filters,
    now: float,
    *,
    match_owner: bool = False,
) -> Page:
    """One owner's tokens (``owner``: its key, ``u:<org>/<id>`` or ``o:<org>``, in org
    ``org_id``), newest first; ``match_owner`` lets ``q`` match the owner's email and
    name too."""
    zkey = store.keys_for(org_id).owner_tokens(owner)
    source = _Single(store, zkey, None if f.cursor is None else decode_cursor(f.cursor))
    return await _scan(store, source, f, now, match_owner=match_owner, org_id=org_id)


async def scan_org(store: TokenStore, org_id: str, f: Filters, now: float) -> Page:
    """Every token in the org (the admin view), newest first; ``q`` matches owners too.

    Merges the ``own:`` zsets of the owners that hold the org's tokens — current users,
    removed users (whose personal tokens stay, revoked) and the org itself — and keeps
    only tokens of this org (a removed user's id may since be reused in another org)."""
    owners = await store.org_owner_keys(org_id)
    before = None if f.cursor is None else decode_cursor(f.cursor)
    keys = store.keys_for(org_id)
    source = _Merged(store, [keys.owner_tokens(o) for o in owners], before)
    return await _scan(store, source, f, now, match_owner=True, org_id=org_id)


async def _scan(
    store: TokenStore,
    source: _Single | _Merged,
    f: Filters,
    now: float,
    *,
    match_owner: bool,
    org_id: str,
) -> Page:
    before = None if f.cursor is None else decode_cursor(f.cursor)
    items: list[Token] = []
    owners: dict[str, User] = {}
    scanned = 0
    # Read what an unfiltered page needs first, then more while filters skip rows: a
    # merged admin view reads every owner's head, so over-reading costs there.
    want = min(f.limit, _CHUNK)
    while scanned < _SCAN_LIMIT:
        rows = await source.take(want)
        if not rows:
            return Page(items, None, owners)
        scores = dict(rows)
        tokens = await store.get_tokens(org_id, [i for i, _ in rows])
        if match_owner:
            wanted = {
                t.owner_id for t in tokens if t.owner_kind == "user" and t.org_id == org_id
            } - set(owners)
            owners.update((u.id, u) for u in await store.get_users(org_id, wanted))
        for token in tokens:
            scanned += 1
            before = (scores[token.id], token.id)
            owner = owners.get(token.owner_id) if token.owner_kind == "user" else None
            if _matches(f, token, now, owner):
                items.append(token)
                if len(items) == f.limit:
                    return Page(items, encode_cursor(*before), owners)
        before = (rows[-1][1], rows[-1][0])
        if len(rows) < want:
            return Page(items, None, owners)
        want = min(want * 4, _CHUNK)
    return Page(items, None if before is None else encode_cursor(*before), owners)
