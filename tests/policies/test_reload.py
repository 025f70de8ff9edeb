"""Hot reload for real: files on disk, a polling task, and a SIGHUP to this process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from patgate.policies.errors import PolicyError
from patgate.policies.reload import PolicyHolder

V1 = '[[rules]]\nname = "one"\npath = "/one"\npublic = true\n'
V2 = '[[rules]]\nname = "two"\npath = "/two"\npublic = true\n'
BROKEN = '[[rules]]\nname = "bad"\npath = "/x"\nscopes = ["nope"]\n'


class Reloads:
    """The ``on_reload`` callback: what the data plane turns into its metric."""

    def __init__(self) -> None:
        self.results: list[bool] = []

    def __call__(self, ok: bool) -> None:
        self.results.append(ok)


def _count(reloads: Reloads, result: str) -> int:
    return reloads.results.count(result == "success")


def _rewrite(path: Path, text: str) -> None:
    """Replace the file and make sure its mtime moves even on coarse-clock filesystems."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(V1)
    return path


def test_start_up_fails_loudly_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BROKEN)
    with pytest.raises(PolicyError, match="rule 1 'bad', field 'scopes'"):
        PolicyHolder(path, Reloads())


def test_reload_swaps_good_and_keeps_old_on_bad(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Reloads()
    holder = PolicyHolder(policy_file, metrics)
    first = holder.current
    assert first.route("GET", "/one").rule == "one"

    _rewrite(policy_file, BROKEN)
    with caplog.at_level(logging.ERROR, logger="patgate.policy"):
        assert holder.reload() is False
    assert holder.current is first
    assert "rule 1 'bad', field 'scopes'" in caplog.text
    assert str(policy_file) in caplog.text
    assert (_count(metrics, "success"), _count(metrics, "failure")) == (0, 1)

    policy_file.unlink()
    assert holder.reload() is False
    assert holder.current is first
    assert _count(metrics, "failure") == 2

    policy_file.write_text(V2)
    assert holder.reload() is True
    assert holder.current.route("GET", "/two").rule == "two"
    assert holder.current.route("GET", "/one").denied == "no_rule"
    assert (_count(metrics, "success"), _count(metrics, "failure")) == (1, 2)


def test_changed_tracks_the_file(policy_file: Path) -> None:
    holder = PolicyHolder(policy_file, Reloads())
    assert not holder.changed()
    _rewrite(policy_file, V2)
    assert holder.changed()
    holder.reload()
    assert not holder.changed()
    policy_file.unlink()
    assert not holder.changed()  # a vanished file is not a change


@pytest.mark.anyio
async def test_watch_reloads_on_change(policy_file: Path) -> None:
    metrics = Reloads()
    holder = PolicyHolder(policy_file, metrics)
    task = asyncio.create_task(holder.watch(interval=0.02))
    try:
        await asyncio.sleep(0.1)
        assert _count(metrics, "success") == 0  # unchanged file: no reload
        _rewrite(policy_file, V2)
        for _ in range(200):
            if _count(metrics, "success") == 1:
                break
            await asyncio.sleep(0.01)
        assert holder.current.route("GET", "/two").rule == "two"
        _rewrite(policy_file, BROKEN)
        for _ in range(200):
            if _count(metrics, "failure") == 1:
                break
            await asyncio.sleep(0.01)
        assert _count(metrics, "failure") == 1
        await asyncio.sleep(0.1)  # a failed file is not retried until it changes again
        assert (_count(metrics, "success"), _count(metrics, "failure")) == (1, 1)
        assert holder.current.route("GET", "/two").rule == "two"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.anyio
async def test_sighup_reloads(policy_file: Path) -> None:
    metrics = Reloads()
    holder = PolicyHolder(policy_file, metrics)
    loop = asyncio.get_running_loop()
    holder.install_sighup(loop)
    try:
        _rewrite(policy_file, V2)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if _count(metrics, "success") == 1:
                break
            await asyncio.sleep(0.01)
        assert _count(metrics, "success") == 1
        assert holder.current.route("GET", "/two").rule == "two"

        _rewrite(policy_file, BROKEN)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if _count(metrics, "failure") == 1:
                break
            await asyncio.sleep(0.01)
        assert _count(metrics, "failure") == 1
        assert holder.current.route("GET", "/two").rule == "two"
    finally:
        holder.remove_sighup(loop)
