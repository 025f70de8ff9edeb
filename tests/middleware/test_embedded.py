"""The embedded default store: a private valkey-server with AOF in a data directory.

Durability: a token created through the CLI on the embedded default survives the server
stopping, a new process, a restart — and a SIGKILL of the server right after the create
(the create waits for WAITAOF before it shows the secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService
from patgate.middleware.embedded import EmbeddedValkey, embedded_store_url
from patgate.middleware.errors import ConfigError
from patgate.middleware.keys import Keyspace
from patgate.middleware.records import Token, User
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.middleware.validate import usable_identity
from tests.middleware._tokens import MEMBER_SCOPES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    # a failing test must not leave a valkey-server running
    info = path / "server.json"
    if info.exists():  # pragma: no cover - only after a failure
        sock = json.loads(info.read_text())["socket"]
        with contextlib.suppress(redis.RedisError), redis.Redis(unix_socket_path=sock) as c:
            c.shutdown(nosave=True)


def _ping(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return bool(client.ping())


def _cli(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "patgate.gateway.cli", "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def _validate(url: str, secret: str, namespace: str = "patgate") -> Token:
    """What the data plane does: lookup by digest, then the usability rules."""
    client = aioredis.from_url(url)
    try:
        store = TokenStore(client, Keyspace(namespace))
        fmt = TokenFormat()
        found = await store.lookup(fmt.digest(secret), fmt.partition(secret))
        assert found is not None, "token lost"
        token = Token.decode(found[0])
        usable_identity(token, None if found[1] is None else User.decode(found[1]), time.time())
        return token
    finally:
        await client.aclose()


def test_starts_a_real_server_with_aof_on_a_private_socket(data_dir: Path) -> None:
    server = EmbeddedValkey(data_dir)
    url = server.start()
    try:
        assert server.owns_server
        assert url.startswith("unix://")
        with redis.Redis.from_url(url) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("port") == {"port": "0"}  # no TCP listener
        sock = Path(url.removeprefix("unix://").split("?")[0])
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        assert (data_dir / "valkey" / "appendonly").is_dir()
        assert json.loads((data_dir / "server.json").read_text())["socket"] == str(sock)
    finally:
        server.stop()
    assert not (data_dir / "server.json").exists()
    with pytest.raises(redis.ConnectionError):
        _ping(url)


def test_second_instance_joins_instead_of_starting_another(data_dir: Path) -> None:
    owner = EmbeddedValkey(data_dir)
    url = owner.start()
    try:
        joiner = EmbeddedValkey(data_dir)
        assert joiner.start() == url
        assert not joiner.owns_server
        joiner.stop()
        assert _ping(url)  # the joiner leaving does not stop the owner's server
    finally:
        owner.stop()
    with pytest.raises(redis.ConnectionError):
        _ping(url)


def test_locked_directory_without_server_info_is_a_config_error(data_dir: Path) -> None:
    owner = EmbeddedValkey(data_dir)
    owner.start()
    try:
        (data_dir / "server.json").unlink()
        with pytest.raises(ConfigError, match="locked"):
            EmbeddedValkey(data_dir).start()
    finally:
        owner.stop()


_OWNER = """
import sys
from pathlib import Path
from patgate.middleware.embedded import EmbeddedValkey
server = EmbeddedValkey(Path(sys.argv[1]))
url = server.start()
print(server.server_pid, url, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["owner", "owner and watchdog"])
def test_a_killed_owner_leaves_no_server_behind(data_dir: Path, killed: str) -> None:
    """issue 10: the owner is SIGKILLed. Its watchdog stops the valkey-server at once; if
    the watchdog died too (an OOM kill of the group), the server lives on, and the next
    start stops it (it is ours: valkey-server, cwd in this data directory) and starts
    anew. Either way the data written before is there (AOF)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(data_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert owner.stdout is not None
    assert owner.stdin is not None
    pid_text, url = owner.stdout.readline().split()
    stale = int(pid_text)
    watchdog = json.loads((data_dir / "server.json").read_text())["watchdog_pid"]
    with redis.Redis.from_url(url) as client:
        client.set("kept", "yes")
        client.execute_command("WAITAOF", 1, 0, 5000)
    try:
        if killed == "owner and watchdog":
            os.kill(watchdog, signal.SIGKILL)
        owner.kill()
        owner.wait(30)
        owner.stdin.close()
        owner.stdout.close()
        if killed == "owner":
            # The watchdog stops the server, then removes server.json.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (
                _alive(stale) or (data_dir / "server.json").exists()
            ):
                time.sleep(0.02)
            assert not _alive(stale)
            assert not (data_dir / "server.json").exists()
        else:
            time.sleep(0.5)
            assert _alive(stale)  # the orphan, still serving the socket
            assert _ping(url)
        server = EmbeddedValkey(data_dir)
        assert server.start() == url
        try:
            assert server.owns_server
            assert server.server_pid != stale
            assert not _alive(stale)
            with redis.Redis.from_url(url) as client:
                assert client.get("kept") == b"yes"  # AOF written on SIGTERM
        finally:
            server.stop()
        assert not _alive(stale)
    finally:
        for pid in (stale, watchdog):
            if _alive(pid):  # pragma: no cover - only after a failure
                os.kill(pid, signal.SIGKILL)


def test_a_pid_that_is_not_our_valkey_server_is_never_signalled(data_dir: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        data_dir.mkdir(parents=True)
        (data_dir / "server.json").write_text(
            json.dumps({"socket": str(data_dir / "valkey.sock"), "server_pid": bystander.pid})
        )
        with EmbeddedValkey(data_dir) as server:
            assert server.server_pid != bystander.pid
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_socket_held_by_an_unknown_process_is_a_config_error(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stranger:
        stranger.bind(str(data_dir / "valkey.sock"))
        stranger.listen()
        with pytest.raises(ConfigError, match="cannot identify"):
            EmbeddedValkey(data_dir).start()
    # The lock was released: the directory is usable once the stranger is gone.
    (data_dir / "valkey.sock").unlink()
    with EmbeddedValkey(data_dir) as server:
        assert server.owns_server


def test_long_data_dir_paths_still_get_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with EmbeddedValkey(deep) as server:
        assert server.url is not None
        assert _ping(server.url)


def test_embedded_store_url(data_dir: Path) -> None:
    with embedded_store_url("redis://example.invalid:6379/0", data_dir) as url:
        assert url == "redis://example.invalid:6379/0"
        assert not data_dir.exists()
    with embedded_store_url(None, data_dir) as url:
        assert _ping(url)
    with pytest.raises(redis.ConnectionError):
        _ping(url)


def test_cli_tokens_survive_restarts_of_the_embedded_default(data_dir: Path) -> None:
    boot = _cli(data_dir, "bootstrap", "--org", "acme")  # starts, writes, stops the server
    assert boot.returncode == 0, boot.stderr
    secret = boot.stdout.strip()
    assert not (data_dir / "server.json").exists()  # the process stopped its server
    made = _cli(
        data_dir, "--json", "tokens", "create", "--user", "admin", "--org", "acme", "--name", "ci"
    )
    assert made.returncode == 0, made.stderr
    second = json.loads(made.stdout)["token"]
    listed = _cli(
        data_dir, "--json", "tokens", "list", "--user", "admin", "--org", "acme"
    )  # a new process
    assert listed.returncode == 0, listed.stderr
    assert sorted(t["name"] for t in json.loads(listed.stdout)["items"]) == ["bootstrap", "ci"]
    for _ in range(2):  # stop/start twice more, in this process
        with EmbeddedValkey(data_dir) as server:
            assert server.owns_server
            assert server.url is not None
            assert asyncio.run(_validate(server.url, secret)).name == "bootstrap"
            assert asyncio.run(_validate(server.url, second)).name == "ci"


def test_cli_joins_a_running_embedded_server(data_dir: Path) -> None:
    with EmbeddedValkey(data_dir) as server:
        assert server.url is not None
        boot = _cli(data_dir, "bootstrap", "--org", "acme")
        assert boot.returncode == 0, boot.stderr
        assert server.owns_server
        assert _ping(server.url)
        assert asyncio.run(_validate(server.url, boot.stdout.strip())).name == "bootstrap"


def test_token_survives_sigkill_of_the_server_right_after_create(data_dir: Path) -> None:
    async def create(url: str) -> tuple[str, int]:
        client = aioredis.from_url(url)
        try:
            store = TokenStore(client, Keyspace("patgate"))
            system = Actor.system()
            directory = Directory(store, default_org="acme")
            await directory.put_org(system, "acme", {"member_scopes": MEMBER_SCOPES})
            await directory.put_user(system, "alice", {"org_id": "acme", "email": "a@x.io"})
            _, secret = await TokenService(store, TokenFormat()).create(
                system, name="precious", owner=Owner("user", "alice", "acme")
            )
            pid = int((await client.info("server"))["process_id"])
            return secret, pid
        finally:
            await client.aclose()

    server = EmbeddedValkey(data_dir)
    url = server.start()
    try:
        secret, pid = asyncio.run(create(url))
        os.kill(pid, signal.SIGKILL)  # no shutdown, no final fsync, no RDB
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(pid)
    finally:
        server.stop()
    with EmbeddedValkey(data_dir) as again:
        assert again.url is not None
        assert asyncio.run(_validate(again.url, secret)).name == "precious"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child stays a zombie until its parent reaps it
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status
