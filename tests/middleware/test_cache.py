"""TokenCache: bounds, TTLs, negative entries, owner index, epoch and the active flag."""

from __future__ import annotations

import pytest

from patgate.middleware.cache import TokenCache
from patgate.middleware.metrics import Metrics


def _d(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _cache(size: int = 8, *, metrics: Metrics | None = None) -> TokenCache[str]:
    return TokenCache(size, ttl=30.0, negative_ttl=2.0, metrics=metrics, active=True)


def _gauge(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("patgate_cache_entries")
    assert value is not None
    return value


def test_positive_hit_then_ttl_backstop() -> None:
    cache = _cache()
    assert cache.put(_d(1), "tok", "u1", cache.epoch, now=100.0)
    slot = cache.get(_d(1), now=129.9)
    assert slot is not None
    assert slot.value == "tok"
    assert cache.get(_d(1), now=130.0) is None
    assert len(cache) == 0


def test_negative_entry_has_its_own_short_ttl() -> None:
    cache = _cache()
    assert cache.put_negative(_d(1), cache.epoch, now=100.0)
    slot = cache.get(_d(1), now=101.9)
    assert slot is not None
    assert slot.value is None
    assert cache.get(_d(1), now=102.0) is None


def test_negative_ttl_zero_disables_negative_caching() -> None:
    cache: TokenCache[str] = TokenCache(8, ttl=30.0, negative_ttl=0.0, active=True)
    assert not cache.put_negative(_d(1), cache.epoch, now=0.0)
    assert cache.get(_d(1), now=0.0) is None


def test_bounded_fifo_eviction() -> None:
    cache = _cache(size=3)
    for n in range(5):
        cache.put(_d(n), f"v{n}", None, cache.epoch, now=0.0)
    assert len(cache) == 3
    assert [cache.get(_d(n), 0.0) is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_negative_table_is_smaller_and_cannot_evict_positives() -> None:
    cache = _cache(size=16)  # negative table: 16 // 8 = 2
    cache.put(_d(100), "real", "u1", cache.epoch, now=0.0)
    for n in range(50):
        cache.put_negative(_d(n), cache.epoch, now=0.0)
    assert len(cache) == 1 + 2
    slot = cache.get(_d(100), 0.0)
    assert slot is not None
    assert slot.value == "real"


def test_size_zero_caches_nothing() -> None:
    cache: TokenCache[str] = TokenCache(0, ttl=30.0, negative_ttl=2.0, active=True)
    assert not cache.put(_d(1), "v", None, cache.epoch, 0.0)
    assert not cache.put_negative(_d(2), cache.epoch, 0.0)
    assert len(cache) == 0


def test_drop_one_digest_bumps_epoch() -> None:
    cache = _cache()
    cache.put(_d(1), "a", "u1", cache.epoch, 0.0)
    cache.put(_d(2), "b", "u1", cache.epoch, 0.0)
    before = cache.epoch
    cache.drop(_d(1))
    assert cache.epoch == before + 1
    assert cache.get(_d(1), 0.0) is None
    assert cache.get(_d(2), 0.0) is not None


def test_drop_owner_removes_all_of_a_users_tokens_only() -> None:
    cache = _cache()
    cache.put(_d(1), "a", "u1", cache.epoch, 0.0)
    cache.put(_d(2), "b", "u1", cache.epoch, 0.0)
    cache.put(_d(3), "c", "u2", cache.epoch, 0.0)
    cache.put(_d(4), "org-token", None, cache.epoch, 0.0)
    cache.drop_owner("u1")
    assert [cache.get(_d(n), 0.0) is not None for n in (1, 2, 3, 4)] == [False, False, True, True]
    cache.drop_owner("nobody")  # unknown owner: harmless
    assert len(cache) == 2


def test_owner_index_follows_replacement_and_eviction() -> None:
    cache = _cache(size=2)
    cache.put(_d(1), "a", "u1", cache.epoch, 0.0)
    cache.put(_d(1), "a2", "u2", cache.epoch, 0.0)  # same digest, re-read with a new owner
    cache.drop_owner("u1")
    slot = cache.get(_d(1), 0.0)
    assert slot is not None
    assert slot.value == "a2"
    cache.put(_d(2), "b", "u2", cache.epoch, 0.0)
    cache.put(_d(3), "c", "u3", cache.epoch, 0.0)  # evicts _d(1)
    cache.drop_owner("u2")
    assert cache.get(_d(2), 0.0) is None
    assert cache.get(_d(3), 0.0) is not None


@pytest.mark.parametrize(
    "invalidate",
    [
        lambda c: c.drop(_d(1)),
        lambda c: c.drop(_d(99)),  # any invalidation counts, even for another digest
        lambda c: c.drop_owner("u1"),
        lambda c: c.flush(),
    ],
    ids=["same-digest", "other-digest", "owner", "flush"],
)
def test_lookup_racing_an_invalidation_is_not_stored(invalidate: object) -> None:
    cache = _cache()
    epoch = cache.epoch  # read before the (simulated) Redis round trip
    invalidate(cache)  # type: ignore[operator]
    assert not cache.put(_d(1), "stale", "u1", epoch, 0.0)
    assert not cache.put_negative(_d(1), epoch, 0.0)
    assert cache.get(_d(1), 0.0) is None


def test_inactive_cache_stores_nothing_and_deactivate_flushes() -> None:
    cache: TokenCache[str] = TokenCache(8, ttl=30.0, negative_ttl=2.0)
    assert not cache.active
    assert not cache.put(_d(1), "v", None, cache.epoch, 0.0)
    cache.activate()
    assert cache.put(_d(1), "v", None, cache.epoch, 0.0)
    cache.deactivate()
    assert not cache.active
    assert cache.get(_d(1), 0.0) is None
    assert not cache.put(_d(1), "v", None, cache.epoch, 0.0)


def test_entries_gauge_tracks_size() -> None:
    metrics = Metrics()
    cache = _cache(metrics=metrics)
    cache.put(_d(1), "a", "u1", cache.epoch, 0.0)
    cache.put_negative(_d(2), cache.epoch, 0.0)
    assert _gauge(metrics) == 2
    cache.drop(_d(1))
    assert _gauge(metrics) == 1
    cache.flush()
    assert _gauge(metrics) == 0
