"""``retry_stale``: the one compare-and-set retry loop (issue 10), on its own and against
a real compare-and-set lost on the session's Valkey."""

from __future__ import annotations

import time

import pytest

from patgate.middleware.errors import Conflict, ValidationFailed
from patgate.middleware.records import Org
from patgate.middleware.store import StaleWrite, TokenStore, retry_stale

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("stale", "attempts"), [(0, 8), (1, 8), (7, 8), (2, 3)])
async def test_retries_until_a_commit_is_not_stale(stale: int, attempts: int) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= stale:
            raise StaleWrite("record changed concurrently")
        return "done"

    assert await retry_stale(attempt, attempts=attempts) == "done"
    assert calls == stale + 1


@pytest.mark.parametrize("attempts", [1, 3, 8])
async def test_gives_up_with_a_409_conflict(attempts: int) -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise StaleWrite("record changed concurrently")

    started = time.monotonic()
    with pytest.raises(Conflict) as info:
        await retry_stale(attempt, attempts=attempts, message="the user changed; try again")
    assert calls == attempts
    assert info.value.status_code == 409
    assert info.value.code == "conflict"
    assert info.value.detail == "the user changed; try again"
    assert isinstance(info.value.__cause__, StaleWrite)
    # Jittered backoff: attempt n waits at most n * 2 ms, and none after the last.
    assert time.monotonic() - started < 0.002 * attempts * attempts + 0.5


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ValidationFailed("name: required")

    with pytest.raises(ValidationFailed):
        await retry_stale(attempt)
    assert calls == 1


async def test_a_lost_compare_and_set_is_re_read_and_committed(store: TokenStore) -> None:
    """The first attempt reads "no org", a competing writer creates it, the commit is
    stale; the retry re-reads the competitor's record and updates it."""
    reads: list[Org | None] = []

    async def attempt() -> Org:
        old = await store.get_org("acme")
        reads.append(old)
        if len(reads) == 1:
            rival = store.plan("acme")
            rival.put_org(None, Org(id="acme", name="Rival", created_at=1.0))
            await store.commit(rival)
        base = old or Org(id="acme", name="acme", created_at=2.0)
        new = base.evolve(token_limit=42)
        plan = store.plan("acme")
        plan.put_org(old, new)
        await store.commit(plan)
        return new

    result = await retry_stale(attempt)
    assert reads[0] is None
    assert reads[1] is not None
    assert reads[1].name == "Rival"
    assert len(reads) == 2
    assert result.name == "Rival"
    assert await store.get_org("acme") == result
