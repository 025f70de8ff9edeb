"""Issue 13 in the CLI: ``tokens register`` (a token issued elsewhere: its value on
standard input, or ``--sha256``), the org listing's issuer, and the limits of
``orgs put`` (``--token-limit``/``--owner-token-limit``, ``off``) — against the session's
Valkey server."""

from __future__ import annotations

import hashlib
import io
import secrets

import pytest

from tests.gateway.test_cli import Cli


def test_register_reads_the_value_from_stdin(
    acme_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "gho_" + secrets.token_urlsafe(30)
    monkeypatch.setattr("sys.stdin", io.StringIO(value + "\n"))
    shown = acme_cli.json(
        "tokens", "register", "--user", "alice", "--name", "gh", "--issuer", "github",
        "--scope", "threads:read",
    )  # fmt: skip
    assert (shown["type"], shown["issuer"], shown["external"]) == ("oauth", "github", True)
    assert shown["prefix"] == value[:8]
    out, err = acme_cli.run("tokens", "show", shown["id"])
    assert "github" in out
    assert value not in out + err
    listed = acme_cli.json("tokens", "list", "--org", "acme", "--all", "--type", "oauth")
    assert [t["id"] for t in listed["items"]] == [shown["id"]]


def test_register_by_sha256_and_its_errors(acme_cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(secrets.token_bytes(24).hex().encode()).hexdigest()
    shown = acme_cli.json(
        "tokens", "register", "--org", "acme", "--name", "svc", "--sha256", digest,
        "--scope", "threads:read",
    )  # fmt: skip
    assert (shown["type"], shown["owner"]["type"]) == ("service", "org")
    line = acme_cli.fails(
        "tokens", "register", "--org", "acme", "--name", "svc2", "--sha256", digest,
        "--scope", "threads:read",
    )  # fmt: skip
    assert "already registered" in line
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    line = acme_cli.fails("tokens", "register", "--user", "alice", "--name", "empty")
    assert "standard input" in line
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert "value:" in acme_cli.fails("tokens", "register", "--user", "alice", "--name", "s")


def test_org_limits_from_the_cli(acme_cli: Cli) -> None:
    org = acme_cli.json("orgs", "put", "acme", "--token-limit", "off", "--owner-token-limit", "2")
    assert (org["token_limit"], org["owner_token_limit"]) == (None, 2)
    for n in range(2):
        acme_cli.json("tokens", "create", "--user", "alice", "--name", f"t{n}")
    line = acme_cli.fails("tokens", "create", "--user", "alice", "--name", "t3")
    assert "limit of 2 active tokens per owner" in line
    org = acme_cli.json("orgs", "put", "acme", "--token-limit", "5", "--owner-token-limit", "off")
    assert (org["token_limit"], org["owner_token_limit"]) == (5, None)
    with pytest.raises(SystemExit) as caught:  # argparse: usage and one error line
        acme_cli.run("orgs", "put", "acme", "--token-limit", "zero")
    assert caught.value.code == 2
