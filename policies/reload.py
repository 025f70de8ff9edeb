"""Hot reload: keep the last good policy, swap in a new one only when it is valid.

Reloads happen when the file changes (``watch`` polls its mtime, size and inode, which
also catches the atomic rename editors and ConfigMap updates use) or on ``SIGHUP``.
Every attempt is reported to ``on_reload(ok)`` (the data plane counts it in
``patgate_policy_reloads_total{result="success|failure"}``); a failure is logged with the
file/rule/field message and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from patgate.policies.engine import Policy, load_policy
from patgate.policies.errors import PolicyError

__all__ = ["PolicyHolder"]

_log = logging.getLogger("patgate.policy")

_Signature = tuple[int, int, int]


def _signature(path: Path) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PolicyHolder:
    """The current policy of one process. Readers use ``holder.current`` per request;
    a reload replaces the attribute in one assignment, so readers never see a mix."""

    __slots__ = ("_on_reload", "_seen", "current", "path")

    def __init__(
        self,
        path: Path,
        on_reload: Callable[[bool], None] | None = None,
        *,
        initial: Policy | None = None,
    ) -> None:
        """Load ``path`` now (raising ``PolicyError`` if invalid) unless ``initial`` is
        given — start-up must fail loudly, later reloads must not. ``on_reload(ok)`` hears
        of every reload attempt."""
        self.path = path
        self._on_reload = on_reload
        self._seen = _signature(path)
        self.current: Policy = initial if initial is not None else load_policy(path)

    def reload(self) -> bool:
        """Load the file again; on any error keep the old policy. True if swapped in."""
        self._seen = _signature(self.path)
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            if self._on_reload is not None:
                self._on_reload(False)
            _log.error("policy reload failed, keeping the current policy:\n%s", exc)
            return False
        self.current = policy
        if self._on_reload is not None:
            self._on_reload(True)
        _log.info("policy reloaded from %s (%d rules)", self.path, len(policy.spec.rules))
        return True

    def changed(self) -> bool:
        """Whether the file looks different from the last load attempt."""
        sig = _signature(self.path)
        # A vanished file (mid-rename, or deleted) is not a change: keep what we have.
        return sig is not None and sig != self._seen

    async def watch(self, interval: float = 1.0) -> None:
        """Poll the file every ``interval`` seconds and reload when it changed; runs
        until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload()

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload on ``SIGHUP`` (Unix only), from the event loop, not a signal frame."""
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def remove_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_signal_handler(signal.SIGHUP)
