"""deploy/healthcheck.py (the image's HEALTHCHECK) against real loopback HTTP servers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.deploy._support import DEPLOY

SCRIPT = DEPLOY / "healthcheck.py"


def _server(status: int) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status if self.path == "/healthz" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def ok_port() -> Iterator[int]:
    yield from _server(200)


@pytest.fixture
def failing_port() -> Iterator[int]:
    yield from _server(503)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _run(admin: int, authz: int) -> int:
    env = {
        "PATGATE_ADMIN_LISTEN": f"0.0.0.0:{admin}",
        "PATGATE_AUTHZ_LISTEN": f"0.0.0.0:{authz}",
    }
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, timeout=30, check=False)
    return result.returncode


def test_admin_listener_healthy(ok_port: int, closed_port: int) -> None:
    assert _run(ok_port, closed_port) == 0


def test_authz_role_healthy_without_admin_listener(ok_port: int, closed_port: int) -> None:
    assert _run(closed_port, ok_port) == 0


def test_nothing_listening_is_unhealthy(closed_port: int) -> None:
    assert _run(closed_port, closed_port) == 1


def test_error_status_is_unhealthy(failing_port: int, closed_port: int) -> None:
    assert _run(failing_port, closed_port) == 1
