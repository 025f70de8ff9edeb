"""Start-up (issue 11): ``patgate serve`` against a store it cannot reach — a standalone
server, a Cluster's seed nodes, a Sentinel group — stops at once with one error line that
names the URL (without its password) and the topology, and a non-zero exit; a URL that
does not parse is a configuration error (exit 2). Nothing is left listening."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from patgate.gateway.settings import ENV_VARS
from tests.middleware._servers import free_port


def _serve(url: str, tmp_path: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run(
        [
            sys.executable, "-m", "patgate", "--redis-url", url, "serve",
            "--listen", f"127.0.0.1:{free_port()}",
            "--admin-listen", f"127.0.0.1:{free_port()}",
        ],
        capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("template", "what"),
    [
        ("redis://:s3cret@127.0.0.1:{a}/0", "cannot reach the store at redis://:***@127.0.0.1"),
        (
            "redis+cluster://user:s3cret@127.0.0.1:{a},127.0.0.1:{b}",
            "cannot reach the cluster at redis+cluster://user:***@127.0.0.1",
        ),
        (
            "redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}/patgate",
            "cannot reach a primary through the sentinels at redis+sentinel://127.0.0.1",
        ),
    ],
    ids=["standalone", "cluster", "sentinel"],
)
def test_an_unreachable_store_stops_serve_with_one_line(
    template: str, what: str, tmp_path: object
) -> None:
    url = template.format(a=free_port(), b=free_port())
    done = _serve(url, tmp_path)
    assert done.returncode == 3, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("patgate: error: " + what), lines[0]
    assert "s3cret" not in done.stderr
    assert "listening on" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://", "redis+sentinel://127.0.0.1:1", "redis+cluster://h:99999", "nope://x"],
)
def test_a_wrong_store_url_is_a_configuration_error(url: str, tmp_path: object) -> None:
    done = _serve(url, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("patgate: error: PATGATE_REDIS_URL"), lines
