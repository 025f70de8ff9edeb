"""Issue 13 in the CLI: ``orgs put`` with the new settings (roles, resources, default
scopes, scopes required, the permission switch), ``tokens create`` without ``--scope``,
with ``--role`` and ``--restrict``, ``tokens edit --role/--no-role`` — against the
session's Valkey server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.test_cli import Cli

MEMBER = ["threads:*", "*:read"]


def _create(cli: Cli, *flags: str, name: str = "ci") -> dict[str, Any]:
    created: dict[str, Any] = cli.json(
        "tokens", "create", "--user", "alice", "--name", name, *flags
    )
    return created


def test_create_without_scope_gets_the_default(acme_cli: Cli) -> None:
    created = _create(acme_cli)
    assert set(created["scopes"]) == {*MEMBER, "tokens:read:own", "tokens:write:own"}
    assert created["role"] is None
    # the operator creating for an admin: all the admin may grant, less admin-only
    mine = acme_cli.json("tokens", "create", "--user", "admin", "--name", "x")
    assert "tokens:admin" not in mine["scopes"]
    assert "users:admin" not in mine["scopes"]
    assert "*" not in mine["scopes"]
    assert "*:read" in mine["scopes"]
    org = acme_cli.json("orgs", "put", "acme", "--default-scope", "threads:read")
    assert org["default_scopes"] == ["threads:read"]
    assert _create(acme_cli, name="d2")["scopes"] == ["threads:read"]
    assert acme_cli.json("orgs", "put", "acme", "--no-default-scopes")["default_scopes"] is None
    assert len(_create(acme_cli, name="d3")["scopes"]) == 4


def test_scopes_required(acme_cli: Cli) -> None:
    assert acme_cli.json("orgs", "put", "acme", "--scopes-required")["scopes_required"] is True
    assert "scopes" in acme_cli.fails("tokens", "create", "--user", "alice", "--name", "x")
    assert _create(acme_cli, "--scope", "threads:read")["scopes"] == ["threads:read"]
    org = acme_cli.json("orgs", "put", "acme", "--no-scopes-required")
    assert org["scopes_required"] is False


def test_roles_create_and_edit(acme_cli: Cli) -> None:
    org = acme_cli.json(
        "orgs",
        "put",
        "acme",
        "--define-role",
        "Developer=threads:*,files:read",
        "--define-role",
        "Admin=tokens:admin",
    )
    assert org["roles"] == {"Admin": ["tokens:admin"], "Developer": ["files:read", "threads:*"]}
    created = _create(acme_cli, "--role", "developer")
    assert (created["role"], created["scopes"]) == ("Developer", [])
    tid = created["id"]
    assert acme_cli.json("tokens", "show", tid)["role"] == "Developer"
    out, _ = acme_cli.run("tokens", "show", tid)
    assert any(line.split() == ["role", "Developer"] for line in out.splitlines()), out
    out, _ = acme_cli.run("tokens", "list", "--user", "alice")
    header, rows = out.splitlines()[0].split(), out.splitlines()[2:]
    assert "ROLE" in header
    assert any(tid in row and "Developer" in row.split() for row in rows), out
    assert acme_cli.json("tokens", "edit", tid, "--no-role")["role"] is None
    assert acme_cli.json("tokens", "edit", tid, "--role", "DEVELOPER")["role"] == "Developer"
    # beyond alice's grant; unknown
    assert "not grantable" in acme_cli.fails("tokens", "edit", tid, "--role", "Admin")
    assert "not a role" in acme_cli.fails("tokens", "edit", tid, "--role", "Nope")
    flags = ("tokens", "create", "--user", "alice", "--name", "y")
    assert "not grantable" in acme_cli.fails(*flags, "--role", "Admin")
    assert "not a role" in acme_cli.fails(*flags, "--role", "Nope")
    # role + scopes
    both = _create(acme_cli, "--role", "Developer", "--scope", "threads:read", name="both")
    assert (both["role"], both["scopes"]) == ("Developer", ["threads:read"])
    # --define-role replaces every role
    org = acme_cli.json("orgs", "put", "acme", "--define-role", "Reader=*:read")
    assert org["roles"] == {"Reader": ["*:read"]}


def test_restricted(acme_cli: Cli) -> None:
    flags = ("tokens", "create", "--user", "alice", "--name", "r")
    line = acme_cli.fails(*flags, "--restrict", "threads=read")
    assert "defines no resources" in line
    org = acme_cli.json("orgs", "put", "acme", "--resource", "threads", "--resource", "files")
    assert org["resources"] == ["threads", "files"]
    created = _create(acme_cli, "--restrict", "threads=read,list", "--restrict", "files=read")
    assert sorted(created["scopes"]) == ["files:read", "threads:list", "threads:read"]
    assert "not one of the organization's resources" in acme_cli.fails(
        *flags, "--restrict", "orders=read"
    )
    assert "is not one of" in acme_cli.fails(*flags, "--restrict", "threads=admin")
    assert "RESOURCE=op" in acme_cli.fails(*flags, "--restrict", "threads")
    # --restrict and --scope are exclusive (usage error)
    with pytest.raises(SystemExit) as usage:
        acme_cli.run(*flags, "--restrict", "threads=read", "--scope", "threads:read")
    assert usage.value.code == 2
    # grant-checked: members may not grant files:delete
    assert "not grantable" in acme_cli.fails(*flags, "--restrict", "files=delete")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--define-role", "Developer"], "NAME=scope"),
        (["--define-role", "9x=threads:read"], "not a role name"),
        (["--define-role", "Dev=threads:read", "--define-role", "DEV=files:read"], "twice"),
        (["--define-role", "Dev=not a scope"], "roles.Dev"),
        (["--resource", "Threads"], "not a resource name"),
        (["--default-scope", "bad scope"], "default_scopes"),
    ],
)
def test_bad_org_settings_are_one_line_and_change_nothing(
    acme_cli: Cli, argv: list[str], needle: str
) -> None:
    acme_cli.run("orgs", "put", "acme", "--define-role", "Keep=threads:read", "--resource", "keep")
    before = acme_cli.json("orgs", "show", "acme")
    assert needle in acme_cli.fails("orgs", "put", "acme", *argv)
    assert acme_cli.json("orgs", "show", "acme") == before


def test_permission_switch(acme_cli: Cli) -> None:
    org = acme_cli.json("orgs", "put", "acme", "--no-default-can-manage-tokens")
    assert org["default_can_manage_tokens"] is False
    user = acme_cli.json("users", "put", "carol", "--org", "acme", "--email", "c@acme.io")
    assert user["can_manage_tokens"] is False
    flags = ("tokens", "create", "--user", "carol", "--name", "c")
    assert "may not hold tokens" in acme_cli.fails(*flags)
    dan = acme_cli.json(
        "users", "put", "dan", "--org", "acme", "--email", "d@acme.io", "--can-manage-tokens"
    )
    assert dan["can_manage_tokens"] is True
    assert acme_cli.json("users", "put", "carol", "--can-manage-tokens")["can_manage_tokens"]
    assert acme_cli.json(*flags, "--scope", "threads:read")["scopes"] == ["threads:read"]
    org = acme_cli.json("orgs", "put", "acme", "--default-can-manage-tokens")
    assert org["default_can_manage_tokens"] is True
