"""A real ``patgate serve`` for the browser tests (issue 15): gateway, admin listener
with the console at ``/console``, over the session's real Valkey under a namespace of
its own, with ``policies/examples/api.toml`` in front of the sample upstream.

Org ``acme`` comes from ``patgate bootstrap`` (admin ``admin``); the management API of
the same process sets its catalogue (resources, roles, member scopes) and adds users.
Every check of a token's effect goes through the gateway listener: 200, 401 or 403.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.test_processes import _free_port, _until

__all__ = ["ORG", "ServeWorld", "serve_world"]

ROOT = Path(__file__).resolve().parents[3]
POLICY = ROOT / "policies" / "examples" / "api.toml"
ORG = {
    "member_scopes": ["threads:*", "messages:*", "workspaces:*"],
    "resources": ["threads", "messages", "workspaces"],
    "roles": {"Developer": ["threads:read", "threads:list", "threads:create"]},
    "max_grace_period": 86_400,
    # Every test module makes many tokens in one org; the default limit (10) is tested
    # elsewhere (tests/gateway/lifecycle/test_limits.py).
    "token_limit": 1000,
}


@dataclass
class ServeWorld:
    gateway: str
    admin: str
    admin_secret: str
    namespace: str
    log: Path
    env: dict[str, str]

    @property
    def console(self) -> str:
        return self.admin + "/console"

    def api(self, method: str, path: str, secret: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": "Bearer " + (secret or self.admin_secret)}
        return httpx.request(method, self.admin + path, headers=headers, timeout=10, **kw)

    def status(
        self, secret: str, path: str = "/v1/workspaces/w1/threads/t1", method: str = "GET"
    ) -> int:
        """What the gateway answers ``secret`` on ``path``: the effect of a console action."""
        headers = {"authorization": "Bearer " + secret}
        return httpx.request(method, self.gateway + path, headers=headers, timeout=10).status_code

    def until_status(
        self, secret: str, want: int, path: str = "/v1/workspaces/w1/threads/t1"
    ) -> None:
        """Revocation reaches the gateway's cache through pub/sub: immediately, but not
        synchronously with the console's answer."""
        _until(lambda: self.status(secret, path) == want, 5, f"gateway answering {want}")

    def add_user(self, user_id: str, *, role: str = "member", **fields: Any) -> None:
        body = {"email": f"{user_id}@acme.example", "name": user_id.capitalize(), "role": role}
        r = self.api("PUT", f"/v1/users/{user_id}", json=body | fields)
        assert r.status_code == 200, r.text

    def token_for(self, user_id: str, scopes: list[str], name: str | None = None) -> str:
        """A token of ``user_id``'s, made by the operator's CLI on the same store: its
        secret (the one thing ``patgate tokens create`` prints on stdout)."""
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        args = [sys.executable, "-m", "patgate", "tokens", "create", "--user", user_id,
                "--org", "acme", "--name", name, *[f"--scope={s}" for s in scopes]]  # fmt: skip
        done = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[0]


def _env(valkey_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PYTHONPATH=str(ROOT),
        PATGATE_REDIS_URL=valkey_url,
        PATGATE_NAMESPACE=namespace,
        PATGATE_NOTIFY="off",
        PATGATE_POLICY_FILE=str(POLICY),
        PATGATE_LASTUSED_INTERVAL="0.2",
    )
    return env


@contextlib.contextmanager
def serve_world(tmp: Path, valkey_url: str) -> Iterator[ServeWorld]:
    namespace = "console-" + uuid.uuid4().hex[:8]
    env = _env(valkey_url, namespace)
    gateway, admin = _free_port(), _free_port()
    log = tmp / "serve.log"
    base = [sys.executable, "-m", "patgate"]
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [*base, "serve", "--listen", f"127.0.0.1:{gateway}",
             "--admin-listen", f"127.0.0.1:{admin}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
    try:

        def ready() -> bool:
            assert serve.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        _until(ready, 60, "patgate serve")
        boot = subprocess.run(
            [*base, "bootstrap", "--org", "acme", "--email", "admin@acme.example"],
            env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp,
        )  # fmt: skip
        assert boot.returncode == 0, boot.stderr
        world = ServeWorld(
            gateway=f"http://127.0.0.1:{gateway}",
            admin=f"http://127.0.0.1:{admin}",
            admin_secret=boot.stdout.strip(),
            namespace=namespace,
            log=log,
            env=env,
        )
        r = world.api("PUT", "/v1/orgs/acme", json=ORG)
        assert r.status_code == 200, r.text
        yield world
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)
