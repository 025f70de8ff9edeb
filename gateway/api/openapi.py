"""The OpenAPI 3.1 document of the management API (served at ``/v1/openapi.json``).

Written by hand next to the routes; ``tests/gateway/test_openapi.py`` fails when a route
and this document disagree (a path or method missing on either side), and checks real
responses against the schemas named here.
"""

from __future__ import annotations

from typing import Any

from patgate.gateway.lifecycle.expiry import MAX_LIFETIME, PRESETS
from patgate.gateway.lifecycle.shaping import RESTRICTED_OPERATIONS
from patgate.gateway.lifecycle.tokens import MAX_REPORTED
from patgate.middleware.allowlist import MAX_ENTRIES
from patgate.middleware.external import ISSUER_PATTERN
from patgate.middleware.external import MAX_LENGTH as EXTERNAL_MAX
from patgate.middleware.external import MIN_LENGTH as EXTERNAL_MIN
from patgate.middleware.tokenformat import TokenFormat
from patgate.policies.scopes import ACTIONS, MAX_SCOPE_LENGTH, MAX_SCOPES
from patgate.policies.scopes import PRESETS as SCOPE_PRESETS

from .openapi_notify import notify_paths, notify_schemas

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
        "403": "The token lacks the scope or role for this operation, a scope it asks "
        "for is not grantable by its owner, or it is used from outside its IP allowlist "
        "(ip_not_allowed)",
        "404": "No such resource (or not visible to this token)",
        "405": "Method not allowed on this path (see Allow)",
        "409": "Name already taken for this owner (name_taken), a concurrent change "
        "(conflict), or a token limit of the organization is full: its active tokens "
        "(org_token_limit) or one owner's (owner_token_limit); revoke or delete a token "
        "first",
        "413": "Request body larger than 64 KiB; nothing read beyond it",
        "422": "Valid input the organization's policy does not allow",
        "429": "Too many failed authentications or reports from this address "
        "(rate_limited, with Retry-After)",
        "503": "Token store unavailable",
    }.items()
}


#: a token limit (gateway.lifecycle.limits): active tokens, or null for none.
_TOKEN_LIMIT = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": 10000,
    "description": "the most active tokens (revoked and expired ones never count); null: no limit",
}


def _ci(word: str) -> str:
    """A case-insensitive regex for ``word`` (ECMA-262 patterns have no inline flags)."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in word)


#: ids of users and orgs (gateway.lifecycle.inputs.check_id); token ids are ``tok_<hex>``.
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
#: workspace ids (gateway.lifecycle.inputs.check_workspaces).
WORKSPACE_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: one scope (policies.scopes): ``*``, a preset or ``resource:action[:own]``, any case.
SCOPE_PATTERN = (
    "^(?:\\*|"
    + "|".join(_ci(p) for p in sorted(SCOPE_PRESETS))
    + "|(?:\\*|[A-Za-z][A-Za-z0-9_-]*):(?:\\*|"
    + "|".join(_ci(a) for a in sorted(ACTIONS))
    + ")(?::[oO][wW][nN])?)$"
)
#: the cursor of a token listing (gateway.lifecycle.listing.encode_cursor): base64url.
TOKEN_CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,200}$"
#: the cursor of the audit log: a Redis Stream id above 0-0.
EVENT_CURSOR_PATTERN = "^(?:0|[1-9][0-9]{0,19})-(?:0|[1-9][0-9]{0,19})$"

_SCOPE = {"type": "string", "minLength": 1, "maxLength": MAX_SCOPE_LENGTH, "pattern": SCOPE_PATTERN}
_SCOPE_LIST = {"type": "array", "maxItems": MAX_SCOPES, "items": _SCOPE}
_WORKSPACES = {
    "description": '"*" (or ["*"]) for every workspace, else a list of workspace ids',
    "oneOf": [
        {"const": "*"},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": 100,
            "items": {"type": "string", "pattern": WORKSPACE_PATTERN},
        },
    ],
}
#: what workspaces look like in responses: ``["*"]`` or the ids.
_WORKSPACES_OUT = {"type": "array", "items": {"type": "string", "minLength": 1}}
#: names are trimmed, then 1-100 printable characters.
_NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "\\S"}
_TEXT = {"type": "string", "maxLength": 200}
#: a token's IP allowlist on input (gateway.lifecycle.inputs.check_allowed_ips).
_ALLOWED_IPS = {
    "description": "addresses or CIDR networks (IPv4, IPv6) the token may be used from; "
    "null: any address. Host bits must be zero; IPv4-mapped IPv6 is stored as IPv4",
    "oneOf": [
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_ENTRIES,
            "items": {"type": "string", "minLength": 1, "maxLength": 64},
        },
        {"type": "null"},
    ],
}


def _op(
    summary: str,
    ok: tuple[str, dict[str, Any]],
    errors: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    body_required: bool = True,
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
        # Not required where an empty body is a valid request (every field optional).
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
        op["responses"]["413"] = _ERR["413"]
    if public:
        op["security"] = []
    return op


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "pattern": ID_PATTERN},
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
_STATUSES = ["active", "expired", "revoked", "all"]
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (50)")
_LIST = [
    _query(
        "status",
        {"enum": _STATUSES},
        "filter by computed status (default: every status; all: every status)",
    ),
    _query(
        "q",
        {"type": "string", "maxLength": 200},
        "case-insensitive match on name (admin: or owner)",
    ),
    _query("type", {"enum": ["personal", "service", "oauth"]}, "filter by token type"),
    _LIMIT,
    _query(
        "cursor",
        {"type": "string", "pattern": TOKEN_CURSOR_PATTERN},
        "next_cursor of the previous page",
    ),
]


def _object(
    props: dict[str, Any], required: list[str] | None = None, *, closed: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def _schemas(fmt: TokenFormat) -> dict[str, Any]:
    nullable_num = {"type": ["number", "null"]}
    nullable_str = {"type": ["string", "null"]}
    last_used = {
        "type": ["object", "null"],
        "additionalProperties": False,
        "required": ["at", "method", "path", "ip", "user_agent"],
        "properties": {k: nullable_str for k in ("method", "path", "ip", "user_agent")}
        | {"at": {"type": "number"}},
    }
    token_props: dict[str, Any] = {
        "id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": "string", "maxLength": 1000},
        "owner": _object(
            {
                "type": {"enum": ["user", "org"]},
                "id": {"type": "string", "minLength": 1},
                "email": {"type": "string"},
                "name": {"type": "string"},
            },
            ["type", "id"],
        ),
        "org_id": {"type": "string", "minLength": 1},
        "type": {"enum": ["personal", "service", "oauth"]},
        "scopes": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "workspaces": _WORKSPACES_OUT,
        "expires_at": nullable_num,
        "created_at": {"type": "number"},
        "created_by": {"type": "string"},
        "updated_at": {"type": "number"},
        "issued_at": {"type": "number"},
        "status": {"enum": ["active", "revoked", "expired"]},
        "revoked_at": nullable_num,
        "prefix": {"type": "string", "description": "display prefix, e.g. pat_3kF9"},
        "last_used": last_used,
        "allowed_ips": {"type": ["array", "null"], "items": {"type": "string"}},
        "role": {
            "type": ["string", "null"],
            "description": "one of the org's roles: its scopes count as the token's own",
        },
        "external": {
            "type": "boolean",
            "description": "issued by another system and registered here",
        },
        "issuer": {
            "type": ["string", "null"],
            "description": "the system that issued an external token; null: patgate",
        },
        "previous_secret": {
            "description": "the secret before the last regeneration, while it is kept: it "
            "works until valid_until (status active), then is refused as rotated",
            "oneOf": [
                _object(
                    {
                        "prefix": {"type": "string"},
                        "valid_until": {"type": "number"},
                        "status": {"enum": ["active", "rotated"]},
                        "last_used": last_used,
                    },
                    ["prefix", "valid_until", "status", "last_used"],
                ),
                {"type": "null"},
            ],
        },
    }
    # null means "not given" for both (the default lifetime applies).
    expiry = {
        "expiration": {
            "enum": [*PRESETS, None],
            "description": "lifetime preset (default 30d)",
        },
        "expires_at": {
            "description": "explicit expiry: ISO 8601 with zone, or epoch seconds; in "
            "the future and before the end of year 9999",
            "oneOf": [
                {"type": "string", "minLength": 1, "maxLength": 64},
                {"type": "number", "minimum": 0, "maximum": 253_402_300_799},
                {"type": "null"},
            ],
        },
    }
    user_out = {
        "id": {"type": "string", "minLength": 1},
        "org_id": {"type": "string", "minLength": 1},
        "email": {"type": "string"},
        "name": {"type": "string"},
        "role": {"enum": ["member", "admin"]},
        "enabled": {"type": "boolean"},
        "can_manage_tokens": {"type": "boolean"},
        "workspaces": _WORKSPACES_OUT,
        "grantable_scopes": {
            "type": ["array", "null"],
            "items": {"type": "string", "minLength": 1},
            "description": "scopes this user may grant (synced from the host); null: "
            "those of the org for the user's role",
        },
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
    }
    org_out = {
        "id": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "token_limit": _TOKEN_LIMIT,
        "owner_token_limit": _TOKEN_LIMIT,
        "max_lifetime": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_LIFETIME},
        "allow_never": {"type": "boolean"},
        "member_scopes": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "admin_scopes": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "max_grace_period": {"type": "number", "minimum": 0},
        "default_can_manage_tokens": {"type": "boolean"},
        "default_scopes": {"type": ["array", "null"], "items": {"type": "string"}},
        "scopes_required": {"type": "boolean"},
        "roles": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "resources": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
    }
    return {
        "Error": _object(
            {"error": {"type": "string", "minLength": 1}, "detail": {"type": "string"}},
            ["error", "detail"],
        ),
        "Token": _object(token_props, list(token_props)),
        "TokenWithSecret": {
            "allOf": [
                _object(token_props, list(token_props), closed=False),
                # allOf with a closed Token would refuse "token": list the fields again.
                _object(
                    {k: {} for k in token_props}
                    | {
                        "token": {
                            "type": "string",
                            "pattern": fmt.pattern.replace(r"\b", ""),
                            "description": "the secret; returned only here, once",
                        }
                    },
                    ["token"],
                ),
            ]
        },
        "TokenPage": _object(
            {
                "items": {"type": "array", "items": _ref("Token")},
                "next_cursor": {"type": ["string", "null"]},
            },
            ["items", "next_cursor"],
        ),
        "TokenCreate": _object(
            token_create := {
                "name": _NAME,
                "description": {"type": ["string", "null"], "maxLength": 1000},
                "workspaces": {"oneOf": [*_WORKSPACES["oneOf"], {"type": "null"}]},
                "owner": {
                    "oneOf": [
                        _object(
                            {
                                "type": {"enum": ["user", "org"]},
                                "id": {"type": "string", "pattern": ID_PATTERN},
                            },
                            ["type"],
                        ),
                        {"type": "null"},
                    ],
                    "description": "default: the calling user; an org's id defaults to "
                    "the caller's org",
                },
                "type": {"enum": ["personal", "service", "oauth", None]},
                "allowed_ips": _ALLOWED_IPS,
                "scopes": {
                    "oneOf": [_SCOPE_LIST, {"type": "null"}],
                    "description": "the token's scopes; omitted or null: the org's "
                    "default_scopes (by default all the creator may grant, less "
                    "tokens:admin and users:admin), unless role or restricted is given",
                },
                "role": {
                    "type": ["string", "null"],
                    "maxLength": 40,
                    "description": "one of the org's roles (case-insensitive)",
                },
                "restricted": {
                    "type": ["object", "null"],
                    "description": "per resource of the org's catalogue, the operations "
                    "the token gets; instead of scopes",
                    "additionalProperties": {
                        "type": "array",
                        "items": {"enum": list(RESTRICTED_OPERATIONS)},
                    },
                },
                **expiry,
            },
            ["name"],
        ),
        "TokenRegister": {
            **_object(
                {
                    **{k: v for k, v in token_create.items() if k not in ("type",)},
                    "type": {"enum": ["service", "oauth", None]},
                    "value": {
                        "type": "string",
                        "minLength": EXTERNAL_MIN,
                        "maxLength": EXTERNAL_MAX,
                        "pattern": "^[A-Za-z0-9._~+/-]+=*$",
                        "description": "the token as its issuer gave it; hashed on "
                        "arrival, never stored",
                    },
                    "sha256": {
                        "type": "string",
                        "pattern": "^[0-9A-Fa-f]{64}$",
                        "description": "instead of value: the hex SHA-256 of the value",
                    },
                    "issuer": {
                        "type": "string",
                        "pattern": ISSUER_PATTERN,
                        "description": "the issuing system, e.g. github (default external)",
                    },
                },
                ["name"],
            ),
            "oneOf": [{"required": ["value"]}, {"required": ["sha256"]}],
        },
        "TokenPatch": {
            **_object(
                {
                    "name": _NAME,
                    "description": {"type": ["string", "null"], "maxLength": 1000},
                    "scopes": _SCOPE_LIST,
                    "workspaces": {"oneOf": [*_WORKSPACES["oneOf"], {"type": "null"}]},
                    "allowed_ips": _ALLOWED_IPS,
                    "role": {"type": ["string", "null"], "maxLength": 40},
                }
            ),
            "minProperties": 1,
        },
        "Regenerate": _object(
            {
                **expiry,
                "grace_period": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": "seconds the old secret keeps working beside the new "
                    "one (active tokens only; at most the org's max_grace_period)",
                },
            }
        ),
        "CredentialReport": _object(
            {
                "credentials": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_REPORTED,
                    "items": {"type": "string"},
                    "description": "leaked secrets, as found (e.g. by a secret scanner)",
                }
            },
            ["credentials"],
        ),
        "Scopes": _object({"scopes": {**_SCOPE_LIST, "minItems": 1}}, ["scopes"]),
        "User": _object(user_out, list(user_out)),
        "UserPage": _object({"items": {"type": "array", "items": _ref("User")}}, ["items"]),
        "UserPut": _object(
            {
                "org_id": {
                    "type": ["string", "null"],
                    "pattern": ID_PATTERN,
                    "description": "required for a new user (default: the caller's org)",
                },
                "email": {**_TEXT, "description": "required for a new user"},
                "name": _TEXT,
                "role": {"enum": ["member", "admin"]},
                "enabled": {"type": "boolean"},
                "can_manage_tokens": {"type": "boolean"},
                "workspaces": {
                    "oneOf": [*_WORKSPACES["oneOf"], {"type": "null"}],
                    "description": "the workspaces the user's tokens may name; * or null: all",
                },
                "grantable_scopes": {
                    "oneOf": [_SCOPE_LIST, {"type": "null"}],
                    "description": "scopes the user may grant; null: by the org's roles",
                },
            }
        ),
        "UserRemoved": _object(
            {
                "removed": {"type": "string"},
                "revoked_tokens": {"type": "array", "items": {"type": "string"}},
            },
            ["removed", "revoked_tokens"],
        ),
        "Org": _object(org_out, list(org_out)),
        "OrgPut": _object(
            {
                "name": {**_TEXT, "minLength": 1, "pattern": "\\S"},
                "token_limit": _TOKEN_LIMIT,
                "owner_token_limit": _TOKEN_LIMIT,
                "max_lifetime": {
                    "description": "preset (e.g. 90d) or seconds (at most 100 years); "
                    "null or never = no maximum",
                    "oneOf": [
                        {"enum": [*PRESETS, None]},
                        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LIFETIME},
                    ],
                },
                "allow_never": {"type": "boolean"},
                "member_scopes": {
                    **_SCOPE_LIST,
                    "description": "scopes members may grant (admin-only scopes refused)",
                },
                "admin_scopes": {
                    **_SCOPE_LIST,
                    "description": "scopes admins may grant; must cover the management "
                    "scopes (default [*])",
                },
                "max_grace_period": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 90 * 86_400,
                    "description": "longest grace period of a regeneration, seconds "
                    "(default 7 days; 0: none)",
                },
                "default_can_manage_tokens": {
                    "type": "boolean",
                    "description": "whether new users get the token permission (default "
                    "true); admins grant or withdraw it per user",
                },
                "default_scopes": {
                    "oneOf": [_SCOPE_LIST, {"type": "null"}],
                    "description": "scopes of a token created without any; null: all the "
                    "creator may grant, less tokens:admin and users:admin",
                },
                "scopes_required": {
                    "type": "boolean",
                    "description": "every token must name its scopes, restricted "
                    "operations or a role",
                },
                "roles": {
                    "type": "object",
                    "additionalProperties": _SCOPE_LIST,
                    "description": "named scope sets, e.g. Developer, Admin (at most 32; "
                    "names of 1-40 letters, digits, space, _ . -, starting with a letter, "
                    "case-insensitive); editing one changes every token with it at once",
                },
                "resources": {
                    "type": "array",
                    "maxItems": 200,
                    "items": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"},
                    "description": "the API's resources, for restricted tokens",
                },
            }
        ),
        "Event": _object(
            {
                "id": {"type": "string"},
                "type": {"type": "string"},
                "at": {"type": "number"},
                "org_id": nullable_str,
                "actor": {"type": "object"},
                "ip": nullable_str,
                "user_agent": nullable_str,
                "token_id": nullable_str,
                "user_id": nullable_str,
                "data": {"type": "object"},
            },
            ["id", "type", "at", "actor", "data"],
            closed=False,
        ),
        "EventPage": _object(
            {
                "items": {"type": "array", "items": _ref("Event")},
                "next_cursor": nullable_str,
            },
            ["items", "next_cursor"],
        ),
        "VerifyRequest": _object(
            {
                "token": {"type": "string", "minLength": 1},
                "method": {"type": "string", "minLength": 1},
                "path": {"type": "string", "minLength": 1},
                "ip": {
                    "type": ["string", "null"],
                    "description": "the described request's client address: what IP "
                    "allowlists and the failed-authentication limit apply to",
                },
                "headers": {
                    "type": ["object", "null"],
                    "additionalProperties": {"type": "string"},
                },
            },
            ["token", "method", "path"],
        ),
        "VerifyResponse": _object(
            {
                "allowed": {"type": "boolean"},
                "status": {"type": "integer"},
                "error": nullable_str,
                "reason": {"type": "string"},
                "detail": nullable_str,
                "scope": nullable_str,
                "rule": nullable_str,
                "identity": {"type": ["object", "null"]},
            },
            ["allowed", "status"],
            closed=False,
        ),
    }


def openapi_document(fmt: TokenFormat) -> dict[str, Any]:
    token = _json(_ref("Token"), "The token (never its secret)")
    secret = _json(_ref("TokenWithSecret"), "The token and its secret, shown this once")
    # Every authenticated operation can answer 400 (two credentials, RFC 6750 §3.1), 401,
    # 403 and 503; edits add 404 and 409 (a concurrent change that kept losing).
    # 429: too many failed authentications from the caller's address (issue 12).
    read = "400 401 403 429 503"
    one = "400 401 403 404 429 503"
    edit = "400 401 403 404 409 429 503"
    user_id = _path("id", "user id")
    org_id = _path("id", "organization id")
    scope = _path("scope", "the scope to remove", {"type": "string", "pattern": SCOPE_PATTERN})
    paths: dict[str, dict[str, Any]] = {
        "/v1/openapi.json": {
            "get": _op("This document", ("200", _json({}, "OpenAPI")), "", public=True)
        },
        "/v1/me": {
            "get": _op(
                "Who the calling token speaks for",
                ("200", _json({"type": "object"}, "identity")),
                read,
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
                read,
                params=_LIST,
            ),
            "delete": _op(
                "Delete all own tokens",
                (
                    "200",
                    _json(
                        _object({"deleted": {"type": "integer", "minimum": 0}}, ["deleted"]),
                        "count",
                    ),
                ),
                "400 401 403 409 503",
            ),
        },
        "/v1/tokens/{id}": {
            "get": _op("Get a token", ("200", token), one, params=[_ID]),
            "patch": _op(
                "Edit name, description, scopes, workspaces",
                ("200", token),
                edit,
                params=[_ID],
                body=_ref("TokenPatch"),
            ),
            "delete": _op(
                "Revoke and delete a token",
                ("204", {"description": "deleted"}),
                edit,
                params=[_ID],
            ),
        },
        "/v1/tokens/{id}/scopes": {
            "post": _op("Add scopes", ("200", token), edit, params=[_ID], body=_ref("Scopes")),
            "delete": _op("Remove all scopes", ("200", token), edit, params=[_ID]),
        },
        "/v1/tokens/{id}/scopes/{scope}": {
            "delete": _op("Remove one scope", ("200", token), edit, params=[_ID, scope]),
        },
        "/v1/tokens/{id}/revoke": {
            "post": _op("Revoke (idempotent)", ("200", token), edit, params=[_ID])
        },
        "/v1/tokens/{id}/regenerate": {
            "post": _op(
                "New secret, same id/name/scopes, new expiry",
                ("200", secret),
                "400 401 403 404 409 422 429 503",
                params=[_ID],
                body=_ref("Regenerate"),
                body_required=False,
            )
        },
        "/v1/tokens/{id}/end-grace": {
            "post": _op(
                "End a regeneration's grace period now: the previous secret stops working "
                "(idempotent)",
                ("200", token),
                edit,
                params=[_ID],
            )
        },
        "/v1/credentials/revoke": {
            "post": _op(
                "Report leaked secrets (no authentication): each existing one is revoked; "
                "the answer is the same whether any exists. Rate limited per address",
                (
                    "202",
                    _json(
                        _object({"status": {"const": "accepted"}}, ["status"]),
                        "accepted",
                    ),
                ),
                "400 429 503",
                body=_ref("CredentialReport"),
                public=True,
            )
        },
        "/v1/admin/tokens": {
            "post": _op(
                "Register a token issued elsewhere (oauth or service), by its value or "
                "its SHA-256; it then validates on the data plane like patgate's own",
                ("201", token),
                "400 401 403 404 409 422 429 503",
                body=_ref("TokenRegister"),
            ),
            "get": _op(
                "Every token in the organization (tokens:admin); active ones unless "
                "?status= says otherwise",
                ("200", _json(_ref("TokenPage"), "page")),
                read,
                params=[
                    _query(
                        "status",
                        {"enum": _STATUSES},
                        "computed status: active (the default), expired, revoked, or all",
                    ),
                    *_LIST[1:],
                    _query(
                        "org_id",
                        {"type": "string", "pattern": ID_PATTERN},
                        "organization (default: the caller's)",
                    ),
                ],
            ),
        },
        "/v1/admin/tokens/{id}/revoke": {
            "post": _op("Revoke any token in the organization", ("200", token), edit, params=[_ID])
        },
        "/v1/users": {
            "get": _op(
                "Users of the organization (users:admin)",
                ("200", _json(_ref("UserPage"), "users")),
                read,
                params=[
                    _query(
                        "org_id",
                        {"type": "string", "pattern": ID_PATTERN},
                        "organization (default: the caller's)",
                    )
                ],
            )
        },
        "/v1/users/{id}": {
            "get": _op("Get a user", ("200", _json(_ref("User"), "user")), one, params=[user_id]),
            "put": _op(
                "Create or update a user (role, enabled, can_manage_tokens, workspaces, "
                "grantable scopes)",
                ("200", _json(_ref("User"), "user")),
                edit,
                params=[user_id],
                body=_ref("UserPut"),
                body_required=False,
            ),
            "delete": _op(
                "Remove a user; their personal tokens are revoked",
                ("200", _json(_ref("UserRemoved"), "removed")),
                edit,
                params=[user_id],
            ),
        },
        "/v1/orgs/{id}": {
            "get": _op(
                "Get an organization (members may read their own)",
                ("200", _json(_ref("Org"), "org")),
                one,
                params=[org_id],
            ),
            "put": _op(
                "Create or update an organization (token limit, lifetime policy, grants)",
                ("200", _json(_ref("Org"), "org")),
                edit,
                params=[org_id],
                body=_ref("OrgPut"),
                body_required=False,
            ),
        },
        "/v1/events": {
            "get": _op(
                "Audit log, newest first: the organization's for an admin (tokens:admin "
                "and the admin role); for any other caller with tokens:read:own, only the "
                "events of the caller's own tokens (reuse-tripwire events included). A page "
                "may hold fewer than limit items, even none, with a next_cursor: follow it.",
                ("200", _json(_ref("EventPage"), "events")),
                read,
                params=[
                    _query(
                        "token_id",
                        {"type": "string"},
                        "events of one token (in a member's view only their own tokens match; "
                        "any other id returns an empty page, as an unknown one does)",
                    ),
                    _query("actor", {"type": "string"}, "events by one actor id"),
                    _query("type", {"type": "string"}, "event type, e.g. token.revoked"),
                    _LIMIT,
                    _query(
                        "cursor",
                        {"type": "string", "pattern": EVENT_CURSOR_PATTERN},
                        "next_cursor of the previous page",
                    ),
                ],
            )
        },
        "/v1/verify": {
            "post": _op(
                "Decide a request for a non-ASGI caller",
                ("200", _json(_ref("VerifyResponse"), "decision")),
                read,
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
        "paths": paths
        | notify_paths(
            _op,
            _json,
            {"read": read, "one": one, "edit": edit},
            _query(
                "org_id",
                {"type": "string", "pattern": ID_PATTERN},
                "organization (default: the caller's)",
            ),
        ),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a patgate token with management scopes",
                }
            },
            "schemas": _schemas(fmt) | notify_schemas(),
        },
    }
