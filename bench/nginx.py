"""nginx in front of the upstream: the ``proxy_pass`` ceiling and ``auth_request``.

nginx (Debian package) runs in the foreground as one process (``master_process off``,
one worker — like the single uvicorn worker it is compared with) with its config, pid,
logs and temp files in a temporary directory. Both configs keep upstream connections
alive (``keepalive`` + HTTP/1.1 + an empty ``Connection`` header), as a tuned production
config does; without it nginx opens a TCP connection per request and the ceiling is
mostly the kernel's.

``auth_request`` sends each request's method and URI to patgate's forward-auth endpoint
(``X-Original-Method`` / ``X-Original-URI``), copies the identity headers of its 200
answer to the upstream request and drops the client's ``Authorization`` header — the
configuration docs/data-plane.md describes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.servers import Proc, free_port, process

__all__ = ["find_nginx", "nginx_auth_request", "nginx_proxy_pass", "render_config"]

_IDENTITY = ("token-id", "token-type", "owner-type", "owner-id", "org-id", "scopes")

_HEAD = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
{authz_upstream}
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""

_PROXY = """
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{extra}
            proxy_pass http://app;
        }}
"""

_AUTH = """
        location = /_patgate_auth {
            internal;
            proxy_pass http://authz/authz;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
        }
"""


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if Path(candidate).exists():
            return candidate
    return None


def render_config(tmp: Path, port: int, upstream: int, authz: int | None = None) -> str:
    """The nginx config: plain ``proxy_pass``, or ``auth_request`` when ``authz`` is set."""
    if authz is None:
        locations = _PROXY.format(extra="")
        authz_upstream = ""
    else:
        lines = ["            auth_request /_patgate_auth;"]
        for name in _IDENTITY:
            var = "$patgate_" + name.replace("-", "_")
            header = "X-Patgate-" + "-".join(p.capitalize() for p in name.split("-"))
            lines.append(
                f"            auth_request_set {var} "
                f"$upstream_http_x_patgate_{name.replace('-', '_')};"
            )
            lines.append(f'            proxy_set_header {header} "{var}";')
        # The upstream trusts the identity headers, never the client's secret.
        lines.append('            proxy_set_header Authorization "";')
        locations = _PROXY.format(extra="\n".join(lines)) + _AUTH
        authz_upstream = f"    upstream authz {{ server 127.0.0.1:{authz}; keepalive 64; }}"
    return _HEAD.format(
        tmp=tmp, port=port, upstream=upstream, authz_upstream=authz_upstream,
        locations=locations,
    )  # fmt: skip


@contextlib.contextmanager
def _nginx(name: str, upstream: int, authz: int | None) -> Iterator[Proc]:
    binary = find_nginx()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    with tempfile.TemporaryDirectory(prefix="patgate-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(render_config(Path(tmp), port, upstream, authz))
        args = [binary, "-p", tmp, "-e", str(Path(tmp) / "error.log"), "-c", str(conf)]
        with process(name, args, port, ready_path="/healthz") as proc:
            yield proc


def nginx_proxy_pass(upstream: int) -> contextlib.AbstractContextManager[Proc]:
    return _nginx("nginx proxy_pass", upstream, None)


def nginx_auth_request(upstream: int, authz: int) -> contextlib.AbstractContextManager[Proc]:
    return _nginx("nginx auth_request", upstream, authz)
