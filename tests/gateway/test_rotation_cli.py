"""Issue 12 from the command line, against the session's Valkey: ``patgate tokens
regenerate --grace``, ``patgate tokens end-grace``, ``patgate orgs put --max-grace``,
``patgate pepper status`` — and the settings behind a pepper rotation
(``PATGATE_PEPPER_PREVIOUS``, its ``_FILE`` variant, ``none``).

The CLI runs in-process (``gateway.cli.main``, as tests/gateway/test_cli.py does); what
a secret does on the data plane is checked with a real Authenticator on the same store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from patgate.gateway.cli import main
from patgate.gateway.settings import Settings
from patgate.middleware.auth import Authenticator
from patgate.middleware.errors import ConfigError, InvalidToken
from patgate.middleware.keys import Keyspace
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import UNPEPPERED, TokenFormat
from tests.gateway.test_cli import Cli as BaseCli
from tests.gateway.test_cli import clear_settings
from tests.middleware._plane import data_plane, until

HOUR = 3600.0


class Cli(BaseCli):
    """tests/gateway/test_cli.py's CLI driver, plus what a secret does on the data plane."""

    def answer(self, secret: str, fmt: TokenFormat | None = None) -> str | None:
        """None if the data plane (format ``fmt``) accepts ``secret``, else why not;
        any pepper re-index it starts is finished before this returns."""
        fmt = fmt if fmt is not None else TokenFormat()

        async def present() -> str | None:
            client = aioredis.from_url(self.url)
            store = TokenStore(client, Keyspace(self.namespace))
            auth = Authenticator.uncached(store, fmt)
            try:
                await auth.identify([(b"authorization", b"Bearer " + secret.encode())])
            except InvalidToken as exc:
                return exc.description
            finally:
                await auth.aclose()
                await client.aclose()
            return None

        return asyncio.run(present())


@pytest.fixture
def cli(
    valkey_url: str,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    clear_settings(monkeypatch)
    return Cli(valkey_url, namespace, capsys)


@pytest.fixture
def booted(cli: Cli) -> None:
    cli.run("bootstrap", "--org", "acme")
    cli.run("orgs", "put", "acme", "--member-scope", "threads:*")
    cli.run("users", "put", "alice", "--org", "acme", "--email", "alice@acme.io", "--name", "Alice")


def _create(cli: Cli, name: str = "ci") -> tuple[str, str]:
    made = cli.json(
        "tokens", "create", "--user", "alice", "--name", name, "--scope", "threads:read"
    )
    return made["id"], made["token"]


# -- regenerate --grace, end-grace ---------------------------------------------------------


def test_regenerate_with_a_grace_then_end_it(cli: Cli, booted: None) -> None:
    tid, old = _create(cli)
    started = time.time()
    out, err = cli.run("tokens", "regenerate", tid, "--grace", "1h")
    new = out.strip()
    assert len(out.splitlines()) == 1
    assert new not in (old, "")
    assert "keeps working until" in err
    assert f"patgate tokens end-grace {tid}" in err
    assert old not in err
    assert new not in err
    assert cli.answer(old) is None
    assert cli.answer(new) is None
    shown = cli.json("tokens", "show", tid)
    prev = shown["previous_secret"]
    assert prev["prefix"] == old[:8]
    assert prev["status"] == "active"
    assert started + HOUR <= prev["valid_until"] <= time.time() + HOUR
    table, _ = cli.run("tokens", "show", tid)
    assert "previous secret" in table
    assert old[:8] in table
    assert "works until" in table

    out, _ = cli.run("tokens", "end-grace", tid)
    assert out.strip() == f"the previous secret of {tid} (ci) no longer works"
    assert cli.answer(old) == "token rotated"
    assert cli.answer(new) is None
    assert cli.json("tokens", "show", tid)["previous_secret"] is None
    out, _ = cli.run("tokens", "end-grace", tid)  # idempotent
    assert out.strip() == f"{tid} (ci) has no previous secret; nothing changed"
    assert cli.json("tokens", "end-grace", tid)["previous_secret"] is None
    events = cli.json("events", "--token", tid)
    kinds = [e["type"] for e in events["items"]]
    assert kinds == ["token.grace_ended", "token.regenerated", "token.created"]
    assert events["items"][1]["data"]["grace_period"] == HOUR


@pytest.mark.anyio
async def test_end_grace_from_the_cli_reaches_a_warm_data_plane(
    cli: Cli, booted: None, store: TokenStore, valkey_url: str
) -> None:
    # The CLI runs its own event loop: in a thread, beside this test's data plane.
    tid, old = await asyncio.to_thread(_create, cli)
    out, _ = await asyncio.to_thread(cli.run, "tokens", "regenerate", tid, "--grace", "1h")
    new = out.strip()
    async with data_plane(store, TokenFormat(), time.time, valkey_url) as plane:
        await plane.barrier()
        for secret in (old, new):
            assert (await plane.call(secret)).ok
            assert plane.cached(secret)
        await asyncio.to_thread(cli.run, "tokens", "end-grace", tid)
        await until(lambda: not plane.cached(old), "the end-grace invalidation")
        answer = await plane.call(old)
        assert (answer.status, answer.description) == (401, "token rotated")
        assert plane.decisions("rotated") == 1
        assert (await plane.call(new)).ok


@pytest.mark.parametrize(
    ("value", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86_400)]
)
def test_grace_durations(cli: Cli, booted: None, value: str, seconds: float) -> None:
    tid, _ = _create(cli)
    before = time.time()
    regen = cli.json("tokens", "regenerate", tid, "--grace", value)
    until = regen["previous_secret"]["valid_until"]
    assert before + seconds <= until <= time.time() + seconds


@pytest.mark.parametrize("value", ["soon", "-1", "1w", ""])
def test_a_bad_grace_is_a_usage_error(
    cli: Cli, booted: None, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tid, old = _create(cli)
    with pytest.raises(SystemExit) as exited:
        main([*cli.base, "tokens", "regenerate", tid, "--grace", value])
    assert exited.value.code == 2
    assert "--grace" in capsys.readouterr().err
    assert cli.answer(old) is None  # nothing regenerated


def test_the_orgs_max_grace_from_the_cli(cli: Cli, booted: None) -> None:
    tid, old = _create(cli)
    org = cli.json("orgs", "put", "acme", "--max-grace", "1h")
    assert org["max_grace_period"] == HOUR
    err = cli.fails("tokens", "regenerate", tid, "--grace", "2h")
    assert "grace_period" in err
    assert "max_grace_period" in err
    assert cli.answer(old) is None  # refused: nothing changed
    assert cli.json("tokens", "show", tid)["previous_secret"] is None
    assert cli.json("tokens", "regenerate", tid, "--grace", "1h")["previous_secret"] is not None
    assert cli.json("orgs", "put", "acme", "--max-grace", "0")["max_grace_period"] == 0
    assert "grace_period" in cli.fails("tokens", "regenerate", tid, "--grace", "1s")
    assert "max_grace_period" in cli.fails("orgs", "put", "acme", "--max-grace", "91d")


def test_no_grace_for_a_revoked_token_from_the_cli(cli: Cli, booted: None) -> None:
    tid, _ = _create(cli)
    cli.run("tokens", "revoke", tid)
    err = cli.fails("tokens", "regenerate", tid, "--grace", "1h")
    assert "revoked" in err
    assert cli.json("tokens", "show", tid)["status"] == "revoked"


# -- patgate pepper status ------------------------------------------------------------------


def test_pepper_status_through_a_rotation(
    cli: Cli, booted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATGATE_PEPPER", "pepper-one")
    old_pepper = TokenFormat(pepper=b"pepper-one")
    made = [_create(cli, f"t{i}") for i in range(2)]
    status = cli.json("pepper", "status")
    # the bootstrap token (no pepper then) counts as under neither
    assert status == {
        "tokens": 3,
        "current_pepper": 2,
        "previous_pepper": 0,
        "other_pepper": 1,
        "rotating": False,
        "previous_pepper_can_be_dropped": False,
    }
    out, _ = cli.run("pepper", "status")
    assert "no rotation in progress" in out

    monkeypatch.setenv("PATGATE_PEPPER", "pepper-two")
    monkeypatch.setenv("PATGATE_PEPPER_PREVIOUS", "pepper-one")
    rotating = TokenFormat(pepper=b"pepper-two", previous_pepper=b"pepper-one")
    status = cli.json("pepper", "status")
    assert (status["current_pepper"], status["previous_pepper"]) == (0, 2)
    assert status["rotating"] is True
    assert status["previous_pepper_can_be_dropped"] is False
    out, _ = cli.run("pepper", "status")
    assert "2 token(s) still need PATGATE_PEPPER_PREVIOUS" in out

    # One is presented to a switched data plane: re-indexed.
    assert cli.answer(made[0][1], rotating) is None
    status = cli.json("pepper", "status")
    assert (status["current_pepper"], status["previous_pepper"]) == (1, 1)
    # The other is regenerated (the CLI runs with the rotating config).
    cli.run("tokens", "regenerate", made[1][0])
    status = cli.json("pepper", "status")
    assert (status["current_pepper"], status["previous_pepper"]) == (2, 0)
    assert status["previous_pepper_can_be_dropped"] is True
    out, _ = cli.run("pepper", "status")
    assert "PATGATE_PEPPER_PREVIOUS can be dropped" in out
    assert cli.answer(made[0][1], old_pepper) == "invalid or unknown token"
    assert cli.answer(made[0][1], TokenFormat(pepper=b"pepper-two")) is None


def test_the_cli_refuses_a_previous_pepper_equal_to_the_current(
    cli: Cli, booted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATGATE_PEPPER", "same")
    monkeypatch.setenv("PATGATE_PEPPER_PREVIOUS", "same")
    err = cli.fails("pepper", "status", code=2)  # a configuration error
    assert "previous pepper is the current one" in err
    assert "same" not in err


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("old-pepper", b"old-pepper"), ("none", UNPEPPERED), ("NONE", UNPEPPERED)],
)
def test_pepper_previous_setting(value: str, expected: bytes) -> None:
    settings = Settings.from_env({"PATGATE_PEPPER": "new", "PATGATE_PEPPER_PREVIOUS": value})
    assert settings.pepper == b"new"
    assert settings.previous_pepper == expected
    assert "old-pepper" not in repr(settings)  # a secret setting: kept out of reprs
    fmt = TokenFormat(settings.token_prefix, settings.pepper, settings.previous_pepper)
    assert fmt.rotating


def test_no_previous_pepper_by_default() -> None:
    assert Settings.from_env({}).previous_pepper is None
    assert Settings.from_env({"PATGATE_PEPPER_PREVIOUS": ""}).previous_pepper is None


def test_pepper_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "previous"
    path.write_bytes(b"from-file\n")
    env = {"PATGATE_PEPPER": "new", "PATGATE_PEPPER_PREVIOUS_FILE": str(path)}
    assert Settings.from_env(env).previous_pepper == b"from-file"
    # the variable itself wins over its file
    both = {**env, "PATGATE_PEPPER_PREVIOUS": "direct"}
    assert Settings.from_env(both).previous_pepper == b"direct"
    path.write_bytes(b"none\n")
    assert Settings.from_env(env).previous_pepper == UNPEPPERED
    path.write_bytes(b"\n")
    assert Settings.from_env(env).previous_pepper is None
    pepper_file = tmp_path / "pepper"
    pepper_file.write_bytes(b"current\n")
    files = {"PATGATE_PEPPER_FILE": str(pepper_file), "PATGATE_PEPPER_PREVIOUS_FILE": str(path)}
    path.write_bytes(b"older")
    settings = Settings.from_env(files)
    assert (settings.pepper, settings.previous_pepper) == (b"current", b"older")
    assert "older" not in repr(settings)
    assert "current" not in repr(settings)


def test_an_unreadable_previous_pepper_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="PATGATE_PEPPER_PREVIOUS_FILE"):
        Settings.from_env({"PATGATE_PEPPER_PREVIOUS_FILE": str(missing)})
