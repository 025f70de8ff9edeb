"""``patgate policy check|explain`` through a real argparse parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from patgate.policies.cli import EXIT_DENIED, register

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="patgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.mark.parametrize("name", ["api.toml", "management.toml", "allow-all.toml"])
def test_check_accepts_the_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "check", str(EXAMPLES / name)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"ok: {EXAMPLES / name}: ")
    assert err == ""


def test_check_reports_each_error_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[rules]]\nname = "a"\npath = "/a/"\n'
        '[[rules]]\nname = "b"\npath = "/b"\nscopes = ["b:fly"]\n'
    )
    assert run(["policy", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {path}: rule 1 'a', field 'path': ")
    assert lines[1].startswith(f"error: {path}: rule 2 'b', field 'scopes': ")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "check", str(tmp_path / "nope.toml")]) == 1
    assert "cannot read policy file" in capsys.readouterr().err


def test_explain_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        [
            "policy", "explain", str(EXAMPLES / "api.toml"), "GET",
            "/v1/workspaces/w1/threads/T9", "--scopes", "threads:read", "--workspaces", "w1",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "path:     /v1/workspaces/w1/threads/T9" in out
    assert "rule:     thread-read (rule 7 in" in out
    assert "params:   ws=w1 id=T9" in out
    assert "all of:    threads:read" in out
    assert "decision: ALLOW (ok)" in out


def test_explain_denied_with_missing_scope(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        [
            "policy", "explain", str(EXAMPLES / "api.toml"), "GET",
            "/v1/users/u2/profile", "--scopes", "restricted", "--owner", "u1",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == EXIT_DENIED
    assert "own:       {user} must equal the token owner" in out
    assert "decision: DENY (own; missing scope: profile:read)" in out


def test_explain_workspace_header(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "policy", "explain", str(EXAMPLES / "api.toml"), "GET", "/v1/events/subscribe",
        "--scopes", "events:subscribe", "--workspaces", "w1",
    ]  # fmt: skip
    assert run([*argv, "--header", "X-Workspace-Id=w1"]) == 0
    assert "decision: ALLOW (ok)" in capsys.readouterr().out
    assert run([*argv, "--header", "X-Workspace-Id=w2"]) == EXIT_DENIED
    assert "decision: DENY (workspace)" in capsys.readouterr().out
    assert run([*argv, "--header", "oops"]) == 1
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_explain_bad_path_and_unmatched(capsys: pytest.CaptureFixture[str]) -> None:
    api = str(EXAMPLES / "api.toml")
    assert run(["policy", "explain", api, "GET", "/a/..;/v1/workspaces"]) == EXIT_DENIED
    out = capsys.readouterr().out
    assert "path:     rejected (';' path parameter)" in out
    assert "decision: DENY (bad_path)" in out
    assert run(["policy", "explain", api, "GET", "/nothing", "--scopes", "all"]) == EXIT_DENIED
    out = capsys.readouterr().out
    assert "no rule matched; default is deny" in out
    assert "decision: DENY (no_rule)" in out


def test_explain_public_and_bad_scopes(capsys: pytest.CaptureFixture[str]) -> None:
    api = str(EXAMPLES / "api.toml")
    assert run(["policy", "explain", api, "GET", "/healthz"]) == 0
    out = capsys.readouterr().out
    assert "public:    yes" in out
    assert "decision: ALLOW (public)" in out
    assert run(["policy", "explain", api, "GET", "/healthz", "--scopes", "bad scope"]) == 1
    assert "error: --scopes: scope 'bad scope' contains whitespace" in capsys.readouterr().err


def test_explain_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("default = 1\n")
    assert run(["policy", "explain", str(path), "GET", "/"]) == 1
    assert "field 'default'" in capsys.readouterr().err


def test_explain_shows_the_exact_case_rule(capsys: pytest.CaptureFixture[str]) -> None:
    mgmt = str(EXAMPLES / "management.toml")
    assert run(["policy", "explain", mgmt, "GET", "/V1/Tokens", "--scopes", "all"]) == (EXIT_DENIED)
    out = capsys.readouterr().out
    assert "rule:     tokens-read" in out
    assert "decision: DENY (no_rule)" in out
    api = str(EXAMPLES / "api.toml")
    assert run(["policy", "explain", api, "GET", "/DOCS/x"]) == EXIT_DENIED
    out = capsys.readouterr().out
    assert "decision: DENY (no_rule)" in out


def test_explain_prints_the_second_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "case.toml"
    path.write_text(
        '[[rules]]\nname = "pub"\npath = "/public/**"\npublic = true\n'
        '[[rules]]\nname = "rest"\npath = "/**"\nscopes = ["x:read"]\n'
    )
    assert run(["policy", "explain", str(path), "GET", "/PUBLIC/a"]) == EXIT_DENIED
    out = capsys.readouterr().out
    assert "also:     rest (the exact-case spelling's rule; must allow too)" in out
    assert "decision: DENY (insufficient_scope; missing scope: x:read)" in out
    assert run(["policy", "explain", str(path), "GET", "/PUBLIC/a", "--scopes", "x:read"]) == 0
