"""nginx ``auth_request`` in front of the forward-auth endpoint, all on loopback.

nginx (from Debian packages; the CI setup installs it) runs as a subprocess with its
config, pid, logs and temp files in the test's tmp dir. The upstream echoes the headers
it received, so the test sees exactly what nginx forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.app import create_authz_app
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve
from tests.middleware._tokens import add_user, issue, make_policy

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx binary not installed (apt-get install nginx)"),
]

_IDENTITY = ("token-id", "token-type", "owner-type", "owner-id", "org-id", "scopes")

_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_auth;
{auth_request_set}
{proxy_set_header}
            # The upstream trusts the identity headers, never the client's secret.
            proxy_set_header Authorization "";
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location = /_auth {{
            internal;
            proxy_pass http://127.0.0.1:{authz}/authz;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def _conf(tmp: Path, port: int, upstream: int, authz: int) -> str:
    variables = [name.replace("-", "_") for name in _IDENTITY]
    auth_request_set = "\n".join(
        f"            auth_request_set $pg_{v} $upstream_http_x_patgate_{v};" for v in variables
    )
    # Always set (possibly to empty, which drops it): a client-sent X-Patgate-* never
    # passes nginx under the same name.
    proxy_set_header = "\n".join(
        f"            proxy_set_header X-Patgate-{name} $pg_{v};"
        for name, v in zip(_IDENTITY, variables, strict=True)
    )
    return _CONF.format(
        tmp=tmp,
        port=port,
        upstream=upstream,
        authz=authz,
        auth_request_set=auth_request_set,
        proxy_set_header=proxy_set_header,
    )


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({k.decode(): v.decode() for k, v in request.scope["headers"]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _nginx(tmp: Path, upstream: int, authz: int) -> AsyncIterator[int]:
    assert NGINX is not None
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(_conf(tmp, port, upstream, authz))
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(tmp),
        "-e",
        str(tmp / "error.log"),
        "-c",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            if proc.returncode is not None:
                log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                raise AssertionError(f"nginx exited: {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("nginx did not start listening")
        yield port
    finally:
        await _stop(proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _stack(settings: Settings, tmp: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = Runtime(settings.evolve(lastused_interval=60), policy=make_policy())
    upstream_app = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])])
    async with (
        serve(upstream_app, lifespan="off") as upstream,
        serve(create_authz_app(runtime)) as authz,
        _nginx(tmp, upstream, authz) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as c,
    ):
        yield c, runtime


async def test_valid_token_reaches_upstream_with_identity_headers(
    settings: Settings, tmp_path: Path
) -> None:
    async with _stack(settings, tmp_path) as (client, runtime):
        await add_user(runtime.store, "u1")
        token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
        response = await client.get(
            "/threads/7?page=2",
            headers={
                "Authorization": f"Bearer {token.secret}",
                "X-Patgate-Token-Id": "forged",
                "X-Patgate-Scopes": "*",
            },
        )
        assert response.status_code == 200, response.text
        seen = response.json()
        assert seen["x-patgate-token-id"] == token.token.id
        assert seen["x-patgate-scopes"] == "threads:read"
        assert seen["x-patgate-owner-id"] == "u1"
        assert seen["x-patgate-owner-type"] == "user"
        assert seen["x-patgate-org-id"] == "o1"
        assert seen["x-patgate-token-type"] == "personal"
        assert "authorization" not in seen
        used = runtime.recorder._pending[token.token.id]
        assert (used.method, used.path, used.ip) == ("GET", "/threads/7", "127.0.0.1")


async def test_missing_and_invalid_tokens_get_401_with_challenge(
    settings: Settings, tmp_path: Path
) -> None:
    async with _stack(settings, tmp_path) as (client, runtime):
        response = await client.get("/threads/7")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="patgate"'
        response = await client.get(
            "/threads/7", headers={"Authorization": "Bearer " + runtime.token_format.generate()}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == (
            'Bearer realm="patgate", error="invalid_token", '
            'error_description="invalid or unknown token"'
        )


async def test_missing_scope_gets_403(settings: Settings, tmp_path: Path) -> None:
    async with _stack(settings, tmp_path) as (client, runtime):
        await add_user(runtime.store, "u1")
        token = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
        response = await client.post(
            "/threads", headers={"Authorization": f"Bearer {token.secret}"}
        )
        assert response.status_code == 403


async def test_public_route_passes_without_identity(settings: Settings, tmp_path: Path) -> None:
    async with _stack(settings, tmp_path) as (client, _):
        response = await client.get("/public", headers={"X-Patgate-Owner-Id": "forged"})
        assert response.status_code == 200
        assert not any(name.startswith("x-patgate-") for name in response.json())
