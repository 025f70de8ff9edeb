"""Liveness and readiness endpoints (pure ASGI, tiny JSON bodies).

* ``/healthz`` — the process is alive and its event loop answers: always 200
  ``{"status": "ok"}``. Nothing external is checked, so an orchestrator never restarts a
  healthy process because Redis had a hiccup.
* ``/readyz`` — 200 ``{"status": "ready", "checks": {...}}`` when Redis answers PING and
  the invalidation subscription is connected; otherwise 503 with the failing check(s)
  named, e.g. ``{"status": "unready", "checks": {"redis": "ok", "subscriber": "…"}}``.
  Without the subscription the cache is off (every request costs a Redis round trip),
  so a replica is taken out of rotation rather than silently running slow.
  Under ``patgate serve`` on the embedded store there is one more check first,
  ``store_process``: ``"ok"`` while the supervised ``valkey-server`` runs, or
  ``"restarting (attempt n)"`` while the supervisor brings a dead one back
  (:mod:`gateway.embedded`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send

from patgate.middleware.runtime import Runtime

__all__ = ["HealthEndpoints"]


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HealthEndpoints:
    """``healthz`` and ``readyz`` as ASGI callables for one runtime."""

    def __init__(self, runtime: Runtime[Any]) -> None:
        self._runtime = runtime

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"status": "ok"})

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        checks = await self._runtime.ready()
        ok = all(v == "ok" for v in checks.values())
        await _send_json(
            send, 200 if ok else 503, {"status": "ready" if ok else "unready", "checks": checks}
        )
