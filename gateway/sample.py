"""A tiny sample upstream for ``patgate serve`` when no upstream is configured.

It echoes what reached it — method, path, and the identity headers patgate set — so the
quick start shows a token working end to end without any other service.
"""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send

__all__ = ["sample_upstream"]


async def sample_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in scope["headers"]
        if k.startswith(b"x-patgate-") or k.startswith(b"x-forwarded-")
    }
    body = json.dumps(
        {
            "upstream": "patgate sample upstream",
            "method": scope["method"],
            "path": scope["path"],
            "identity": headers,
            "authorization_forwarded": any(k == b"authorization" for k, _ in scope["headers"]),
        },
        indent=2,
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
