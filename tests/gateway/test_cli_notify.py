"""Issue 14 in the CLI: ``patgate webhooks …`` (create prints the signing secret once,
list, rotate, test, attempts, delete) and ``patgate notifications dead|retry`` —
against the session's Valkey server."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from patgate.gateway.notify.outbox import Job, Outbox
from tests.gateway.test_cli import Cli

URL = "https://hooks.example.com/patgate"


def test_webhook_endpoints_from_the_cli(acme_cli: Cli) -> None:
    created = acme_cli.json(
        "webhooks", "create", "--url", URL, "--event", "token.created", "--event", "token.revoked"
    )
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["token.created", "token.revoked"]
    hook = created["id"]
    out, _ = acme_cli.run("webhooks", "list")
    assert hook in out
    assert URL in out
    assert created["secret"] not in out  # shown once, at create
    rotated = acme_cli.json("webhooks", "rotate", hook)
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    queued = acme_cli.json("webhooks", "test", hook)
    assert queued["status"] == "queued"
    assert acme_cli.json("webhooks", "attempts", hook) == []
    line = acme_cli.fails("webhooks", "create", "--url", "http://127.0.0.1/hook")
    assert "url" in line.lower()
    acme_cli.run("webhooks", "delete", hook)
    assert "not found" in acme_cli.fails("webhooks", "delete", hook)
    assert acme_cli.json("webhooks", "list") == []


def test_dead_letters_from_the_cli(acme_cli: Cli) -> None:
    async def bury() -> None:
        client = aioredis.from_url(acme_cli.url)
        try:
            outbox = Outbox(client, acme_cli.namespace)
            job = Job("w-cli", "webhook", "acme", "wh_x", {"body": "{}"}, "token.created", 1.0)
            job.attempts, job.last_error = 8, "HTTP 503"
            await outbox.bury(job, 2.0)
        finally:
            await client.aclose()

    assert acme_cli.json("notifications", "dead") == []
    asyncio.run(bury())
    (dead,) = acme_cli.json("notifications", "dead")
    assert (dead["id"], dead["attempts"], dead["last_error"]) == ("w-cli", 8, "HTTP 503")
    out, _ = acme_cli.run("notifications", "dead")
    assert "w-cli" in out
    assert "HTTP 503" in out
    revived = acme_cli.json("notifications", "retry", "w-cli")
    assert revived["attempts"] == 0
    assert acme_cli.json("notifications", "dead") == []
    assert "not found" in acme_cli.fails("notifications", "retry", "w-cli")
