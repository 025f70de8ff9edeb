"""The per-process token cache: digest → resolved token, bounded, with a TTL backstop.

Correctness comes from invalidation, not from the TTL (SPEC, data plane): every write
that changes what a digest means PUBLISHes ``t <digest>`` or ``u <user id>`` and each
process drops the entry at once (:mod:`middleware.invalidation`). The rules that keep a
stale answer out of the cache:

* **Epoch.** Every invalidation bumps :attr:`TokenCache.epoch`. A miss reads the epoch
  before its Redis call and passes it to :meth:`~TokenCache.put`; if an invalidation
  arrived meanwhile, the (possibly stale) answer is not stored.
* **Active only while subscribed.** The cache starts inactive and stores nothing until
  the invalidation subscriber confirms its subscription; when the subscription drops the
  cache is flushed and deactivated again, so no positive answer outlives a period in
  which invalidations could have been missed.
* **Negative entries** ("no such digest") live ``negative_ttl`` seconds in a separate,
  smaller table, so a flood of well-formed random tokens cannot evict real ones. A Redis
  *error* is never cached.
* **Expiry is not the cache's business**: the caller re-checks ``expires_at`` on every
  hit, so caching never extends a token's life.

Eviction is FIFO (insertion order of a dict): O(1) with no bookkeeping on the hit path;
with a TTL of seconds a hot token is simply re-read after eviction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from .metrics import Metrics

__all__ = ["Slot", "TokenCache"]

V = TypeVar("V")

#: a negative table this many times smaller than the positive one (at least 1 entry).
_NEGATIVE_FRACTION = 8


class Slot(Generic[V]):
    """One cached answer. ``value`` is ``None`` for "no token has this digest"."""

    __slots__ = ("deadline", "owner", "value")

    def __init__(self, value: V | None, deadline: float, owner: str | None) -> None:
        self.value = value
        self.deadline = deadline
        self.owner = owner


class TokenCache(Generic[V]):
    """Digest → :class:`Slot`; ``now`` arguments are ``time.monotonic()`` values."""

    def __init__(
        self,
        size: int,
        ttl: float,
        negative_ttl: float,
        metrics: Metrics | None = None,
        *,
        active: bool = False,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.negative_size = max(1, size // _NEGATIVE_FRACTION) if size else 0
        #: bumped by every invalidation; see the module docstring.
        self.epoch = 0
        self.active = active
        self._positive: dict[bytes, Slot[V]] = {}
        self._negative: dict[bytes, Slot[V]] = {}
        #: the positive table itself, for the hot path's probe (``get`` without a call:
        #: ``Authenticator.authenticate_now``). Read-only there; written only here, and
        #: never replaced (``clear()`` empties it in place).
        self.positive: Mapping[bytes, Slot[V]] = self._positive
        #: owning user id → digests of that user's cached tokens, for ``u <id>``.
        self._by_owner: dict[str, set[bytes]] = {}
        self._gauge = None if metrics is None else metrics.cache_entries

    def __len__(self) -> int:
        return len(self._positive) + len(self._negative)

    def get(self, digest: bytes, now: float) -> Slot[V] | None:
        """The live slot for ``digest``, or ``None`` on a miss (absent or past its TTL)."""
        slot = self._positive.get(digest)
        if slot is None:
            slot = self._negative.get(digest)
            if slot is None:
                return None
        if now >= slot.deadline:
            self._remove(digest)
            return None
        return slot

    def put(self, digest: bytes, value: V, owner: str | None, epoch: int, now: float) -> bool:
        """Cache a positive answer read at ``epoch``; ``owner`` is the owning user id."""
        if epoch != self.epoch or not self.active or not self.size:
            return False
        self._remove(digest)
        table = self._positive
        if len(table) >= self.size:
            self._remove(next(iter(table)))
        table[digest] = Slot(value, now + self.ttl, owner)
        if owner is not None:
            self._by_owner.setdefault(owner, set()).add(digest)
        self._changed()
        return True

    def put_negative(self, digest: bytes, epoch: int, now: float) -> bool:
        """Cache "no token has this digest" for ``negative_ttl`` seconds."""
        if epoch != self.epoch or not self.active or not self.negative_size:
            return False
        if self.negative_ttl <= 0:
            return False
        self._remove(digest)
        table = self._negative
        if len(table) >= self.negative_size:
            self._remove(next(iter(table)))
        table[digest] = Slot(None, now + self.negative_ttl, None)
        self._changed()
        return True

    # -- invalidation ------------------------------------------------------------------

    def drop(self, digest: bytes) -> None:
        """``t <digest>``: forget whatever is cached for one digest."""
        self.epoch += 1
        if self._remove(digest):
            self._changed()

    def drop_owner(self, user_id: str) -> None:
        """``u <id>``: forget every cached token owned by a user."""
        self.epoch += 1
        digests = self._by_owner.pop(user_id, None)
        if digests:
            for digest in digests:
                self._positive.pop(digest, None)
            self._changed()

    def flush(self) -> None:
        """``*``, or a (re)connected subscription: forget everything."""
        self.epoch += 1
        self._positive.clear()
        self._negative.clear()
        self._by_owner.clear()
        self._changed()

    def activate(self) -> None:
        """The subscription is confirmed: start caching from an empty table."""
        self.flush()
        self.active = True

    def deactivate(self) -> None:
        """The subscription is down: invalidations may be lost, so trust nothing cached."""
        self.active = False
        self.flush()

    # -- internals ---------------------------------------------------------------------

    def _remove(self, digest: bytes) -> bool:
        slot = self._positive.pop(digest, None)
        if slot is None:
            return self._negative.pop(digest, None) is not None
        owner = slot.owner
        if owner is not None:
            digests = self._by_owner.get(owner)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self._by_owner[owner]
        return True

    def _changed(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self._positive) + len(self._negative))
