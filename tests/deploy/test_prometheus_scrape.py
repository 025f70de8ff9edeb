"""A real Prometheus scrapes a real ``patgate serve`` and sees the traffic sent through it.

Everything runs as separate processes on 127.0.0.1 with free ports: the sample upstream
(uvicorn), ``patgate serve`` with its embedded Valkey in a temp dir, and ``prometheus``
with deploy/prometheus/alerts.yml loaded and a 1 s scrape interval. The test then reads
``patgate_*`` series back through Prometheus' HTTP API, runs every dashboard query and
checks every alert rule evaluates cleanly against the scraped data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy._support import (
    PROMETHEUS_DIR,
    REPO,
    dashboard_exprs,
    plain_expr,
    require_tool,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

_DEADLINE = 30.0  # seconds for any one thing to come up or show up
_VALID, _ANONYMOUS, _BAD_TOKEN = 5, 3, 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with {code}:\n{_tail(self.log)}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _start(name: str, argv: list[str], env: dict[str, str], tmp: Path) -> _Process:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return _Process(name, popen, log)


def _wait_for(what: str, check: Callable[[], bool], proc: _Process | None = None) -> None:
    deadline = time.monotonic() + _DEADLINE
    while time.monotonic() < deadline:
        if proc is not None:
            proc.alive()
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    log = f":\n{_tail(proc.log)}" if proc is not None else ""
    raise AssertionError(f"{what} not within {_DEADLINE}s{log}")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env.update(
        PATGATE_DATA_DIR=str(tmp / "data"),
        PATGATE_PEPPER="scrape-test-pepper",
        PATGATE_LOG_LEVEL="warning",
        PYTHONPATH=str(REPO),
    )
    return env


@dataclass(frozen=True)
class _Patgate:
    gateway: str
    admin_port: int
    secret: str


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def patgate(tmp_path: Path, client: httpx.Client) -> Iterator[_Patgate]:
    env = _env(tmp_path)
    cli = [sys.executable, "-m", "patgate.gateway.cli"]
    upstream_port, gateway_port, admin_port = _free_port(), _free_port(), _free_port()
    bootstrap = subprocess.run(
        [*cli, "bootstrap"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert bootstrap.returncode == 0, bootstrap.stderr
    secret = bootstrap.stdout.splitlines()[0].strip()
    upstream = _start(
        "upstream",
        [sys.executable, "-m", "uvicorn", "patgate.gateway.sample:sample_upstream",
         "--host", "127.0.0.1", "--port", str(upstream_port), "--log-level", "warning"],
        env,
        tmp_path,
    )  # fmt: skip
    server = _start(
        "patgate",
        [*cli, "serve", "--listen", f"127.0.0.1:{gateway_port}",
         "--admin-listen", f"127.0.0.1:{admin_port}",
         "--upstream", f"http://127.0.0.1:{upstream_port}"],
        env,
        tmp_path,
    )  # fmt: skip
    try:
        _wait_for(
            "sample upstream",
            lambda: client.get(f"http://127.0.0.1:{upstream_port}/").status_code == 200,
            upstream,
        )
        _wait_for(
            "patgate /readyz",
            lambda: client.get(f"http://127.0.0.1:{admin_port}/readyz").status_code == 200,
            server,
        )
        yield _Patgate(f"http://127.0.0.1:{gateway_port}", admin_port, secret)
    finally:
        server.stop()
        upstream.stop()


@pytest.fixture
def prometheus(tmp_path: Path, patgate: _Patgate, client: httpx.Client) -> Iterator[str]:
    binary = require_tool("prometheus")
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "patgate",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{patgate.admin_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = _start(
        "prometheus",
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        os.environ.copy(),
        tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "prometheus /-/ready", lambda: client.get(f"{url}/-/ready").status_code == 200, proc
        )
        yield url
    finally:
        proc.stop()


def _query(client: httpx.Client, prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = client.get(f"{prometheus}/api/v1/query", params={"query": promql})
    body = response.json()
    assert response.status_code == 200, (promql, body)
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _values(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def _send_traffic(client: httpx.Client, patgate: _Patgate) -> None:
    for i in range(_VALID):
        auth = {"Authorization": f"Bearer {patgate.secret}"}
        r = client.get(f"{patgate.gateway}/items/{i}", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["path"] == f"/items/{i}"
    for _ in range(_ANONYMOUS):
        r = client.get(f"{patgate.gateway}/items")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
    for _ in range(_BAD_TOKEN):
        r = client.get(f"{patgate.gateway}/items", headers={"Authorization": "Bearer pat_nope"})
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_prometheus_reads_patgate_series_after_traffic(
    patgate: _Patgate, prometheus: str, client: httpx.Client
) -> None:
    _send_traffic(client, patgate)
    total = _VALID + _ANONYMOUS + _BAD_TOKEN
    query = "sum(patgate_decisions_total)"

    def scraped_everything() -> bool:
        return _values(_query(client, prometheus, query), "") == {"": float(total)}

    _wait_for(f"Prometheus to scrape {total} decisions", scraped_everything)

    decisions = _query(client, prometheus, "patgate_decisions_total")
    by_reason = {
        (r["metric"]["outcome"], r["metric"]["reason"]): float(r["value"][1]) for r in decisions
    }
    assert by_reason[("allow", "ok")] == _VALID
    assert by_reason[("deny", "missing_credentials")] == _ANONYMOUS
    assert by_reason[("deny", "invalid_token")] == _BAD_TOKEN
    for series in decisions:
        assert series["metric"]["job"] == "patgate"
        assert series["metric"]["instance"] == f"127.0.0.1:{patgate.admin_port}"

    assert _values(_query(client, prometheus, 'up{job="patgate"}'), "job") == {"patgate": 1.0}
    assert _values(_query(client, prometheus, "patgate_decision_seconds_count"), "") == {
        "": float(total)
    }
    upstream = _values(
        _query(client, prometheus, "patgate_upstream_requests_total"), "status_class"
    )
    assert upstream["2xx"] == _VALID
    assert _values(_query(client, prometheus, "patgate_redis_up"), "") == {"": 1.0}
    # Nothing in the exposition may carry the secret (SPEC: never in metrics).
    exposition = client.get(f"http://127.0.0.1:{patgate.admin_port}/metrics").text
    assert patgate.secret not in exposition

    # Every dashboard query runs on the real engine over the scraped data.
    for expr in dashboard_exprs():
        _query(client, prometheus, plain_expr(expr))

    # Every alert rule evaluates without error against the scraped series.
    def rules_evaluated() -> bool:
        groups = client.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return bool(rules) and all(r["health"] == "ok" for r in rules)

    _wait_for("every alert rule to evaluate with health ok", rules_evaluated)
    groups = client.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert names == {r["alert"] for g in alerts["groups"] for r in g["rules"]}
