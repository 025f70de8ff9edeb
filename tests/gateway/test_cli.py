"""The ``patgate`` CLI: management commands against the session's Valkey server.

Most tests call ``gateway.cli.main(argv)`` in-process; one runs ``python -m gateway.cli``
as a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from patgate.gateway.cli import main
from patgate.gateway.cli_context import human_time
from patgate.gateway.settings import ENV_VARS, FILE_VARS
from patgate.middleware.keys import Keyspace
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url, self.namespace = url, namespace
        self.base = ["--redis-url", url, "--namespace", namespace]
        self.capsys = capsys

    def run(self, *argv: str, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        got = main([*self.base, *argv])
        out, err = self.capsys.readouterr()
        assert got == code, (argv, out, err)
        return out, err

    def json(self, *argv: str) -> Any:
        out, _ = self.run("--json", *argv)
        return json.loads(out)

    def fails(self, *argv: str, code: int = 1) -> str:
        out, err = self.run(*argv, code=code)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("patgate: error: ")
        return lines[0]


def clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PATGATE_ setting of the caller's; ``acme`` as the CLI's default org."""
    for var in [*ENV_VARS, *FILE_VARS]:
        monkeypatch.delenv(var, raising=False)
    # The org the CLI means when none is named (user ids are scoped per org).
    monkeypatch.setenv("PATGATE_DEFAULT_ORG", "acme")


def boot_acme(cli: Cli) -> str:
    """Bootstrap org ``acme`` (its admin's secret is returned) with member alice."""
    out, _ = cli.run("bootstrap", "--org", "acme")
    # What members may grant (issue 9: nothing until the org says so).
    cli.run("orgs", "put", "acme", "--member-scope", "threads:*", "--member-scope", "*:read")
    cli.run("users", "put", "alice", "--org", "acme", "--email", "alice@acme.io", "--name", "Alice")
    return out.strip()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings(monkeypatch)


@pytest.fixture
def cli(
    valkey_url: str, namespace: str, capsys: pytest.CaptureFixture[str], clean_env: None
) -> Cli:
    return Cli(valkey_url, namespace, capsys)


@pytest.fixture
def booted(cli: Cli) -> str:
    return boot_acme(cli)


def test_bootstrap_prints_the_secret_once(cli: Cli) -> None:
    out, err = cli.run("bootstrap", "--org", "acme", "--email", "root@acme.io")
    lines = out.splitlines()
    assert len(lines) == 1
    secret = lines[0]
    assert secret.startswith("pat_")
    assert len(secret) == 40
    assert secret not in err
    assert "not be shown again" in err
    line = cli.fails("bootstrap", "--org", "acme")
    assert "already bootstrapped" in line
    assert secret not in line
    # the admin exists with every management scope
    listed = cli.json("tokens", "list", "--user", "admin")
    assert [t["name"] for t in listed["items"]] == ["bootstrap"]
    assert listed["items"][0]["scopes"] == sorted(
        ["tokens:admin", "tokens:read:own", "tokens:write:own", "users:admin"]
    )
    assert secret not in json.dumps(listed)
    assert cli.json("users", "show", "admin")["role"] == "admin"


def test_token_lifecycle(cli: Cli, booted: str) -> None:
    created = cli.json(
        "tokens",
        "create",
        "--user",
        "alice",
        "--name",
        "ci",
        "--scope",
        "threads:read",
        "--scope",
        "threads:write",
        "--workspace",
        "w1",
        "--expiration",
        "7d",
        "--description",
        "d",
    )
    secret, tid = created["token"], created["id"]
    assert created["scopes"] == ["threads:read", "threads:write"]
    assert created["workspaces"] == ["w1"]

    # human output: the secret alone on stdout, details on stderr
    out, err = cli.run(
        "tokens",
        "create",
        "--user",
        "alice",
        "--name",
        "other",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    )
    assert len(out.splitlines()) == 1
    assert out.startswith("pat_")
    assert "expires: 2099-01-01 00:00" in err

    out, _ = cli.run("tokens", "list", "--user", "alice")
    header = out.splitlines()[0].split()
    assert header[:3] == ["ID", "NAME", "PREFIX"]
    assert tid in out
    assert created["prefix"] in out
    assert secret not in out

    shown = cli.json("tokens", "show", tid)
    assert "token" not in shown
    assert shown["status"] == "active"
    out, _ = cli.run("tokens", "show", tid)
    assert "threads:read threads:write" in out
    assert secret not in out

    edited = cli.json(
        "tokens", "edit", tid, "--name", "ci-2", "--description", "new", "--workspace", "*"
    )
    assert (edited["name"], edited["description"], edited["workspaces"]) == ("ci-2", "new", ["*"])

    assert cli.json("tokens", "scopes", "add", tid, "x:read")["scopes"] == [
        "threads:read",
        "threads:write",
        "x:read",
    ]
    out, _ = cli.run("tokens", "scopes", "remove", tid, "threads:write")
    assert out.strip() == "threads:read x:read"
    assert cli.fails("tokens", "scopes", "remove", tid, "threads:write")
    assert cli.json("tokens", "scopes", "clear", tid)["scopes"] == []

    out, _ = cli.run("tokens", "revoke", tid)
    assert out.strip() == f"revoked {tid} (ci-2)"
    assert cli.json("tokens", "revoke", tid)["status"] == "revoked"
    assert [
        t["id"]
        for t in cli.json("tokens", "list", "--user", "alice", "--status", "revoked")["items"]
    ] == [tid]

    regen = cli.json("tokens", "regenerate", tid, "--expiration", "30d")
    assert regen["token"] != secret
    assert regen["status"] == "active"
    assert regen["id"] == tid
    out, _ = cli.run("tokens", "regenerate", tid)
    assert len(out.splitlines()) == 1
    assert out.strip() not in (secret, regen["token"])

    out, _ = cli.run("tokens", "delete", tid)
    assert out.strip() == f"deleted {tid}"
    assert "not found" in cli.fails("tokens", "show", tid)
    assert cli.json("tokens", "list", "--user", "alice", "--q", "ci")["items"] == []


def test_org_tokens_and_listings(cli: Cli, booted: str) -> None:
    svc = cli.json("tokens", "create", "--org", "acme", "--name", "sync")
    assert (svc["owner"], svc["type"]) == ({"type": "org", "id": "acme"}, "service")
    cli.json("tokens", "create", "--user", "alice", "--name", "mine", "--type", "oauth")
    org_only = cli.json("tokens", "list", "--org", "acme")
    assert [t["name"] for t in org_only["items"]] == ["sync"]
    everything = cli.json("tokens", "list", "--org", "acme", "--all")
    assert {t["name"] for t in everything["items"]} == {"sync", "mine", "bootstrap"}
    oauth = cli.json("tokens", "list", "--org", "acme", "--all", "--type", "oauth")
    assert [t["name"] for t in oauth["items"]] == ["mine"]
    by_email = cli.json("tokens", "list", "--org", "acme", "--all", "--q", "alice@acme")
    assert [t["name"] for t in by_email["items"]] == ["mine"]
    page = cli.json("tokens", "list", "--org", "acme", "--all", "--limit", "2")
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = cli.json("tokens", "list", "--org", "acme", "--all", "--cursor", page["next_cursor"])
    assert len(rest["items"]) == 1
    _, err = cli.run("tokens", "list", "--org", "acme", "--all", "--limit", "1")
    assert "more: --cursor " in err
    _, err = cli.run("tokens", "list", "--org", "acme", "--q", "nothing-matches")
    assert "(none)" in err


def test_users_and_orgs(cli: Cli, booted: str) -> None:
    user = cli.json(
        "users",
        "put",
        "bob",
        "--org",
        "acme",
        "--email",
        "bob@acme.io",
        "--role",
        "admin",
        "--no-can-manage-tokens",
    )
    assert (user["role"], user["can_manage_tokens"], user["enabled"]) == ("admin", False, True)
    assert (
        cli.json("users", "put", "bob", "--can-manage-tokens", "--no-enabled")["enabled"] is False
    )
    assert {u["id"] for u in cli.json("users", "list", "--org", "acme")["items"]} == {
        "admin",
        "alice",
        "bob",
    }
    out, _ = cli.run("users", "show", "bob")
    assert "bob@acme.io" in out
    cli.json("tokens", "create", "--user", "alice", "--name", "a1")
    cli.json("tokens", "create", "--org", "acme", "--name", "o1")
    out, _ = cli.run("users", "remove", "alice")
    assert out.strip() == "removed alice; revoked 1 personal token(s)"
    assert "not found" in cli.fails("users", "show", "alice")
    org = cli.json(
        "orgs", "put", "acme", "--token-limit", "3", "--max-lifetime", "90d", "--no-allow-never"
    )
    assert (org["token_limit"], org["max_lifetime"], org["allow_never"]) == (3, 90 * 86400.0, False)
    assert cli.json("orgs", "put", "acme", "--max-lifetime", "none")["max_lifetime"] is None
    assert cli.json("orgs", "put", "acme", "--max-lifetime", "3600")["max_lifetime"] == 3600
    assert cli.json("orgs", "show", "acme")["token_limit"] == 3
    events = cli.json("events", "--org", "acme", "--type", "user.removed")["items"]
    assert [e["user_id"] for e in events] == ["alice"]
    assert events[0]["actor"]["id"].startswith("cli:")
    out, _ = cli.run("events", "--org", "acme", "--limit", "3")
    assert out.splitlines()[0].split()[:3] == ["TIME", "TYPE", "ACTOR"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["tokens", "show", "tok_nope"], "not found"),
        (["tokens", "create", "--user", "alice", "--name", "x", "--scope", "bad"], "scope"),
        (["tokens", "create", "--user", "ghost", "--name", "x"], "not found"),
        (["tokens", "create", "--name", "x"], "give --user ID"),
        (
            ["tokens", "create", "--user", "alice", "--name", "x", "--scope", "tokens:admin"],
            "not grantable",
        ),
        (["tokens", "create", "--user", "alice", "--org", "other", "--name", "x"], "not found"),
        (
            [
                "tokens",
                "create",
                "--user",
                "alice",
                "--name",
                "bootstrap2",
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            "future",
        ),
        (["tokens", "scopes", "clear", "tok_x", "a:read"], "takes no scopes"),
        (["tokens", "scopes", "remove", "tok_x"], "exactly one scope"),
        (["tokens", "edit", "tok_nope", "--name", "x"], "not found"),
        (["users", "put", "carol", "--org", "acme"], "email"),
        (["users", "remove", "ghost"], "not found"),
        (["orgs", "put", "acme", "--max-lifetime", "2w"], "max_lifetime"),
        (["orgs", "show", "nowhere"], "not found"),
        (["events", "--cursor", "nope"], "cursor"),
    ],
)
def test_refused_operations_are_one_line_exit_1(
    cli: Cli, booted: str, argv: list[str], needle: str
) -> None:
    assert needle in cli.fails(*argv)


def test_name_conflict_and_json_errors(cli: Cli, booted: str) -> None:
    cli.json("tokens", "create", "--user", "alice", "--name", "dup")
    assert "already exists" in cli.fails("tokens", "create", "--user", "alice", "--name", "DUP")
    out, err = cli.run("--json", "tokens", "create", "--user", "alice", "--name", "dup", code=1)
    assert json.loads(out) == {"error": "name_taken", "detail": err.split("error: ", 1)[1].strip()}
    assert len(err.strip().splitlines()) == 1


def test_configuration_and_store_errors(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATGATE_CACHE_SIZE", "lots")
    assert "PATGATE_CACHE_SIZE" in cli.fails("tokens", "list", "--user", "x", code=2)
    monkeypatch.delenv("PATGATE_CACHE_SIZE")
    monkeypatch.setenv("PATGATE_TOKEN_PREFIX", "Bad_Prefix")
    assert "PATGATE_TOKEN_PREFIX" in cli.fails("tokens", "list", "--user", "x", code=2)
    monkeypatch.delenv("PATGATE_TOKEN_PREFIX")
    # a well-formed id (``tok_<3 hex partition>…``): "tok_x" names no partition, so it is
    # not found without asking the store at all
    well_formed = "tok_" + "0" * 16
    assert main(["--redis-url", "redis://127.0.0.1:1/0", "tokens", "show", well_formed]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "store" in err
    assert main(["--redis-url", "http://localhost/", "tokens", "show", "tok_x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "PATGATE_REDIS_URL" in err


def test_usage_errors_exit_2(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tokens", "frobnicate"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["tokens", "create", "--user", "a"])  # --name is required
    assert exc.value.code == 2


def test_real_subprocess(valkey_url: str, namespace: str, clean_env: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    base = [
        sys.executable,
        "-m",
        "patgate.gateway.cli",
        "--redis-url",
        valkey_url,
        "--namespace",
        namespace,
    ]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    boot = run("bootstrap", "--org", "acme")
    assert boot.returncode == 0, boot.stderr
    secret = boot.stdout.strip()
    assert secret.startswith("pat_")
    listed = run("--json", "tokens", "list", "--org", "acme", "--all")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["items"]
    assert [t["name"] for t in items] == ["bootstrap"]
    assert secret not in listed.stdout
    again = run("bootstrap", "--org", "acme")
    assert again.returncode == 1
    assert again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1


def test_prefix_and_pepper_come_from_the_environment(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, valkey_url: str, namespace: str
) -> None:
    monkeypatch.setenv("PATGATE_TOKEN_PREFIX", "acme")
    monkeypatch.setenv("PATGATE_PEPPER", "server-side-pepper")
    out, _ = cli.run("bootstrap", "--org", "acme")
    secret = out.strip()
    assert TokenFormat("acme").is_well_formed(secret)

    async def stored(fmt: TokenFormat) -> bool:
        client = aioredis.from_url(valkey_url)
        try:
            store = TokenStore(client, Keyspace(namespace))
            return await store.lookup(fmt.digest(secret), fmt.partition(secret)) is not None
        finally:
            await client.aclose()

    assert asyncio.run(stored(TokenFormat("acme", b"server-side-pepper")))
    assert not asyncio.run(stored(TokenFormat("acme")))


# -- issue 10: delete-all, readable times, no second store ---------------------------------


def test_delete_all_needs_yes(cli: Cli, booted: str) -> None:
    for name in ("a1", "a2", "a3"):
        cli.json("tokens", "create", "--user", "alice", "--name", name)
    cli.json("tokens", "create", "--org", "acme", "--name", "o1")
    line = cli.fails("tokens", "delete-all", "--user", "alice")
    assert "every token of user alice of acme" in line
    assert "--yes" in line
    assert len(cli.json("tokens", "list", "--user", "alice")["items"]) == 3  # nothing deleted

    out, _ = cli.run("tokens", "delete-all", "--user", "alice", "--yes")
    assert out.strip() == "deleted 3 token(s) of user alice of acme"
    assert cli.json("tokens", "list", "--user", "alice")["items"] == []
    # The org's own tokens and the admin's are not the user's: untouched.
    assert [t["name"] for t in cli.json("tokens", "list", "--org", "acme")["items"]] == ["o1"]
    (own,) = cli.json("tokens", "list", "--org", "acme")["items"]
    assert cli.json("tokens", "delete-all", "--org", "acme", "--yes") == {"deleted": [own["id"]]}
    assert cli.json("tokens", "list", "--org", "acme")["items"] == []
    assert cli.json("tokens", "delete-all", "--user", "alice", "--yes") == {"deleted": []}
    deleted = cli.json("events", "--org", "acme", "--type", "token.deleted")["items"]
    assert len(deleted) == 4  # each delete audited


_WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"


def test_tables_show_readable_times(cli: Cli, booted: str) -> None:
    cli.json("tokens", "create", "--user", "alice", "--name", "week", "--expiration", "7d")
    out, _ = cli.run("tokens", "list", "--user", "alice")
    assert re.search(rf"{_WHEN} \(in 6 days\)\s+never$", out, re.M), out
    tid = cli.json("tokens", "list", "--user", "alice")["items"][0]["id"]
    out, _ = cli.run("tokens", "show", tid)
    assert re.search(rf"^expires\s+{_WHEN} \(in 6 days\)$", out, re.M), out
    assert re.search(rf"^created\s+{_WHEN} \(just now\)$", out, re.M), out
    out, _ = cli.run("users", "show", "alice")
    assert re.search(rf"^created_at\s+{_WHEN} \(just now\)$", out, re.M), out
    cli.run("orgs", "put", "acme", "--max-lifetime", "90d")
    out, _ = cli.run("orgs", "show", "acme")
    assert re.search(r"^max_lifetime\s+7776000 s \(90 days\)$", out, re.M), out
    out, _ = cli.run("events", "--org", "acme", "--limit", "1")
    assert re.search(rf"^{_WHEN} \(just now\)\s+\S+", out.splitlines()[2]), out
    # --json is unchanged: epoch seconds.
    assert isinstance(cli.json("tokens", "show", tid)["expires_at"], float)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (0, "(just now)"),
        (-59, "(just now)"),
        (-180, "(3 min ago)"),
        (3600 * 5, "(in 5 hours)"),
        (-86400 * 1.5, "(36 hours ago)"),
        (86400 * 29 + 60, "(in 29 days)"),
        (86400 * 400, "(in 13 months)"),
        (-86400 * 365 * 3, "(3 years ago)"),
    ],
)
def test_human_time(delta: float, text: str) -> None:
    now = 1_796_000_000.0
    assert human_time(now + delta, now).endswith(" UTC " + text)
    assert human_time(None, now) == "never"


def test_no_store_is_an_error_not_a_new_empty_store(
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["tokens", "list", "--org", "acme"], ["users", "list"], ["events"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert (out, err) == (
            "",
            f"patgate: error: no patgate store at {tmp_path / '.patgate'} (start patgate "
            "serve there, pass --data-dir or PATGATE_REDIS_URL, or --create-store)\n",
        )
    assert list(tmp_path.iterdir()) == []  # nothing created
    data = tmp_path / "elsewhere"
    assert main(["--data-dir", str(data), "orgs", "show", "acme"]) == 2
    assert str(data) in capsys.readouterr().err
    # Only an explicit flag (or bootstrap) creates one; afterwards it simply opens.
    assert main(["--create-store", "--data-dir", str(data), "users", "list"]) == 0
    assert f"patgate: creating a new store at {data}\n" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "users", "list"]) == 0
    assert not (data / "server.json").exists()  # the temporary server stopped again
    assert main(["--data-dir", str(tmp_path / "boot"), "bootstrap", "--org", "acme"]) == 0
    capsys.readouterr()
    assert main(["--data-dir", str(tmp_path / "boot"), "tokens", "list", "--org", "acme"]) == 0
