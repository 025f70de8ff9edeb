"""``patgate notify``, ``patgate webhooks …`` and ``patgate notifications …`` (issue 14):
the delivery worker, an org's webhook endpoints, and the dead letters."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from .cli_context import Context
from .notify.setup import Notifications, running
from .notify.webhooks import EVENT_TYPES
from .settings import parse_hostport

__all__ = ["register"]


def _org(ctx: Context, a: argparse.Namespace) -> str:
    return str(a.org or ctx.settings.default_org)


async def _notify(ctx: Context, a: argparse.Namespace) -> int:
    """Run the worker until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    if a.metrics:
        host, port = parse_hostport(a.metrics, "--metrics")
        start_http_server(port, host, registry=registry)
    notifications = Notifications.build(ctx.settings, ctx.store, registry)
    loop = asyncio.get_running_loop()
    async with running(notifications) as stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ctx.emit(
            {"consumer": notifications.notifier.consumer},
            f"patgate notify: delivering as {notifications.notifier.consumer}",
        )
        await stop.wait()
    return 0


def _notifications(ctx: Context) -> Notifications:
    return Notifications.build(ctx.settings, ctx.store)


async def _webhook_create(ctx: Context, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": a.url, "event_types": a.event or ["*"]}
    if a.description is not None:
        body["description"] = a.description
    endpoint = await _notifications(ctx).endpoints.create(ctx.actor, _org(ctx, a), body)
    ctx.emit(
        {**endpoint.to_json(), "secret": endpoint.secret},
        f"{endpoint.secret}\nendpoint {endpoint.id} for {endpoint.url}: "
        f"{', '.join(endpoint.event_types)}\n"
        "Copy the signing secret now: it is not shown again (rotate to get a new one).",
    )
    return 0


async def _webhook_list(ctx: Context, a: argparse.Namespace) -> int:
    endpoints = await _notifications(ctx).endpoints.list(ctx.actor, _org(ctx, a))
    rows = [[e.id, e.url, " ".join(e.event_types), ctx.when(e.created_at)] for e in endpoints]
    ctx.table([e.to_json() for e in endpoints], rows, ["ID", "URL", "EVENTS", "CREATED"])
    return 0


async def _webhook_delete(ctx: Context, a: argparse.Namespace) -> int:
    await _notifications(ctx).endpoints.delete(ctx.actor, _org(ctx, a), a.id)
    ctx.emit({"deleted": a.id}, f"deleted {a.id}")
    return 0


async def _webhook_rotate(ctx: Context, a: argparse.Namespace) -> int:
    endpoint = await _notifications(ctx).endpoints.rotate(ctx.actor, _org(ctx, a), a.id)
    ctx.emit(
        {**endpoint.to_json(), "secret": endpoint.secret},
        f"{endpoint.secret}\nnew signing secret for {endpoint.id}; shown once",
    )
    return 0


async def _webhook_test(ctx: Context, a: argparse.Namespace) -> int:
    n = _notifications(ctx)
    endpoint = await n.endpoints.get(ctx.actor, _org(ctx, a), a.id)
    job = await n.send_test(endpoint, ctx.tokens.clock())
    ctx.emit({"id": job.key, "status": "queued"}, f"queued {job.key} (a worker delivers it)")
    return 0


async def _webhook_attempts(ctx: Context, a: argparse.Namespace) -> int:
    n = _notifications(ctx)
    endpoint = await n.endpoints.get(ctx.actor, _org(ctx, a), a.id)
    items = await n.outbox.attempts(endpoint.id)
    rows = [
        [ctx.when(i["at"]), "ok" if i["ok"] else "failed", i["status"] or "-", i["error"] or ""]
        for i in items
    ]
    ctx.table(items, rows, ["AT", "OUTCOME", "STATUS", "ERROR"])
    return 0


async def _dead(ctx: Context, a: argparse.Namespace) -> int:
    jobs = await _notifications(ctx).outbox.dead_letters(None if a.all else _org(ctx, a))
    rows = [
        [j.key, j.channel, j.event_type, j.attempts, ctx.when(j.dead_at), j.last_error or ""]
        for j in jobs
    ]
    ctx.table(
        [j.to_json() for j in jobs], rows, ["ID", "CHANNEL", "EVENT", "ATTEMPTS", "DIED", "ERROR"]
    )
    return 0


async def _retry(ctx: Context, a: argparse.Namespace) -> int:
    from patgate.middleware.errors import NotFound

    job = await _notifications(ctx).outbox.revive(a.id, ctx.tokens.clock())
    if job is None:
        raise NotFound(f"dead letter {a.id} not found")
    ctx.emit(job.to_json(), f"queued {a.id} again")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "notify",
        help="run the notification worker (mail, webhooks) until SIGTERM; safe as replicas",
    )
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve its Prometheus metrics here")
    p.set_defaults(action=_notify)

    hooks = sub.add_parser("webhooks", help="an organization's webhook endpoints")
    h = hooks.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    p = h.add_parser("create", help="add an endpoint; prints its signing secret once")
    p.add_argument("--url", required=True)
    p.add_argument(
        "--event",
        action="append",
        choices=["*", *EVENT_TYPES],
        help="repeatable; default every event type",
    )
    p.add_argument("--description")
    p.add_argument("--org", help="organization (PATGATE_DEFAULT_ORG)")
    p.set_defaults(action=_webhook_create)
    for name, func, help_ in (
        ("delete", _webhook_delete, "remove an endpoint"),
        ("rotate", _webhook_rotate, "a new signing secret (printed once)"),
        ("test", _webhook_test, "queue a webhook.test delivery"),
        ("attempts", _webhook_attempts, "the endpoint's last delivery attempts"),
    ):
        p = h.add_parser(name, help=help_)
        p.add_argument("id")
        p.add_argument("--org", help="organization (PATGATE_DEFAULT_ORG)")
        p.set_defaults(action=func)
    p = h.add_parser("list", help="the organization's endpoints")
    p.add_argument("--org", help="organization (PATGATE_DEFAULT_ORG)")
    p.set_defaults(action=_webhook_list)

    notes = sub.add_parser("notifications", help="notifications given up on: list and retry")
    n = notes.add_subparsers(dest="notifications_command", metavar="ACTION", required=True)
    p = n.add_parser("dead", help="the dead letters, newest first")
    p.add_argument("--org", help="organization (PATGATE_DEFAULT_ORG)")
    p.add_argument("--all", action="store_true", help="every organization's")
    p.set_defaults(action=_dead)
    p = n.add_parser("retry", help="queue a dead letter again, its attempts reset")
    p.add_argument("id")
    p.set_defaults(action=_retry)
