"""``patgate tokens list --all``, the CLI's org listing (issue 13): active tokens unless
``--status`` says (``all`` for every one), with type, owner, role, created and last used
columns; an owner's own listing still shows every status. Against the session's Valkey."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import redis.asyncio as aioredis

from patgate.gateway.cli_context import human_time
from patgate.middleware.keys import Keyspace, partition_of_org
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import LastUsed
from patgate.middleware.store import TokenStore
from tests.gateway.test_cli import Cli


def _table(out: str) -> list[dict[str, str]]:
    """The rows of a CLI table, by header (columns from the dashes under the header)."""
    head, dashes, *rows = out.splitlines()
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    names = [head[a:b].strip() for a, b in spans]
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)} for row in rows]


def _names(cli: Cli, *argv: str) -> set[str]:
    return {t["name"] for t in cli.json("tokens", "list", *argv)["items"]}


def _touch(url: str, namespace: str, token_id: str, used: LastUsed) -> None:
    """Record a use the way the data plane does: a real recorder, flushed."""

    async def run() -> None:
        client = aioredis.from_url(url)
        try:
            recorder = LastUsedRecorder(TokenStore(client, Keyspace(namespace)), Metrics())
            recorder.record(partition_of_org("acme"), token_id, used)
            assert await recorder.flush() == 1
        finally:
            await client.aclose()

    asyncio.run(run())


def test_the_org_listing_defaults_to_active(acme_cli: Cli) -> None:
    cli = acme_cli
    cli.json("tokens", "create", "--user", "alice", "--name", "ci", "--scope", "threads:read")
    cli.json("tokens", "create", "--org", "acme", "--name", "sync")
    old = cli.json("tokens", "create", "--user", "alice", "--name", "old")
    cli.run("tokens", "revoke", old["id"])
    assert _names(cli, "--org", "acme", "--all") == {"bootstrap", "ci", "sync"}
    assert _names(cli) == {"bootstrap", "ci", "sync"}  # the default org's, likewise
    assert _names(cli, "--org", "acme", "--all", "--status", "active") == {
        "bootstrap",
        "ci",
        "sync",
    }
    assert _names(cli, "--org", "acme", "--all", "--status", "revoked") == {"old"}
    assert _names(cli, "--all", "--status", "all") == {"bootstrap", "ci", "sync", "old"}
    # an owner's own listing shows every status unless asked
    assert _names(cli, "--user", "alice") == {"ci", "old"}
    assert _names(cli, "--user", "alice", "--status", "active") == {"ci"}
    assert _names(cli, "--user", "alice", "--status", "all") == {"ci", "old"}
    with pytest.raises(SystemExit) as exit_:
        cli.run("tokens", "list", "--all", "--status", "dead")
    assert exit_.value.code == 2
    assert "invalid choice: 'dead'" in cli.capsys.readouterr().err


def test_the_org_listing_shows_type_owner_role_created_and_last_used(
    acme_cli: Cli, valkey_url: str, namespace: str
) -> None:
    cli = acme_cli
    ci = cli.json("tokens", "create", "--user", "alice", "--name", "ci", "--type", "oauth")
    cli.json("tokens", "create", "--org", "acme", "--name", "sync")
    at = time.time() - 3 * 3600
    _touch(valkey_url, namespace, ci["id"], LastUsed(at, "GET", "/v1/me", "203.0.113.9", None))
    out, _ = cli.run("tokens", "list", "--org", "acme", "--all")
    rows = {r["NAME"]: r for r in _table(out)}
    assert set(rows) == {"bootstrap", "ci", "sync"}
    assert list(rows["ci"]) == [
        "ID",
        "NAME",
        "PREFIX",
        "TYPE",
        "OWNER",
        "ROLE",
        "STATUS",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]
    assert (rows["ci"]["TYPE"], rows["ci"]["OWNER"], rows["ci"]["ROLE"]) == (
        "oauth",
        "user:alice",
        "-",
    )
    assert (rows["sync"]["TYPE"], rows["sync"]["OWNER"]) == ("service", "org:acme")
    assert rows["bootstrap"]["OWNER"] == "user:admin"
    assert rows["ci"]["CREATED"] == human_time(ci["created_at"], time.time())
    assert rows["ci"]["CREATED"].endswith("(just now)")
    assert rows["ci"]["LAST USED"] == human_time(at, time.time())
    assert rows["ci"]["LAST USED"].endswith("(3 hours ago)")
    assert rows["sync"]["LAST USED"] == "never"
    assert {r["STATUS"] for r in rows.values()} == {"active"}
