"""The OpenAPI description of the notification endpoints (issue 14): webhook endpoints
and dead letters. Merged into :func:`.openapi.openapi_document`."""

from __future__ import annotations

from typing import Any

from patgate.gateway.notify.webhooks import EVENT_TYPES

__all__ = ["notify_paths", "notify_schemas"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str], *, closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if closed:
        out["additionalProperties"] = False
    return out


_EVENTS = {"type": "array", "items": {"enum": ["*", *EVENT_TYPES]}, "minItems": 1}


def notify_schemas() -> dict[str, Any]:
    endpoint = {
        "id": {"type": "string"},
        "org_id": {"type": "string"},
        "url": {"type": "string"},
        "event_types": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        "created_at": {"type": "number"},
    }
    return {
        "Webhook": _obj(endpoint, list(endpoint)),
        "WebhookWithSecret": _obj(
            {
                **endpoint,
                "secret": {
                    "type": "string",
                    "pattern": "^whsec_",
                    "description": "the signing secret (Standard Webhooks), shown this once",
                },
            },
            [*endpoint, "secret"],
        ),
        "WebhookCreate": _obj(
            {
                "url": {
                    "type": "string",
                    "maxLength": 2048,
                    "description": "http(s) URL; private and loopback addresses are refused "
                    "unless PATGATE_WEBHOOK_ALLOW_PRIVATE",
                },
                "event_types": {**_EVENTS, "description": "default: every type (*)"},
                "description": {"type": "string", "maxLength": 200},
            },
            ["url"],
        ),
        "WebhookList": _obj({"items": {"type": "array", "items": _ref("Webhook")}}, ["items"]),
        "WebhookAttempts": _obj(
            {
                "items": {
                    "type": "array",
                    "items": _obj(
                        {
                            "id": {"type": "string", "description": "the webhook-id"},
                            "at": {"type": "number"},
                            "ok": {"type": "boolean"},
                            "status": {"type": ["integer", "null"]},
                            "error": {"type": ["string", "null"]},
                            "duration_ms": {"type": "number"},
                            "retryable": {"type": "boolean"},
                        },
                        ["at", "ok", "status", "error"],
                        closed=False,
                    ),
                }
            },
            ["items"],
        ),
        "Queued": _obj(
            {"id": {"type": "string"}, "status": {"enum": ["queued"]}}, ["id", "status"]
        ),
        "DeadLetter": _obj(
            {
                "id": {"type": "string", "description": "the idempotency key"},
                "channel": {"enum": ["mail", "webhook"]},
                "org_id": {"type": "string"},
                "target": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}},
                    ],
                    "description": "the endpoint id, or the mail's recipients",
                },
                "event_type": {"type": "string"},
                "created_at": {"type": "number"},
                "attempts": {"type": "integer", "minimum": 0},
                "last_error": {"type": ["string", "null"]},
                "dead_at": {"type": ["number", "null"]},
            },
            ["id", "channel", "org_id", "target", "event_type", "attempts"],
        ),
        "DeadLetters": _obj({"items": {"type": "array", "items": _ref("DeadLetter")}}, ["items"]),
    }


def notify_paths(
    op: Any, json: Any, errors: dict[str, str], org_param: dict[str, Any]
) -> dict[str, Any]:
    """The paths, built with openapi.py's own helpers (``op`` = ``_op``, ``json`` =
    ``_json``) so every operation documents its errors the same way."""
    read, one, edit = errors["read"], errors["one"], errors["edit"]
    hook_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    params = [org_param]
    with_id = [hook_id, org_param]
    return {
        "/v1/webhooks": {
            "post": op(
                "Add a webhook endpoint (tokens:admin); its signing secret is shown once",
                ("201", json(_ref("WebhookWithSecret"), "the endpoint and its secret")),
                edit,
                params=params,
                body=_ref("WebhookCreate"),
            ),
            "get": op(
                "The organization's webhook endpoints",
                ("200", json(_ref("WebhookList"), "endpoints")),
                read,
                params=params,
            ),
        },
        "/v1/webhooks/{id}": {
            "get": op(
                "One endpoint (never its secret)",
                ("200", json(_ref("Webhook"), "endpoint")),
                one,
                params=with_id,
            ),
            "delete": op(
                "Remove an endpoint; its pending deliveries are dropped",
                ("204", {"description": "deleted"}),
                one,
                params=with_id,
            ),
        },
        "/v1/webhooks/{id}/rotate": {
            "post": op(
                "A new signing secret, shown once; every later delivery is signed with it",
                ("200", json(_ref("WebhookWithSecret"), "the endpoint and its new secret")),
                one,
                params=with_id,
            )
        },
        "/v1/webhooks/{id}/test": {
            "post": op(
                "Queue a webhook.test delivery (its outcome shows in the attempts)",
                ("202", json(_ref("Queued"), "queued")),
                one,
                params=with_id,
            )
        },
        "/v1/webhooks/{id}/attempts": {
            "get": op(
                "The endpoint's last delivery attempts, newest first",
                ("200", json(_ref("WebhookAttempts"), "attempts")),
                one,
                params=with_id,
            )
        },
        "/v1/notifications/dead": {
            "get": op(
                "Notifications given up on (dead letters), newest first",
                ("200", json(_ref("DeadLetters"), "dead letters")),
                read,
                params=params,
            )
        },
        "/v1/notifications/dead/{id}/retry": {
            "post": op(
                "Queue a dead letter again, its attempts reset",
                ("200", json(_ref("DeadLetter"), "queued again")),
                one,
                params=with_id,
            )
        },
    }
