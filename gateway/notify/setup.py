"""Notifications from :class:`~patgate.gateway.settings.Settings`: the one place the
worker, the outbox and the endpoints are put together (for ``patgate serve``,
``patgate notify``, the management API and the CLI alike)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from patgate.gateway.settings import Settings
from patgate.middleware.errors import NotFound
from patgate.middleware.store import TokenStore

from .endpoints import Endpoint, Endpoints, test_job
from .fanout import Fanout
from .mail import MailConfig, MailSender
from .outbox import Job, Outbox
from .reminders import Reminders
from .webhooks import WebhookSender
from .worker import Notifier, NotifyConfig, NotifyMetrics

__all__ = ["Notifications", "mail_config", "running"]

log = logging.getLogger("patgate.notify")


def mail_config(settings: Settings) -> MailConfig | None:
    """The SMTP settings, or None when ``PATGATE_SMTP_HOST`` is unset (no mail)."""
    if not settings.smtp_host:
        return None
    return MailConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,  # type: ignore[arg-type]  # checked by Settings
        username=settings.smtp_username,
        password=settings.smtp_password,
        sender=settings.smtp_from,
        timeout=settings.smtp_timeout,
        templates=settings.mail_templates,
        ca_file=settings.smtp_ca_file,
    )


@dataclass
class Notifications:
    """The outbox and the endpoints (what the API and CLI manage), and the worker."""

    outbox: Outbox
    endpoints: Endpoints
    notifier: Notifier

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: TokenStore,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        consumer: str | None = None,
    ) -> Notifications:
        client: Any = store.client
        outbox = Outbox(client, store.keyspace.namespace)
        endpoints = Endpoints(
            client,
            store.keyspace.namespace,
            allow_private=settings.webhook_allow_private,
            clock=clock,
        )
        mail = mail_config(settings)
        fanout = Fanout(store, endpoints, mail)
        notifier = Notifier(
            store,
            outbox,
            endpoints,
            fanout,
            mail=None if mail is None else MailSender(mail),
            webhooks=WebhookSender(
                timeout=settings.webhook_timeout,
                connect_timeout=min(settings.webhook_timeout, 2.0),
            ),
            metrics=NotifyMetrics(registry or CollectorRegistry()),
            config=NotifyConfig(
                max_attempts=settings.notify_max_attempts,
                backoff=settings.notify_backoff,
                lease=settings.notify_lease,
                claim_idle=settings.notify_claim_idle,
            ),
            clock=clock,
            consumer=consumer,
            reminders=Reminders(store, outbox, fanout, settings.reminder_leads),
        )
        return cls(outbox, endpoints, notifier)

    async def send_test(self, endpoint: Endpoint, now: float) -> Job:
        """Queue a ``webhook.test`` delivery to ``endpoint`` (the API, the CLI and the
        console's "test"); its outcome shows in the endpoint's attempts."""
        job = test_job(endpoint, now)
        await self.outbox.enqueue(job, now)
        return job

    async def retry_dead(self, org_id: str, key: str, now: float) -> Job:
        """A dead letter of ``org_id`` queued again; another org's is not there for the
        caller (404), exactly like one that does not exist."""
        dead = await self.outbox.dead_letter(key)
        job = None if dead is None or dead.org_id != org_id else await self.outbox.revive(key, now)
        if job is None:
            raise NotFound(f"dead letter {key} not found")
        return job

    async def aclose(self) -> None:
        await self.notifier.webhooks.aclose()


@contextlib.asynccontextmanager
async def running(notifications: Notifications) -> AsyncIterator[asyncio.Event]:
    """The worker as a background task for the duration of the block; setting the
    yielded event (or leaving the block) stops it after its current step."""
    stop = asyncio.Event()
    task = asyncio.create_task(notifications.notifier.run(stop), name="patgate-notify")
    try:
        yield stop
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 15.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:  # the worker's own failure: logged, never the server's
            log.exception("notification worker failed")
        await notifications.aclose()
