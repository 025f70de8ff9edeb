"""``patgate tokens create --allow-ip`` and ``tokens edit --allow-ip / --any-ip`` (issue 12),
against the session's Valkey server."""

from __future__ import annotations

import pytest

from tests.gateway.test_cli import Cli


def _create(cli: Cli, *flags: str) -> dict[str, object]:
    created: dict[str, object] = cli.json(
        "tokens", "create", "--user", "alice", "--name", "ci", "--scope", "threads:read", *flags
    )
    return created


def test_create_with_allow_ip(acme_cli: Cli) -> None:
    created = _create(
        acme_cli, "--allow-ip", "203.0.113.0/24", "--allow-ip", "2001:DB8::1", "--allow-ip",
        "::ffff:203.0.113.7",
    )  # fmt: skip
    assert created["allowed_ips"] == ["203.0.113.0/24", "2001:db8::1", "203.0.113.7"]
    tid = str(created["id"])
    assert acme_cli.json("tokens", "show", tid)["allowed_ips"] == created["allowed_ips"]
    out, _ = acme_cli.run("tokens", "show", tid)
    line = next(row for row in out.splitlines() if row.startswith("allowed ips"))
    assert line.split()[2:] == ["203.0.113.0/24", "2001:db8::1", "203.0.113.7"]


def test_create_without_allow_ip_is_any_address(acme_cli: Cli) -> None:
    created = _create(acme_cli)
    assert created["allowed_ips"] is None
    out, _ = acme_cli.run("tokens", "show", str(created["id"]))
    line = next(row for row in out.splitlines() if row.startswith("allowed ips"))
    assert line.split()[2:] == ["any"]


def test_edit_replaces_then_any_ip_clears(acme_cli: Cli) -> None:
    tid = str(_create(acme_cli, "--allow-ip", "203.0.113.0/24")["id"])
    edited = acme_cli.json(
        "tokens", "edit", tid, "--allow-ip", "198.51.100.1/32", "--allow-ip", "2001:db8::/32"
    )
    assert edited["allowed_ips"] == ["198.51.100.1", "2001:db8::/32"]  # replaced, not added
    # an edit of something else keeps it
    assert acme_cli.json("tokens", "edit", tid, "--name", "ci-2")["allowed_ips"] == [
        "198.51.100.1",
        "2001:db8::/32",
    ]
    cleared = acme_cli.json("tokens", "edit", tid, "--any-ip")
    assert cleared["allowed_ips"] is None
    assert acme_cli.json("tokens", "show", tid)["allowed_ips"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--allow-ip", "10.0.0.1/24"], "has host bits set; the network is 10.0.0.0/24"),
        (["--allow-ip", "fe80::1%eth0"], "'fe80::1%eth0' is not an IP address or CIDR network"),
        (["--allow-ip", "nope"], "'nope' is not an IP address or CIDR network"),
    ],
)
def test_invalid_entries_are_refused_and_change_nothing(
    acme_cli: Cli, flags: list[str], message: str
) -> None:
    line = acme_cli.fails("tokens", "create", "--user", "alice", "--name", "bad", *flags)
    assert "allowed_ips: " in line
    assert message in line
    assert [t["name"] for t in acme_cli.json("tokens", "list", "--user", "alice")["items"]] == []

    tid = str(_create(acme_cli, "--allow-ip", "203.0.113.0/24")["id"])
    line = acme_cli.fails("tokens", "edit", tid, *flags)
    assert message in line
    assert acme_cli.json("tokens", "show", tid)["allowed_ips"] == ["203.0.113.0/24"]


def test_too_many_entries(acme_cli: Cli) -> None:
    flags = [arg for n in range(1, 34) for arg in ("--allow-ip", f"10.0.0.{n}")]
    assert "at most 32 entries" in acme_cli.fails(
        "tokens", "create", "--user", "alice", "--name", "bad", *flags
    )
    created = _create(acme_cli, *flags[:64])  # 32 is fine
    assert created["allowed_ips"] == [f"10.0.0.{n}" for n in range(1, 33)]


def test_allow_ip_and_any_ip_are_exclusive(
    acme_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    tid = str(_create(acme_cli, "--allow-ip", "203.0.113.0/24")["id"])
    with pytest.raises(SystemExit) as info:
        acme_cli.run("tokens", "edit", tid, "--allow-ip", "10.0.0.1", "--any-ip")
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert acme_cli.json("tokens", "show", tid)["allowed_ips"] == ["203.0.113.0/24"]
