"""Expiry reminders (issue 14) with a controllable clock: 7 days and 1 day ahead and on
expiry, once per token, lead time and expiry — across two workers and a restart —,
scheduled again by a regeneration, found through the expiry index (never a scan), and
delivered to a real SMTP server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patgate.gateway.notify.setup import Notifications
from patgate.gateway.settings import Settings
from patgate.middleware.keys import expiry_entry, token_ids_of
from patgate.middleware.store import TokenStore
from tests.gateway.lifecycle._world import World, make_world, member

from ._smtp import SmtpServer, smtp_server, wait_for_messages

pytestmark = pytest.mark.anyio

DAY = 86_400.0
ALICE = member("alice")


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path) as server:
        yield server


@pytest.fixture
async def w(store: TokenStore) -> World:
    return await make_world(store)


def _notifications(w: World, store: TokenStore, settings: Settings, smtp: SmtpServer) -> Any:
    config = settings.evolve(
        smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none", smtp_timeout=2.0
    )
    return Notifications.build(config, store, clock=w.clock)


async def _deliver(n: Notifications) -> int:
    total = 0
    while sent := await n.notifier.deliver_once():
        total += sent
    return total


def _subjects(smtp: SmtpServer) -> list[str]:
    return [m.header("Subject") or "" for m in smtp.messages]


def test_expiry_entries_are_eight_bytes_per_token_id() -> None:
    ids = ["tok_3ad1e52b3a73cdb2", "tok_0000000000000000", "tok_ffffffffffffffff"]
    entries = [expiry_entry(i) for i in ids]
    assert all(e is not None and len(e) == 8 for e in entries)
    blob = b"".join(e for e in entries if e) + (expiry_entry(ids[0]) or b"")
    assert token_ids_of(blob) == ids  # each once, in order
    assert expiry_entry("legacy-id") is None


async def test_reminders_at_each_lead_and_on_expiry_once_each(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    n = _notifications(w, store, settings, smtp)
    reminders = n.notifier.reminders
    assert reminders is not None
    start = w.clock.now
    token, _ = await w.tokens.create(ALICE, name="ci", expiration="30d")
    assert token.expires_at == start + 30 * DAY
    assert await reminders.tick(w.clock.now) == 0  # nothing due; cursors start now
    # 7 days before: one reminder; asking again (or a second worker) adds nothing.
    w.clock.now = token.expires_at - 7 * DAY + 60
    assert await reminders.tick(w.clock.now) == 1
    other = _notifications(w, store, settings, smtp).notifier.reminders
    assert await other.tick(w.clock.now) == 0
    assert await reminders.tick(w.clock.now + 3600) == 0
    assert await _deliver(n) == 1
    (first,) = await wait_for_messages(smtp, 1)
    assert "7 days" in (first.text or "")
    assert first.recipients == ("a@acme.io",)
    # 1 day before, then on expiry; a restarted worker (fresh objects, the same store)
    # picks up where the cursors are.
    w.clock.now = token.expires_at - DAY + 5
    restarted = _notifications(w, store, settings, smtp)
    assert await restarted.notifier.reminders.tick(w.clock.now) == 1
    w.clock.now = token.expires_at + 30
    assert await restarted.notifier.reminders.tick(w.clock.now) == 1
    assert await restarted.notifier.reminders.tick(w.clock.now + 7200) == 0
    assert await _deliver(restarted) == 2
    mails = await wait_for_messages(smtp, 3)
    assert len(mails) == 3
    assert len({m.header("Message-ID") for m in mails}) == 3
    assert "expired" in _subjects(smtp)[2].lower()


async def test_a_regeneration_schedules_new_reminders_and_revoked_get_none(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    n = _notifications(w, store, settings, smtp)
    reminders = n.notifier.reminders
    await reminders.tick(w.clock.now)
    token, _ = await w.tokens.create(ALICE, name="ci", expiration="7d")
    revoked, _ = await w.tokens.create(ALICE, name="gone", expiration="7d")
    await w.tokens.revoke(ALICE, revoked.id)
    assert token.expires_at is not None
    w.clock.now = token.expires_at - DAY + 1
    assert await reminders.tick(w.clock.now) == 1  # the 1-day one; "gone" is revoked
    # Regenerated for 30 more days: the old expiry's bucket forgets it, the new one has it.
    renewed, _ = await w.tokens.regenerate(ALICE, token.id, expiration="30d")
    assert renewed.expires_at is not None
    w.clock.now = token.expires_at + 10
    assert await reminders.tick(w.clock.now) == 0  # no expiry mail for the old expiry
    w.clock.now = renewed.expires_at - 7 * DAY + 1
    assert await reminders.tick(w.clock.now) == 1
    w.clock.now = renewed.expires_at - DAY + 1
    assert await reminders.tick(w.clock.now) == 1
    assert await _deliver(n) == 3


async def test_the_index_holds_only_live_expiries(
    w: World, store: TokenStore, redis_client: Any, settings: Settings, smtp: SmtpServer
) -> None:
    n = _notifications(w, store, settings, smtp)
    await n.notifier.reminders.tick(w.clock.now)
    token, _ = await w.tokens.create(ALICE, name="ci", expiration="7d")
    kept, _ = await w.tokens.create(ALICE, name="kept", expiration="7d")
    never, _ = await w.tokens.create(ALICE, name="forever", expiration="never")
    assert token.expires_at is not None
    hour = int(token.expires_at // 3600)
    k = store.keys_for("acme")
    both = (expiry_entry(token.id) or b"") + (expiry_entry(kept.id) or b"")
    assert await redis_client.get(k.expiring(hour)) == both
    assert await redis_client.zrange(k.expiry_hours, 0, -1) == [str(hour).encode()]
    assert await redis_client.pttl(k.expiring(hour)) > 0  # the bucket expires by itself
    found = await store.expiring(hour - 1, hour + 1)
    assert found == {(k.partition, hour): [token.id, kept.id]}
    # An edit that keeps the expiry appends nothing; the never-expiring token is nowhere.
    await w.tokens.update(ALICE, token.id, {"name": "renamed"})
    assert await redis_client.strlen(k.expiring(hour)) == 16
    assert never.expires_at is None
    # A deleted token's entry stays until the bucket expires: the reader skips it.
    await w.tokens.delete(ALICE, token.id)
    w.clock.now = token.expires_at + 60
    assert await n.notifier.reminders.tick(w.clock.now) == 1  # "kept"'s expiry mail only
    assert await _deliver(n) == 1
    (mail,) = await wait_for_messages(smtp, 1)
    assert "kept" in (mail.text or "")


async def test_a_worker_back_from_downtime_sends_only_the_latest_reminder(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    n = _notifications(w, store, settings, smtp)
    await n.notifier.reminders.tick(w.clock.now)
    token, _ = await w.tokens.create(ALICE, name="ci", expiration="30d")
    assert token.expires_at is not None
    # Down from now until 12 hours before expiry: the 7-day reminder is stale by then.
    w.clock.now = token.expires_at - 12 * 3600
    assert await n.notifier.reminders.tick(w.clock.now) == 1
    assert await _deliver(n) == 1
    (mail,) = await wait_for_messages(smtp, 1)
    assert "1 day" in (mail.text or "")
