"""``POST /v1/verify``: the data plane's decision for callers that cannot mount the
middleware, through the same :class:`~patgate.middleware.auth.Authenticator` as every
other front door."""

from __future__ import annotations

from typing import Any

from patgate.gateway.lifecycle import Actor
from patgate.middleware.allowlist import parse_address
from patgate.middleware.errors import AuthError, StoreUnavailable, ValidationFailed
from patgate.middleware.runtime import Runtime

__all__ = ["make_verifier"]


def make_verifier(runtime: Runtime[Any]) -> Any:
    """``POST /v1/verify``: the data plane's decision for a non-ASGI caller. ``ip`` is
    the described request's client address: what a token's IP allowlist and the failed-
    authentication limit apply to (without it, a token with an allowlist is refused)."""

    async def verify(body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        token, method, path = body.get("token"), body.get("method"), body.get("path")
        if not (isinstance(token, str) and isinstance(method, str) and isinstance(path, str)):
            raise ValidationFailed("token, method and path: strings required")
        if not (token and method and path):
            raise ValidationFailed("token, method and path: must not be empty")
        ip = body.get("ip")
        if ip is not None and (not isinstance(ip, str) or parse_address(ip) is None):
            raise ValidationFailed("ip: expected the client's IP address")
        extra = body.get("headers") or {}
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise ValidationFailed("headers: expected an object of strings")
        headers = [(b"authorization", b"Bearer " + token.encode("latin-1", "replace"))]
        headers += [
            (k.lower().encode("latin-1", "replace"), v.encode("latin-1", "replace"))
            for k, v in extra.items()
            if k.lower() != "authorization"
        ]
        try:
            resolved = await runtime.authenticator.authenticate(
                method.upper(), path, headers, {"client": None if ip is None else (ip, 0)}
            )
        except AuthError as exc:
            return {
                "allowed": False,
                "status": exc.status_code,
                "error": exc.error,
                "reason": exc.reason,
                "detail": exc.description,
                "scope": exc.scope,
                "identity": None,
            }
        except StoreUnavailable:
            raise
        identity = None
        if resolved is not None:
            i = resolved.identity
            identity = {
                "token_id": i.token_id,
                "owner": {"type": i.owner_kind, "id": i.owner_id},
                "org_id": i.org_id,
                "scopes": sorted(i.scopes),
                "type": i.token_type,
            }
        return {
            "allowed": True,
            "status": 200,
            "error": None,
            "reason": "public" if resolved is None else "ok",
            "detail": None,
            "scope": None,
            "identity": identity,
        }

    return verify
