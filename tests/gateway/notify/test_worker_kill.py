"""Failure drill (issue 14): ``patgate notify`` killed with SIGKILL in the middle of a
batch, then started again — every notification it held is delivered after the restart,
nothing is lost, duplicates only as at-least-once allows (the Message-ID names them).

Real processes (``python -m patgate.gateway.cli notify``), the session's real Valkey, a
real (deliberately slow) SMTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from patgate.gateway.notify.worker import GROUP
from patgate.middleware.store import TokenStore
from tests.gateway.lifecycle._world import make_world, member

from ._smtp import SmtpServer, smtp_server, wait_for_messages

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_ROOT = Path(__file__).resolve().parents[3]
MAILS = 12


def _env(url: str, namespace: str, smtp: SmtpServer) -> dict[str, str]:
    env = {
        **os.environ,
        "PATGATE_REDIS_URL": url,
        "PATGATE_NAMESPACE": namespace,
        "PATGATE_SMTP_HOST": "127.0.0.1",
        "PATGATE_SMTP_PORT": str(smtp.port),
        "PATGATE_SMTP_SECURITY": "none",
        "PATGATE_SMTP_TIMEOUT": "3",
        "PATGATE_NOTIFY_BACKOFF": "0.05",
        # A dead worker's events and leases are someone else's within a second or two.
        "PATGATE_NOTIFY_CLAIM_IDLE": "1",
        "PATGATE_NOTIFY_LEASE": "2",
        "PYTHONPATH": str(_ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@contextlib.asynccontextmanager
async def notify_process(
    env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from patgate.gateway.cli import main; sys.exit(main(['notify']))",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20.0)
        assert b"delivering as" in line, line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()  # only the process this test started
        await proc.wait()


async def _group_ready(store: TokenStore, org: str = "acme") -> None:
    stream = store.keys_for(org).events
    for _ in range(400):
        with contextlib.suppress(Exception):
            groups = await store.client.xinfo_groups(stream)  # type: ignore[union-attr]
            if any(g["name"] in (GROUP, GROUP.encode()) for g in groups):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the worker never created its consumer group")


async def test_a_worker_killed_mid_batch_loses_nothing(
    store: TokenStore, store_url: str, namespace: str, tmp_path: Path
) -> None:
    w = await make_world(store)
    await w.directory.put_org(w.system, "acme", {"token_limit": None})
    alice = member("alice")
    with smtp_server(tmp_path) as smtp:
        smtp.data_delay = 0.15  # each mail takes a while: the kill lands mid-batch
        env = _env(store_url, namespace, smtp)
        log = tmp_path / "notify.log"
        secrets = []
        async with notify_process(env, log) as first:
            await _group_ready(store)
            for i in range(MAILS):
                secrets.append((await w.tokens.create(alice, name=f"k{i}"))[1])
            await wait_for_messages(smtp, 2, timeout=20.0)
            first.send_signal(signal.SIGKILL)
            await first.wait()
        delivered_before = len(smtp.messages)
        assert delivered_before < MAILS, "the kill came too late to be mid-batch"
        async with notify_process(env, log) as second:
            await wait_for_messages(smtp, MAILS, timeout=30.0)
            await asyncio.sleep(0.5)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 20.0) == 0
    ids = Counter(m.header("Message-ID") for m in smtp.messages)
    assert len(ids) == MAILS  # every notification, each under its one idempotency key
    # At least once: only one the killed worker was sending can arrive twice.
    assert sum(ids.values()) - MAILS <= 1, ids
    # No secret in any message or log line.
    everything = b"".join(m.raw for m in smtp.messages) + log.read_bytes()
    for secret in secrets:
        assert secret.encode() not in everything
