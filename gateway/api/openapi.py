"""The OpenAPI 3.1 document of the management API (served at ``/v1/openapi.json``).

Written by hand next to the routes; ``tests/gateway/test_openapi.py`` fails when a route
and this document disagree (a path or method missing on either side), and checks real
responses against the schemas named here.
"""

from __future__ import annotations

from typing import Any

from gateway.lifecycle.expiry import PRESETS
from middleware.tokenformat import TokenFormat

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = {
    code: _json(_ref("Error"), text)
    for code, text in {
        "400": "Validation error; nothing changed",
        "401": "Missing, unknown, revoked or expired token (RFC 6750)",
        "403": "The token lacks the scope or role for this operation",
        "404": "No such resource (or not visible to this token)",
        "409": "Name already taken for this owner, or a concurrent change",
        "422": "Valid input the organization's policy does not allow",
        "429": "Token limit reached for this owner",
        "503": "Token store unavailable",
    }.items()
}


def _op(
    summary: str,
    ok: tuple[str, dict[str, Any]],
    errors: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    status, response = ok
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {status: response, **{c: _ERR[c] for c in errors.split()}},
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if public:
        op["security"] = []
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_ID = _path("id", "token id (stable across regeneration)")
_LIST = [
    _query("status", {"enum": ["active", "expired", "revoked"]}, "filter by computed status"),
    _query("q", {"type": "string"}, "case-insensitive match on name (admin: or owner)"),
    _query("type", {"enum": ["personal", "service", "oauth"]}, "filter by token type"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (50)"),
    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
]


def _schemas(fmt: TokenFormat) -> dict[str, Any]:
    nullable_num = {"type": ["number", "null"]}
    last_used = {
        "type": ["object", "null"],
        "properties": {
            k: {"type": ["string", "null"]} for k in ("method", "path", "ip", "user_agent")
        }
        | {"at": {"type": "number"}},
    }
    token_props: dict[str, Any] = {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "owner": {
            "type": "object",
            "required": ["type", "id"],
            "properties": {
                "type": {"enum": ["user", "org"]},
                "id": {"type": "string"},
                "email": {"type": "string"},
                "name": {"type": "string"},
            },
        },
        "org_id": {"type": "string"},
        "type": {"enum": ["personal", "service", "oauth"]},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "workspaces": {"type": "array", "items": {"type": "string"}},
        "expires_at": nullable_num,
        "created_at": {"type": "number"},
        "created_by": {"type": "string"},
        "updated_at": {"type": "number"},
        "issued_at": {"type": "number"},
        "status": {"enum": ["active", "revoked", "expired"]},
        "revoked_at": nullable_num,
        "prefix": {"type": "string", "description": "display prefix, e.g. pat_3kF9"},
        "last_used": last_used,
    }
    expiry = {
        "expiration": {"enum": list(PRESETS), "description": "lifetime preset (default 30d)"},
        "expires_at": {
            "type": ["string", "number"],
            "description": "explicit expiry: ISO 8601 with zone, or epoch seconds",
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        },
        "Token": {"type": "object", "required": list(token_props), "properties": token_props},
        "TokenWithSecret": {
            "allOf": [
                _ref("Token"),
                {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        "token": {
                            "type": "string",
                            "pattern": fmt.pattern.replace(r"\b", ""),
                            "description": "the secret; returned only here, once",
                        }
                    },
                },
            ]
        },
        "TokenPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Token")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "TokenCreate": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "description": {"type": "string", "maxLength": 1000},
                "scopes": {"type": "array", "items": {"type": "string"}},
                "workspaces": {
                    "oneOf": [{"const": "*"}, {"type": "array", "items": {"type": "string"}}]
                },
                "owner": {
                    "type": "object",
                    "properties": {"type": {"enum": ["user", "org"]}, "id": {"type": "string"}},
                },
                "type": {"enum": ["personal", "service", "oauth"]},
                **expiry,
            },
        },
        "TokenPatch": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                k: token_props[k] for k in ("name", "description", "scopes", "workspaces")
            },
        },
        "Regenerate": {"type": "object", "additionalProperties": False, "properties": expiry},
        "Scopes": {
            "type": "object",
            "required": ["scopes"],
            "properties": {"scopes": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
        },
        "User": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "org_id": {"type": "string"},
                "email": {"type": "string"},
                "name": {"type": "string"},
                "role": {"enum": ["member", "admin"]},
                "enabled": {"type": "boolean"},
                "can_manage_tokens": {"type": "boolean"},
                "created_at": {"type": "number"},
                "updated_at": {"type": "number"},
            },
        },
        "UserPut": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: v
                for k, v in {
                    "org_id": {"type": "string"},
                    "email": {"type": "string"},
                    "name": {"type": "string"},
                    "role": {"enum": ["member", "admin"]},
                    "enabled": {"type": "boolean"},
                    "can_manage_tokens": {"type": "boolean"},
                }.items()
            },
        },
        "Org": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "token_limit": {"type": "integer"},
                "max_lifetime": nullable_num,
                "allow_never": {"type": "boolean"},
                "created_at": {"type": "number"},
                "updated_at": {"type": "number"},
            },
        },
        "OrgPut": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "token_limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                "max_lifetime": {
                    "type": ["string", "number", "null"],
                    "description": "preset (e.g. 90d) or seconds; null = no maximum",
                },
                "allow_never": {"type": "boolean"},
            },
        },
        "Event": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "type": {"type": "string"},
                "at": {"type": "number"},
                "org_id": {"type": ["string", "null"]},
                "actor": {"type": "object"},
                "ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]},
                "token_id": {"type": ["string", "null"]},
                "user_id": {"type": ["string", "null"]},
                "data": {"type": "object"},
            },
        },
        "VerifyRequest": {
            "type": "object",
            "required": ["token", "method", "path"],
            "properties": {
                "token": {"type": "string"},
                "method": {"type": "string"},
                "path": {"type": "string"},
                "headers": {"type": "object"},
            },
        },
        "VerifyResponse": {
            "type": "object",
            "required": ["allowed", "status"],
            "properties": {
                "allowed": {"type": "boolean"},
                "status": {"type": "integer"},
                "error": {"type": ["string", "null"]},
                "reason": {"type": "string"},
                "scope": {"type": ["string", "null"]},
                "rule": {"type": ["string", "null"]},
                "identity": {"type": ["object", "null"]},
            },
        },
    }


def openapi_document(fmt: TokenFormat) -> dict[str, Any]:
    token = _json(_ref("Token"), "The token (never its secret)")
    secret = _json(_ref("TokenWithSecret"), "The token and its secret, shown this once")
    std = "401 403 404 503"
    paths: dict[str, dict[str, Any]] = {
        "/v1/openapi.json": {
            "get": _op("This document", ("200", _json({}, "OpenAPI")), "", public=True)
        },
        "/v1/me": {
            "get": _op(
                "Who the calling token speaks for",
                ("200", _json({"type": "object"}, "identity")),
                "401 503",
            )
        },
        "/v1/tokens": {
            "post": _op(
                "Create a token (secret returned once)",
                ("201", secret),
                "400 401 403 404 409 422 429 503",
                body=_ref("TokenCreate"),
            ),
            "get": _op(
                "List own tokens",
                ("200", _json(_ref("TokenPage"), "page")),
                "400 401 403 503",
                params=_LIST,
            ),
            "delete": _op(
                "Delete all own tokens",
                (
                    "200",
                    _json(
                        {"type": "object", "properties": {"deleted": {"type": "integer"}}}, "count"
                    ),
                ),
                "401 403 409 503",
            ),
        },
        "/v1/tokens/{id}": {
            "get": _op("Get a token", ("200", token), std, params=[_ID]),
            "patch": _op(
                "Edit name, description, scopes, workspaces",
                ("200", token),
                "400 401 403 404 409 503",
                params=[_ID],
                body=_ref("TokenPatch"),
            ),
            "delete": _op(
                "Revoke and delete a token",
                ("204", {"description": "deleted"}),
                std + " 409",
                params=[_ID],
            ),
        },
        "/v1/tokens/{id}/scopes": {
            "post": _op(
                "Add scopes", ("200", token), "400 " + std, params=[_ID], body=_ref("Scopes")
            ),
            "delete": _op("Remove all scopes", ("200", token), std, params=[_ID]),
        },
        "/v1/tokens/{id}/scopes/{scope}": {
            "delete": _op(
                "Remove one scope",
                ("200", token),
                "400 " + std,
                params=[_ID, _path("scope", "the scope to remove")],
            ),
        },
        "/v1/tokens/{id}/revoke": {
            "post": _op("Revoke (idempotent)", ("200", token), std, params=[_ID])
        },
        "/v1/tokens/{id}/regenerate": {
            "post": _op(
                "New secret, same id/name/scopes, new expiry",
                ("200", secret),
                "400 422 " + std,
                params=[_ID],
                body=_ref("Regenerate"),
            )
        },
        "/v1/admin/tokens": {
            "get": _op(
                "Every token in the organization (tokens:admin)",
                ("200", _json(_ref("TokenPage"), "page")),
                "400 401 403 503",
                params=[
                    *_LIST,
                    _query("org_id", {"type": "string"}, "organization (default: the caller's)"),
                ],
            )
        },
        "/v1/admin/tokens/{id}/revoke": {
            "post": _op("Revoke any token in the organization", ("200", token), std, params=[_ID])
        },
        "/v1/users": {
            "get": _op(
                "Users of the organization (users:admin)",
                ("200", _json({"type": "object"}, "users")),
                "400 401 403 503",
            )
        },
        "/v1/users/{id}": {
            "get": _op(
                "Get a user",
                ("200", _json(_ref("User"), "user")),
                std,
                params=[_path("id", "user id")],
            ),
            "put": _op(
                "Create or update a user (role, enabled, can_manage_tokens)",
                ("200", _json(_ref("User"), "user")),
                "400 " + std,
                params=[_path("id", "user id")],
                body=_ref("UserPut"),
            ),
            "delete": _op(
                "Remove a user; their personal tokens are revoked",
                ("200", _json({"type": "object"}, "removed")),
                std,
                params=[_path("id", "user id")],
            ),
        },
        "/v1/orgs/{id}": {
            "get": _op(
                "Get an organization",
                ("200", _json(_ref("Org"), "org")),
                std,
                params=[_path("id", "organization id")],
            ),
            "put": _op(
                "Create or update an organization (token limit, lifetime policy)",
                ("200", _json(_ref("Org"), "org")),
                "400 " + std,
                params=[_path("id", "organization id")],
                body=_ref("OrgPut"),
            ),
        },
        "/v1/events": {
            "get": _op(
                "Audit log, newest first",
                (
                    "200",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "items": {"type": "array", "items": _ref("Event")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "events",
                    ),
                ),
                "400 401 403 503",
                params=[
                    _query("token_id", {"type": "string"}, "events of one token"),
                    _query("actor", {"type": "string"}, "events by one actor id"),
                    _query("type", {"type": "string"}, "event type, e.g. token.revoked"),
                    _LIST[3],
                    _LIST[4],
                ],
            )
        },
        "/v1/verify": {
            "post": _op(
                "Decide a request for a non-ASGI caller",
                ("200", _json(_ref("VerifyResponse"), "decision")),
                "400 401 403 503",
                body=_ref("VerifyRequest"),
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "patgate management API",
            "version": "1",
            "description": "Personal access tokens: lifecycle, users, orgs, audit. "
            f"Secrets match the regex {fmt.pattern}.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a patgate token with management scopes",
                }
            },
            "schemas": _schemas(fmt),
        },
    }
