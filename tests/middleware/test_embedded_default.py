"""The middleware's embedded default (issue 10): no Redis URL → the data directory's Valkey.

Real apps under uvicorn on 127.0.0.1, a real valkey-server in a temporary data directory;
two apps in one process, and an app in another process, sharing that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate import DataPlaneConfig, PatgateMiddleware, Settings
from patgate.middleware.errors import ConfigError
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve
from tests.middleware._tokens import add_user, issue


async def _me(request: Request) -> JSONResponse:
    identity = request.auth.identity
    return JSONResponse({"owner": identity.owner_id})


def _app() -> Starlette:
    return Starlette(routes=[Route("/me", _me)])


_BUILDERS: dict[str, Callable[[Path], PatgateMiddleware]] = {
    "DataPlaneConfig": lambda d: PatgateMiddleware(_app(), settings=DataPlaneConfig(data_dir=d)),
    "Settings": lambda d: PatgateMiddleware.from_settings(_app(), Settings(data_dir=d)),
    "from_env": lambda d: PatgateMiddleware.from_settings(
        _app(), Settings.from_env({"PATGATE_DATA_DIR": str(d)})
    ),
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _server_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "server.json").read_text())["server_pid"])


def _wait_gone(pid: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), f"valkey-server {pid} still running"


def test_constructing_does_no_io(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    runtime = Runtime(DataPlaneConfig(data_dir=data_dir))
    PatgateMiddleware(_app(), runtime=runtime)
    assert not data_dir.exists()
    assert runtime.store_process is None


@pytest.mark.anyio
@pytest.mark.parametrize("how", sorted(_BUILDERS))
async def test_no_url_starts_the_embedded_store_and_stops_it(how: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    middleware = _BUILDERS[how](data_dir)
    runtime = middleware.runtime
    assert runtime is not None
    async with serve(middleware) as port, httpx.AsyncClient() as http:
        assert runtime.store_process is not None  # this runtime owns and supervises it
        pid = _server_pid(data_dir)
        assert _alive(pid)
        await add_user(runtime.store)
        token = await issue(runtime.store, runtime.token_format)
        url = f"http://127.0.0.1:{port}/me"
        ok = await http.get(url, headers={"authorization": f"Bearer {token.secret}"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"owner": "u1"}
        assert (await http.get(url)).status_code == 401
        assert (await runtime.ready())["store_process"] == "ok"
    _wait_gone(pid)
    assert not (data_dir / "server.json").exists()
    assert runtime.store_process is None


@pytest.mark.anyio
async def test_two_apps_share_one_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    owner = PatgateMiddleware(_app(), settings=DataPlaneConfig(data_dir=data_dir))
    joiner = PatgateMiddleware(_app(), settings=DataPlaneConfig(data_dir=data_dir))
    assert owner.runtime is not None
    assert joiner.runtime is not None
    async with serve(owner) as first, httpx.AsyncClient() as http:
        pid = _server_pid(data_dir)
        async with serve(joiner) as second:
            assert joiner.runtime.store_process is None  # joined: not its to supervise
            await add_user(owner.runtime.store)
            token = await issue(owner.runtime.store, owner.runtime.token_format)
            auth = {"authorization": f"Bearer {token.secret}"}
            for port in (first, second):
                answer = await http.get(f"http://127.0.0.1:{port}/me", headers=auth)
                assert answer.status_code == 200, answer.text
        # The joined app stopped; the owner's server (and the owner) carry on.
        assert _alive(pid)
        answer = await http.get(f"http://127.0.0.1:{first}/me", headers=auth)
        assert answer.status_code == 200
    _wait_gone(pid)


_APP_MODULE = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate import PatgateMiddleware, Settings


async def me(request):
    return JSONResponse({"owner": request.auth.identity.owner_id})


app = PatgateMiddleware.from_settings(Starlette(routes=[Route("/me", me)]), Settings.from_env())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _uvicorn_process(app_dir: Path, data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PATGATE_DATA_DIR": str(data_dir)}
    env.pop("PATGATE_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=app_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1].decode()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/me", timeout=1).status_code == 401:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the app process did not come up")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_app_in_another_process_shares_the_store(tmp_path: Path) -> None:
    """The other process starts (and owns) the store; this one joins; stopping this one
    leaves the server running; SIGTERM to the owner stops its server (no orphan)."""
    (tmp_path / "app.py").write_text(_APP_MODULE)
    data_dir = tmp_path / "data"
    port = _free_port()
    with _uvicorn_process(tmp_path, data_dir, port) as proc:
        pid = _server_pid(data_dir)
        joiner = PatgateMiddleware(_app(), settings=DataPlaneConfig(data_dir=data_dir))
        assert joiner.runtime is not None
        async with serve(joiner) as mine, httpx.AsyncClient() as http:
            assert joiner.runtime.store_process is None
            await add_user(joiner.runtime.store)
            token = await issue(joiner.runtime.store, joiner.runtime.token_format)
            auth = {"authorization": f"Bearer {token.secret}"}
            for p in (port, mine):
                answer = await http.get(f"http://127.0.0.1:{p}/me", headers=auth)
                assert answer.status_code == 200, answer.text
        assert _alive(pid)
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{port}/me", headers=auth)
            assert answer.status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its graceful shutdown (lifespan included) ends.
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    _wait_gone(pid)


@pytest.mark.anyio
async def test_a_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    """A data directory locked by another process that names no server: start() fails
    with a ConfigError (the app's startup fails), and a later start can succeed."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    runtime = Runtime(DataPlaneConfig(data_dir=data_dir))
    with (data_dir / "server.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="locked by another patgate process"):
            await runtime.start()
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert runtime.store_process is None
    await runtime.start()
    try:
        assert runtime.store_process is not None
        assert await runtime.data_store.ping()
    finally:
        await runtime.aclose()
    assert not (data_dir / "server.json").exists()
