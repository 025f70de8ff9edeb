"""Pre-forked worker processes (``PATGATE_WORKERS=N``): the parent binds, N workers serve.

Why pre-fork rather than ``SO_REUSEPORT``: the parent binds every listener once (the same
``_bind`` as one process, so a taken port is still one clear error at start-up) and the
workers inherit the listening sockets, all accepting from one queue. A worker that dies
loses nothing queued (with ``SO_REUSEPORT`` each socket has its own accept queue, and the
connections waiting in a dead worker's are reset), and no other process can bind the port
behind our back. This is what gunicorn and ``uvicorn --workers`` do.

Why subprocesses rather than ``os.fork``: the parent may already run threads (the
embedded store's supervisor) and has imported prometheus-client, which picks its value
class when imported; a fresh interpreter per worker has neither. Each worker is
``python -c …`` with the sockets passed by descriptor (``pass_fds``) and its assignment
pickled on stdin. The parent keeps that pipe open: a worker whose parent died (even
``kill -9``) reads EOF and shuts down in order instead of serving on, orphaned.

The parent supervises:

- a worker that dies is started again, after 0.1 s doubling to at most 5 s (reset once a
  worker has served for 10 s); one that fails during start-up (bad policy file) stops
  them all and the parent exits with its code, as one process would;
- SIGTERM/SIGINT are passed on as SIGTERM: every worker stops its listeners, drains and
  flushes its pending last-used entries; one still running after the grace period is
  killed;
- SIGHUP is passed on to every worker (each reloads the policy).

``/metrics`` aggregates the workers with prometheus-client's multiprocess mode: every
worker gets ``PROMETHEUS_MULTIPROC_DIR`` (the operator's, wiped of old ``*.db`` files at
start, or a private temporary one removed at exit), and a dead worker's live gauges are
dropped (:func:`~patgate.middleware.metrics.mark_process_dead`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patgate.middleware.metrics import mark_process_dead

__all__ = ["Supervisor", "assignment", "metrics_dir", "started"]

_log = logging.getLogger("patgate")

#: restart backoff: first delay, cap, and how long a worker must serve to reset it.
_FIRST_DELAY = 0.1
_MAX_DELAY = 5.0
_STABLE = 10.0
#: how often the parent looks at its workers when no signal arrives.
_TICK = 0.2
_LENGTH = struct.Struct("!Q")
_STOPS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    ready_fd: int | None  # the pipe's read end, until the worker reports ready
    started_at: float
    ready: bool = False


class Supervisor:
    """Start ``count`` copies of ``command``, each given ``payload`` and the inherited
    descriptors ``fds``, and keep them running until SIGTERM/SIGINT."""

    def __init__(
        self,
        command: Sequence[str],
        payload: object,
        fds: Sequence[int],
        count: int,
        *,
        env: dict[str, str],
        metrics_dir: str,
        grace: float,
    ) -> None:
        self._command = list(command)
        self._payload = payload
        self._fds = tuple(fds)
        self._count = count
        self._env = env
        self._metrics_dir = metrics_dir
        self._grace = grace
        self._workers: dict[int, _Worker] = {}
        self._failures = [0] * count
        self._due: dict[int, float] = {}  # slot -> when to start it again

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers.values()]

    def run(self, stop_requested: threading.Event) -> int:
        """Supervise until asked to stop; 0, or a worker's exit code if start-up failed."""
        with _Signals.installed() as signals:
            for slot in range(self._count):
                self._spawn(slot)
            booting = True
            while not stop_requested.is_set():
                taken = signals.take()
                if taken & set(_STOPS):
                    break
                if signal.SIGHUP in taken:
                    _log.info("SIGHUP: passing it on to %d workers", len(self._workers))
                    for w in self._workers.values():
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.send_signal(signal.SIGHUP)
                failed = self._check(booting)
                if failed is not None:
                    self._stop_all()
                    return failed
                if booting and not self._due and all(w.ready for w in self._workers.values()):
                    booting = False
                    _log.info("%d workers serving: %s", self._count, self.pids)
                signals.wait(self._timeout(), [w.ready_fd for w in self._workers.values()])
            self._stop_all()
        return 0

    # -- one worker ----------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and entry point
                self._command,
                stdin=subprocess.PIPE,
                pass_fds=(*self._fds, ready_w),
                env=self._env,
            )
        finally:
            os.close(ready_w)
        assert proc.stdin is not None
        data = pickle.dumps((self._payload, ready_w))
        # The pipe stays open: the worker stops when it reads EOF (its parent is gone).
        proc.stdin.write(_LENGTH.pack(len(data)) + data)
        proc.stdin.flush()
        self._workers[slot] = _Worker(slot, proc, ready_r, time.monotonic())

    def _check(self, booting: bool) -> int | None:
        """Note ready workers, replace dead ones; the exit code that ends start-up."""
        now = time.monotonic()
        for slot, w in list(self._workers.items()):
            if w.ready_fd is not None:
                with contextlib.suppress(BlockingIOError):
                    if os.read(w.ready_fd, 1):
                        w.ready = True
                        os.close(w.ready_fd)
                        w.ready_fd = None
            code = w.proc.poll()
            if code is None:
                continue
            self._reap(w)
            del self._workers[slot]
            if booting and not w.ready:
                _log.error("worker %d exited with code %d during start-up", w.proc.pid, code)
                return code or 1
            if now - w.started_at >= _STABLE:
                self._failures[slot] = 0
            delay = min(_FIRST_DELAY * 2 ** self._failures[slot], _MAX_DELAY)
            self._failures[slot] += 1
            _log.warning(
                "worker %d exited with code %d; starting another in %.1f s", w.proc.pid, code, delay
            )
            self._due[slot] = now + delay
        for slot, due in list(self._due.items()):
            if due <= now:
                del self._due[slot]
                self._spawn(slot)
        return None

    def _timeout(self) -> float:
        now = time.monotonic()
        return max(0.0, min([_TICK, *(due - now for due in self._due.values())]))

    def _reap(self, w: _Worker) -> None:
        if w.ready_fd is not None:
            os.close(w.ready_fd)
            w.ready_fd = None
        if w.proc.stdin is not None:
            with contextlib.suppress(OSError):
                w.proc.stdin.close()
        mark_process_dead(w.proc.pid, self._metrics_dir)

    def _stop_all(self) -> None:
        self._due.clear()
        for w in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for w in self._workers.values():
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("worker %d did not stop in %.0f s; killing it", w.proc.pid, self._grace)
                w.proc.kill()
                w.proc.wait()
            self._reap(w)
        self._workers.clear()


class _Signals:
    """SIGTERM/SIGINT/SIGHUP, queued by their handlers; each one wakes :meth:`wait`
    through ``signal.set_wakeup_fd``."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def take(self) -> set[int]:
        taken = set()
        while self.pending:
            taken.add(self.pending.pop())
        return taken

    def wait(self, timeout: float, fds: Sequence[int | None]) -> None:
        """Sleep until a signal arrives, a worker reports ready, or ``timeout``."""
        if self.pending:
            return
        ready = [self._wake_r.fileno(), *(fd for fd in fds if fd is not None)]
        readable, _, _ = select.select(ready, [], [], timeout)
        if self._wake_r.fileno() in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)

    @classmethod
    @contextlib.contextmanager
    def installed(cls) -> Iterator[_Signals]:
        self = cls()

        def handler(signum: int, frame: object) -> None:
            self.pending.append(signum)

        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, handler) for sig in (*_STOPS, signal.SIGHUP)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.set_wakeup_fd(old_wakeup)
            self._wake_r.close()
            self._wake_w.close()


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """The ``PROMETHEUS_MULTIPROC_DIR`` for the workers: the operator's, emptied of a
    previous run's files (prometheus-client requires it), or a private temporary one."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield given
        return
    private = tempfile.mkdtemp(prefix="patgate-metrics-")
    try:
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)


# -- the worker's side -------------------------------------------------------------------


def assignment() -> tuple[Any, int]:
    """In a worker: the payload and the ready pipe's descriptor, read from stdin."""
    (size,) = _LENGTH.unpack(_read_exactly(0, _LENGTH.size))
    payload, ready_fd = pickle.loads(_read_exactly(0, size))  # noqa: S301 - our parent's
    return payload, int(ready_fd)


def started(ready_fd: int, stop: Callable[[], None]) -> None:
    """In a worker's event loop: report ready, and ``stop`` when the parent is gone."""
    import asyncio

    os.write(ready_fd, b"1")
    os.close(ready_fd)
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        if not os.read(0, 4096):
            loop.remove_reader(0)
            _log.warning("the supervising process is gone; stopping")
            stop()

    loop.add_reader(0, parent_gone)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the supervising process closed the pipe")
        data += chunk
    return data
