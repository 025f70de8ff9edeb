"""The notification worker end to end (issue 14): audit events → consumer group →
outbox → a real SMTP server (aiosmtpd) and a real webhook receiver, on loopback, over
the session's real Valkey.

Failure drills here: the SMTP server down for a while, the receiver answering 500 then
200, dead letters and their retry, two workers at once. (A worker killed with SIGKILL
mid-batch is tests/gateway/notify/test_worker_kill.py: it needs its own process.)"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from patgate.gateway.lifecycle import Owner
from patgate.gateway.notify.outbox import Job
from patgate.gateway.notify.setup import Notifications, running
from patgate.gateway.settings import Settings
from patgate.middleware.store import TokenStore
from tests.gateway.lifecycle._world import World, make_world, member
from tests.middleware._plane import until

from ._receiver import receiver
from ._smtp import SmtpServer, smtp_server, wait_for_messages

pytestmark = pytest.mark.anyio

SECRET_RE = re.compile(r"pat_[0-9A-Za-z]{36}")
ALICE = member("alice", ip="203.0.113.7", user_agent="curl/8.5")


def _settings(settings: Settings, smtp: SmtpServer, **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "smtp_timeout": 2.0,
        "webhook_allow_private": True,
        "webhook_timeout": 2.0,
        "notify_backoff": 0.05,
        "notify_lease": 5.0,
        "notify_claim_idle": 1.0,
    }
    return settings.evolve(**{**base, **extra})


@contextlib.asynccontextmanager
async def worker(
    settings: Settings, store: TokenStore, **extra: Any
) -> AsyncIterator[Notifications]:
    n = Notifications.build(settings.evolve(**extra) if extra else settings, store)
    await n.notifier.ensure_groups()
    async with running(n):
        yield n


@pytest.fixture
async def w(store: TokenStore) -> World:
    return await make_world(store)


@pytest.fixture
def smtp(tmp_path: Path) -> AsyncIterator[SmtpServer]:
    with smtp_server(tmp_path) as server:
        yield server


async def test_a_created_token_mails_its_owner_once_with_the_masked_token(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    async with worker(_settings(settings, smtp), store):
        token, secret = await w.tokens.create(ALICE, name="deploy", scopes=["threads:read"])
        (mail,) = await wait_for_messages(smtp, 1)
    assert mail.recipients == ("a@acme.io",)
    raw = mail.raw.decode()
    assert secret not in raw
    assert not SECRET_RE.search(raw)
    assert token.prefix + "…" in (mail.text or "")
    for part in (mail.text or "", mail.html or ""):
        assert "deploy" in part
        assert "203.0.113.7" in part
        assert "curl/8.5" in part
    message_id = mail.header("Message-ID")
    assert message_id is not None
    assert message_id.startswith("<m-")
    assert message_id.endswith("@patgate>")
    await asyncio.sleep(0.3)
    assert len(smtp.messages) == 1


async def test_org_tokens_mail_every_admin_naming_the_creator(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    await w.directory.put_user(
        w.system, "ada", {"org_id": "acme", "email": "ada@acme.io", "role": "admin"}
    )
    async with worker(_settings(settings, smtp), store):
        await w.tokens.create(w.admin, name="sync", owner=Owner("org", "acme"))
        (mail,) = await wait_for_messages(smtp, 1)
    assert sorted(mail.recipients) == ["ada@acme.io", "root@acme.io"]
    assert "root" in (mail.text or "")


async def test_revoke_and_regenerate_mail_too(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    async with worker(_settings(settings, smtp), store):
        token, _ = await w.tokens.create(ALICE, name="ci")
        await w.tokens.regenerate(ALICE, token.id)
        await w.tokens.revoke(ALICE, token.id)
        mails = await wait_for_messages(smtp, 3)
    subjects = [m.header("Subject") or "" for m in mails]
    assert len({m.header("Message-ID") for m in mails}) == 3
    assert any("revoked" in s.lower() for s in subjects), subjects
    assert any("regenerat" in s.lower() for s in subjects), subjects


async def test_smtp_down_for_a_while_loses_nothing(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    smtp.stop()
    async with worker(_settings(settings, smtp), store) as n:
        names = [f"t{i}" for i in range(3)]
        for name in names:
            await w.tokens.create(ALICE, name=name)
        # The worker tries, fails and backs off while the server is down.
        await until(
            lambda: _sample(n, "patgate_notifications_failed_total", "mail") >= 3,
            "the worker's counters",
            seconds=10.0,
        )
        smtp.start()
        mails = await wait_for_messages(smtp, 3, timeout=10.0)
    assert sorted(_names(mails)) == names
    assert _sample(n, "patgate_notifications_retried_total", "mail") >= 3


async def test_a_webhook_answering_500_then_200_is_delivered_signed(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    async with worker(_settings(settings, smtp), store) as n, receiver() as rx:
        endpoint = await n.endpoints.create(
            w.admin, "acme", {"url": rx.url, "event_types": ["token.created"]}
        )
        rx.fail_next(1, status=500)
        token, secret = await w.tokens.create(ALICE, name="hooked")
        first, second = await rx.wait_for(2, within=10.0)
        await until(
            lambda: _sample(n, "patgate_notifications_sent_total", "webhook") >= 1,
            "the worker's counters",
            seconds=10.0,
        )
        attempts = await n.outbox.attempts(endpoint.id)
    assert first.header("webhook-id") == second.header("webhook-id")
    assert second.verifies(endpoint.secret)
    body = second.json()
    assert body["type"] == "token.created"
    assert body["data"]["token"]["id"] == token.id
    assert secret not in second.body.decode()
    assert [a["ok"] for a in attempts] == [True, False]  # newest first


async def test_dead_letters_are_listed_and_retried(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    config = _settings(settings, smtp, notify_max_attempts=2)
    async with worker(config, store) as n, receiver() as rx:
        endpoint = await n.endpoints.create(w.admin, "acme", {"url": rx.url})
        rx.fail_next(2, status=503)
        await w.tokens.create(ALICE, name="doomed")
        await rx.wait_for(2, within=10.0)
        await until(
            lambda: _sample(n, "patgate_notifications_dead_lettered_total", "webhook"),
            "the worker's counters",
            seconds=10.0,
        )
        (dead,) = await n.outbox.dead_letters("acme")
        assert (dead.channel, dead.attempts, dead.target) == ("webhook", 2, endpoint.id)
        assert dead.last_error is not None
        assert "503" in dead.last_error
        assert await n.outbox.dead_letters("other") == []
        revived = await n.outbox.revive(dead.key, time.time())
        assert revived is not None
        third = (await rx.wait_for(3, within=10.0))[2]
        assert third.header("webhook-id") == dead.key
        await until(
            lambda: _sample(n, "patgate_notifications_sent_total", "webhook") >= 1,
            "the worker's counters",
            seconds=10.0,
        )
        assert await n.outbox.dead_letters("acme") == []


async def test_two_workers_deliver_each_notification_once(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    config = _settings(settings, smtp)
    await w.directory.put_org(w.system, "acme", {"token_limit": None})
    async with worker(config, store) as one, worker(config, store) as two:
        for i in range(20):
            await w.tokens.create(w.admin, name=f"n{i}", owner=Owner("user", "root"))
        mails = await wait_for_messages(smtp, 20, timeout=15.0)
        await asyncio.sleep(0.5)
        sent = [_sample(x, "patgate_notifications_sent_total", "mail") for x in (one, two)]
    ids = Counter(m.header("Message-ID") for m in smtp.messages)
    assert len(mails) >= 20
    assert len(ids) == 20
    assert max(ids.values()) == 1
    assert sum(sent) == 20


async def test_a_deleted_endpoint_drops_its_pending_jobs(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    n = Notifications.build(_settings(settings, smtp), store)
    endpoint = await n.endpoints.create(w.admin, "acme", {"url": "http://127.0.0.1:9/hook"})
    job = Job("w-x", "webhook", "acme", endpoint.id, {"body": "{}"}, "token.created", 0.0)
    assert await n.outbox.enqueue(job, 0.0)
    assert not await n.outbox.enqueue(job, 0.0)  # queued already: once
    await n.endpoints.delete(w.admin, "acme", endpoint.id)
    assert await n.notifier.deliver_once() == 1
    assert await n.outbox.queued() == (0, None)
    assert not await n.outbox.enqueue(job, 0.0)  # done: never again
    await n.aclose()


# -- helpers ---------------------------------------------------------------------------


def _names(mails: list[Any]) -> list[str]:
    out = []
    for m in mails:
        found = re.search(r"\b(t\d+)\b", m.text or "")
        assert found, m.text
        out.append(found.group(1))
    return out


def _sample(n: Notifications, name: str, channel: str) -> float:
    registry = n.notifier.metrics.registry
    return float(registry.get_sample_value(name, {"channel": channel}) or 0.0)


async def test_a_job_the_worker_cannot_handle_becomes_a_dead_letter(
    w: World, store: TokenStore, settings: Settings, smtp: SmtpServer
) -> None:
    n = Notifications.build(_settings(settings, smtp), store)
    broken = Job("m-broken", "mail", "acme", ["a@acme.io"], {"text": "no subject"}, "x", 0.0)
    assert await n.outbox.enqueue(broken, time.time())
    assert await n.notifier.deliver_once() == 1
    (dead,) = await n.outbox.dead_letters("acme")
    assert (dead.key, dead.last_error) == ("m-broken", "internal error: KeyError")
    assert smtp.messages == []
    await n.aclose()
