"""One installable library, tested as a user installs it (issue 10).

Builds the wheel from a copy of the working tree, installs it into a fresh virtualenv
(dependencies from the package index, through pip's cache: about 25 s in all here, most
of it pip) and, from an application directory that has its own ``middleware/``,
``gateway/`` and ``policies/`` packages: checks that the wheel added exactly one import
name, ``patgate``, and the ``patgate`` script; runs ``patgate --help``; runs
``patgate serve`` on the embedded default until ``/readyz`` answers 200, then SIGTERM;
and runs the README's middleware example under uvicorn with the embedded default store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
_PIP_TIMEOUT = 240


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path
    python: Path
    site: Path
    app: Path
    env: dict[str, str]
    #: site-packages entries the wheel itself added (its dependencies installed before).
    added: frozenset[str]


def _copy_tree(dest: Path) -> None:
    """The files git would ship (tracked or new, not ignored): never build/, .venv/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():  # a tracked file may be deleted in the working tree
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name.decode())


def _user_env(bin_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PATGATE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(*args: str | Path, env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _make_app_dir(app: Path) -> None:
    """An application with packages named like patgate's folders."""
    for package in ("middleware", "gateway", "policies"):
        (app / package).mkdir(parents=True)
        (app / package / "__init__.py").write_text(f'NAME = "the app\'s own {package}"\n')
    (app / "middleware" / "asgi.py").write_text("OWN = True\n")
    (app / "gateway" / "settings.py").write_text("OWN = True\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    source, dist, env_dir, app = base / "src", base / "dist", base / "venv", base / "app"
    _copy_tree(source)
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        dist,
        source,
        env=_user_env(Path(sys.executable).parent),
        cwd=base,
        timeout=_PIP_TIMEOUT,
    )
    (wheel,) = dist.glob("patgate-*.whl")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    python = bin_dir / "python"
    env = _user_env(bin_dir)
    site = Path(
        _run(
            python,
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            env=env,
            cwd=base,
        ).strip()
    )
    # The dependencies first, then the wheel alone, so the difference is the wheel's own.
    _run(python, "-m", "pip", "install", "-q", wheel, env=env, cwd=base, timeout=_PIP_TIMEOUT)
    _run(python, "-m", "pip", "uninstall", "-q", "-y", "patgate", env=env, cwd=base)
    before = set(os.listdir(site))
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, env=env, cwd=base)
    added = frozenset(set(os.listdir(site)) - before)
    _make_app_dir(app)
    return Installed(wheel, bin_dir, python, site, app, env, added)


def test_the_wheel_holds_one_import_name(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert tops == {"patgate", "patgate-0.1.0.dist-info"}
    assert installed.added == {"patgate", "patgate-0.1.0.dist-info"}
    for generic in ("middleware", "gateway", "policies"):
        assert not (installed.site / generic).exists()
    assert (installed.bin / "patgate").is_file()
    # From the app directory, its own packages and patgate's are both importable.
    code = (
        "import middleware.asgi, gateway.settings, policies, patgate\n"
        "from patgate import PatgateMiddleware, Settings, requires\n"
        "import patgate.gateway.settings, patgate.middleware.asgi, patgate.policies.engine\n"
        "assert middleware.asgi.OWN and gateway.settings.OWN, 'the app lost its packages'\n"
        f"assert patgate.__file__.startswith({str(installed.site)!r}), patgate.__file__\n"
        "import sys; assert 'fastapi' not in sys.modules\n"
    )
    _run(installed.python, "-c", code, env=installed.env, cwd=installed.app)


_WALK = """
import importlib, json, pkgutil, patgate
names, missing = [], {}
for info in pkgutil.walk_packages(patgate.__path__, "patgate."):
    names.append(info.name)
    if info.name.endswith(".__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        missing[info.name] = exc.name
print(json.dumps({"names": sorted(names), "missing": missing}))
"""


def _source_modules() -> set[str]:
    """Module names of the checkout's folders, mapped as pyproject's ``package-dir`` does."""
    names = set()
    for top in ("middleware", "policies", "gateway"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[:2] == ["gateway", "_package"]:
                parts = parts[2:]  # the patgate package's own modules
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            if parts:
                names.add(".".join(["patgate", *parts]))
    return names


def test_the_wheel_holds_every_module(installed: Installed) -> None:
    """The same modules as the checkout (no subpackage left out of pyproject), each
    importable; FastAPI and aiohttp are optional extras, so only the module of each needs
    it (the aiohttp upstream client is imported only when PATGATE_UPSTREAM_CLIENT names it)."""
    here = sorted(_source_modules())
    found = json.loads(_run(installed.python, "-c", _WALK, env=installed.env, cwd=installed.app))
    assert found["names"] == here
    assert found["missing"] == {
        "patgate.middleware.fastapi": "fastapi",
        "patgate.gateway.upstream.aiohttp_client": "aiohttp",
    }


def test_patgate_help(installed: Installed) -> None:
    out = _run(installed.bin / "patgate", "--help", env=installed.env, cwd=installed.app)
    assert "serve" in out
    assert "usage: patgate" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def serving(installed: Installed, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``patgate serve`` on the embedded default, started from the app directory."""
    admin = _free_port()
    proc = subprocess.Popen(
        [
            str(installed.bin / "patgate"),
            "--data-dir",
            str(tmp_path / "data"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            f"127.0.0.1:{admin}",
        ],
        cwd=installed.app,
        env=installed.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, admin
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_patgate_serve_until_ready(
    serving: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    proc, admin = serving
    deadline = time.monotonic() + 30
    ready = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"patgate serve exited: {proc.communicate()[1]}"
        try:
            ready = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=2)
        except httpx.TransportError:
            ready = None
        if ready is not None and ready.status_code == 200:
            break
        time.sleep(0.1)
    assert ready is not None
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["store_process"] == "ok"
    server_pid = int(json.loads((tmp_path / "data" / "server.json").read_text())["server_pid"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server_pid), "patgate serve left its valkey-server running"


_README_RUNNER = r"""
import asyncio, re, socket, sys
from pathlib import Path

import httpx, uvicorn

import middleware.asgi  # the app's own package, beside patgate's
assert middleware.asgi.OWN

readme, policy = Path(sys.argv[1]).read_text(), sys.argv[2]
blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
(code,) = [b for b in blocks if "app = Starlette(" in b]
namespace = {}
exec(compile(code.replace('"policy.toml"', repr(policy)), "README.md", "exec"), namespace)
app = namespace["app"]


async def main():
    from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService
    from patgate.middleware.tokenformat import TokenFormat

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        store, system = app.runtime.store, Actor.system()
        await Directory(store).put_org(system, "acme", {"member_scopes": ["threads:*"]})
        await Directory(store).put_user(system, "alice", {"org_id": "acme", "email": "a@x.test"})
        _, secret = await TokenService(store, TokenFormat()).create(
            system, name="readme", scopes=["threads:read"], workspaces=["w1"],
            owner=Owner("user", "alice", "acme"),
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            auth = {"authorization": "Bearer " + secret}
            ok = await http.get("/workspaces/w1/threads", headers=auth)
            assert ok.status_code == 200, ok.text
            assert ok.json() == {"owner": "alice", "scopes": ["threads:read"]}, ok.text
            assert (await http.get("/workspaces/w1/threads")).status_code == 401
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()
    print("README example OK")


asyncio.run(main())
"""


def test_readme_middleware_example_in_the_venv(installed: Installed, tmp_path: Path) -> None:
    from tests.test_readme_examples import _block

    policy = tmp_path / "policy.toml"
    policy.write_text(_block("toml", "[[rules]]"))
    runner = installed.app / "run_readme.py"
    runner.write_text(_README_RUNNER)
    env = {**installed.env, "PATGATE_DATA_DIR": str(tmp_path / "data")}
    out = _run(installed.python, runner, ROOT / "README.md", policy, env=env, cwd=installed.app)
    assert "README example OK" in out
    assert not (tmp_path / "data" / "server.json").exists()  # its store stopped with it
