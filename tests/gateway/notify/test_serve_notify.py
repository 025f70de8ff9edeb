"""``patgate serve`` runs the notification worker (issue 14): a real ``patgate serve``
subprocess on the embedded store mails the admin of a bootstrapped org through a real
SMTP server on loopback, and counts it in ``/metrics``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.gateway.test_processes import _until

from ._smtp import smtp_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_delivers_notifications(tmp_path: Path) -> None:
    admin = _free_port()
    with smtp_server(tmp_path) as smtp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            PYTHONPATH=str(ROOT),
            PATGATE_SMTP_HOST="127.0.0.1",
            PATGATE_SMTP_PORT=str(smtp.port),
            PATGATE_SMTP_SECURITY="none",
        )
        base = [sys.executable, "-m", "patgate", "--data-dir", str(tmp_path / "data")]
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            serve = subprocess.Popen(
                [*base, "serve", "--listen", f"127.0.0.1:{_free_port()}",
                 "--admin-listen", f"127.0.0.1:{admin}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        try:

            def ready() -> bool:
                assert serve.poll() is None, log.read_text()
                try:
                    return httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            _until(ready, 60, "patgate serve")
            boot = subprocess.run(
                [*base, "bootstrap", "--org", "acme"],
                env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
            )  # fmt: skip
            assert boot.returncode == 0, boot.stderr
            secret = boot.stdout.strip()
            _until(lambda: len(smtp.messages) >= 1, 20, "the created mail")
            (mail,) = smtp.messages
            assert mail.recipients == ("admin@localhost",)
            assert secret not in mail.raw.decode()
            metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
            assert 'patgate_notifications_sent_total{channel="mail"} 1.0' in metrics
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(30)
        assert code == 0, log.read_text()
        assert secret not in log.read_text()
