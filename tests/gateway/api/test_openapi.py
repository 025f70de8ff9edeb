"""The OpenAPI document stays in sync with the routes and with real responses.

Responses are checked with a small JSON Schema validator for exactly the keywords the
document uses; a keyword it does not know fails the test instead of being ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.routing import Route

from patgate.gateway.api import create_api_app, openapi_document
from patgate.gateway.api.openapi import ID_PATTERN, SCOPE_PATTERN, WORKSPACE_PATTERN
from patgate.gateway.lifecycle import inputs
from patgate.gateway.lifecycle.expiry import MAX_LIFETIME
from patgate.gateway.notify.outbox import Job, Outbox
from patgate.middleware.keys import Keyspace
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests.gateway.api._world import DAY, Api, make_api

DOC = openapi_document(TokenFormat())
_METHODS = {"get", "put", "post", "delete", "patch"}
_ANNOTATIONS = {"description", "title", "summary"}


# -- a validator for the subset of JSON Schema the document uses ---------------------------


def _resolve(ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def _type_ok(value: Any, name: str) -> bool:
    return {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }[name](value)


def errors(value: Any, schema: dict[str, Any], at: str = "$") -> Iterator[str]:
    """Every way ``value`` violates ``schema`` (empty: valid)."""
    for key, rule in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "$ref":
            yield from errors(value, _resolve(rule), at)
        elif key == "allOf":
            for sub in rule:
                yield from errors(value, sub, at)
        elif key == "oneOf":
            if sum(not list(errors(value, sub, at)) for sub in rule) != 1:
                yield f"{at}: not exactly one of oneOf"
        elif key == "type":
            names = rule if isinstance(rule, list) else [rule]
            if not any(_type_ok(value, n) for n in names):
                yield f"{at}: {value!r} is not {rule}"
        elif key == "enum":
            if value not in rule:
                yield f"{at}: {value!r} not in {rule}"
        elif key == "const":
            if value != rule:
                yield f"{at}: {value!r} != {rule!r}"
        elif key == "required":
            if isinstance(value, dict):
                yield from (f"{at}: missing {k}" for k in rule if k not in value)
        elif key == "properties":
            if isinstance(value, dict):
                for k, sub in rule.items():
                    if k in value:
                        yield from errors(value[k], sub, f"{at}.{k}")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                extra = set(value) - set(schema.get("properties", {}))
                if rule is False and extra:
                    yield f"{at}: unexpected {sorted(extra)}"
                elif isinstance(rule, dict):
                    for k in sorted(extra):
                        yield from errors(value[k], rule, f"{at}.{k}")
        elif key == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from errors(item, rule, f"{at}[{i}]")
        elif key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties"):
            if isinstance(value, str | list | dict):
                n = len(value)
                if (n < rule) if key.startswith("min") else (n > rule):
                    yield f"{at}: length {n} violates {key}={rule}"
        elif key in ("minimum", "maximum", "exclusiveMinimum"):
            if _type_ok(value, "number") and (
                (value < rule)
                if key == "minimum"
                else (value > rule)
                if key == "maximum"
                else (value <= rule)
            ):
                yield f"{at}: {value} violates {key}={rule}"
        elif key == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                yield f"{at}: {value!r} does not match {rule}"
        else:
            raise AssertionError(f"validator does not know the keyword {key!r} at {at}")


_KNOWN = {
    "$ref", "allOf", "oneOf", "type", "enum", "const", "required", "properties",
    "additionalProperties", "items", "minLength", "maxLength", "minItems", "maxItems",
    "minProperties", "minimum", "maximum", "exclusiveMinimum", "pattern", *_ANNOTATIONS,
}  # fmt: skip


def _keywords(schema: dict[str, Any], at: str) -> Iterator[str]:
    """Every keyword in ``schema`` and the schemas nested in it, as ``at: keyword``;
    ``errors()`` alone only reaches the nested schemas that a value exercises."""
    for key, rule in schema.items():
        yield f"{at}: {key}"
        if key == "properties":
            for name, sub in rule.items():
                yield from _keywords(sub, f"{at}.{name}")
        elif key in ("allOf", "oneOf"):
            for i, sub in enumerate(rule):
                yield from _keywords(sub, f"{at}/{key}[{i}]")
        elif key in ("items", "additionalProperties") and isinstance(rule, dict):
            yield from _keywords(rule, f"{at}/{key}")


def _walk_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    yield from DOC["components"]["schemas"].items()
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            for status, resp in op["responses"].items():
                for media in resp.get("content", {}).values():
                    yield f"{method} {path} {status}", media["schema"]
            for p in op.get("parameters", []):
                yield f"{method} {path} param {p['name']}", p["schema"]
            if "requestBody" in op:
                yield (
                    f"{method} {path} body",
                    op["requestBody"]["content"]["application/json"]["schema"],
                )


def test_validator_rejects_what_it_should() -> None:
    token_schema = {"$ref": "#/components/schemas/Token"}
    assert list(errors({"id": 1}, token_schema))
    assert list(errors({"error": "x"}, {"$ref": "#/components/schemas/Error"}))
    assert not list(errors({"error": "x", "detail": "y"}, {"$ref": "#/components/schemas/Error"}))
    assert list(errors({"name": "x", "bogus": 1}, {"$ref": "#/components/schemas/TokenCreate"}))
    assert list(errors({"token": "nope"}, {"$ref": "#/components/schemas/TokenWithSecret"}))
    with pytest.raises(AssertionError, match="keyword"):
        list(errors(1, {"multipleOf": 2}))


# -- the document itself -----------------------------------------------------------------


def test_every_ref_resolves_and_every_keyword_is_known() -> None:
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(DOC)
    assert refs
    for ref in refs:
        _resolve(ref)
    for where, schema in _walk_schemas():
        try:
            list(errors(None, schema))
        except AssertionError as exc:  # pragma: no cover - the failure message
            raise AssertionError(f"{where}: {exc}") from None
        unknown = [k for k in _keywords(schema, where) if k.rsplit(": ", 1)[1] not in _KNOWN]
        assert not unknown, unknown


def test_routes_and_document_agree() -> None:
    # routes only: a store over a client that never connects
    idle = TokenStore(aioredis.Redis(host="127.0.0.1", port=1), Keyspace())
    app = create_api_app(idle, TokenFormat())
    routes = {
        (r.path, m.lower())
        for r in app.routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    documented = {(p, m) for p, item in DOC["paths"].items() for m in item if m in _METHODS}
    assert routes == documented
    for path, item in DOC["paths"].items():
        params = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == params, (method, path)
            assert op["responses"], (method, path)
            assert op["summary"]


def test_document_metadata() -> None:
    assert DOC["openapi"].startswith("3.1")
    assert DOC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert TokenFormat().pattern in DOC["info"]["description"]
    pattern = DOC["components"]["schemas"]["TokenWithSecret"]["allOf"][1]["properties"]["token"][
        "pattern"
    ]
    assert re.fullmatch(pattern, TokenFormat().generate())
    assert not re.fullmatch(pattern, "pat_short")


# -- real responses against the schemas --------------------------------------------------


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    for template, item in DOC["paths"].items():
        regex = "^" + re.sub(r"{\w+}", "[^/]+", template) + "$"
        if re.match(regex, path) and method.lower() in item:
            return template, item[method.lower()]
    return None


class Recorder:
    """Runs calls through the API and checks each response against the document."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.seen: set[tuple[str, str, str]] = set()

    async def __call__(
        self, method: str, path: str, who: str | None = "admin", expect: int = 200, **kw: Any
    ) -> Any:
        r: httpx.Response = await self.api.call(method, path, who, **kw)
        assert r.status_code == expect, (method, path, r.text)
        found = _operation(method, httpx.URL(path).path)
        assert found is not None, (method, path)
        template, op = found
        status = str(r.status_code)
        assert status in op["responses"], f"{method} {template} answered undocumented {status}"
        self.seen.add((template, method.lower(), status))
        spec = op["responses"][status]
        if "content" not in spec:
            assert r.content == b""
            return None
        schema = spec["content"]["application/json"]["schema"]
        body = r.json()
        problems = list(errors(body, schema))
        assert not problems, (method, template, status, problems)
        return body


@pytest.mark.anyio
async def test_a_scripted_session_matches_the_document(store: TokenStore) -> None:
    async with make_api(store) as api:
        call = Recorder(api)
        assert await call("GET", "/v1/openapi.json", None) == DOC
        await call("GET", "/v1/me", "alice")
        created = await call(
            "POST",
            "/v1/tokens",
            "alice",
            201,
            json={"name": "t", "scopes": ["x:read"], "workspaces": ["w1"], "expiration": "7d"},
        )
        tid = created["id"]
        await call("POST", "/v1/tokens", "alice", expect=409, json={"name": "T"})
        await call("POST", "/v1/tokens", "alice", expect=400, json={"name": "x", "scopes": ["bad"]})
        await call(
            "POST", "/v1/tokens", "alice", expect=403, json={"name": "x", "owner": {"type": "org"}}
        )
        await call("POST", "/v1/tokens", None, expect=401, json={"name": "x"})
        org = await call(
            "POST",
            "/v1/tokens",
            "admin",
            201,
            json={
                "name": "svc",
                "owner": {"type": "org"},
                "type": "service",
                "expiration": "never",
            },
        )
        await call("GET", "/v1/tokens", "alice", params={"limit": 1})
        await call("GET", "/v1/tokens", "alice", expect=400, params={"limit": 0})
        await call("GET", f"/v1/tokens/{tid}", "alice")
        await call("GET", f"/v1/tokens/{tid}", "bob", expect=404)
        await call("PATCH", f"/v1/tokens/{tid}", "alice", json={"description": "d"})
        await call("PATCH", f"/v1/tokens/{tid}", "alice", expect=400, json={"owner": "x"})
        await call("PATCH", f"/v1/tokens/{tid}", "alice", expect=409, json={"name": "mgmt-alice"})
        await call("POST", f"/v1/tokens/{tid}/scopes", "alice", json={"scopes": ["y:read"]})
        await call("DELETE", f"/v1/tokens/{tid}/scopes/y:read", "alice")
        await call("DELETE", f"/v1/tokens/{tid}/scopes/y:read", "alice", expect=404)
        await call("DELETE", f"/v1/tokens/{tid}/scopes", "alice")
        await call(
            "PATCH", f"/v1/tokens/{tid}", "alice", json={"allowed_ips": ["10.0.0.0/8", "::1"]}
        )
        await call(
            "PATCH", f"/v1/tokens/{tid}", "alice", expect=400, json={"allowed_ips": ["10.0.0.1/8"]}
        )
        rotated = await call(
            "POST", f"/v1/tokens/{tid}/regenerate", "alice", json={"grace_period": 3600}
        )
        assert rotated["previous_secret"]["status"] == "active"
        ended = await call("POST", f"/v1/tokens/{tid}/end-grace", "alice")
        assert ended["previous_secret"] is None
        await call("POST", f"/v1/tokens/{tid}/revoke", "alice")
        await call("POST", f"/v1/tokens/{tid}/regenerate", "alice", json={"expiration": "1d"})
        await call(
            "POST",
            "/v1/credentials/revoke",
            None,
            202,
            json={"credentials": [TokenFormat().generate()]},
        )
        await call("POST", "/v1/credentials/revoke", None, 400, json={"credentials": []})
        await call("POST", f"/v1/admin/tokens/{tid}/revoke")
        await call("GET", "/v1/admin/tokens", params={"q": "alice"})
        await call("GET", "/v1/admin/tokens", "alice", expect=403)
        await call("PUT", "/v1/users/carol", json={"email": "c@acme.io"})
        await call("PUT", "/v1/users/carol", expect=400, json={"role": "boss"})
        await call("GET", "/v1/users/carol")
        await call("GET", "/v1/users")
        await call("PUT", "/v1/orgs/acme", json={"max_lifetime": "1y", "allow_never": False})
        await call("GET", "/v1/orgs/acme")
        await call(
            "POST", "/v1/tokens", "bob", expect=422, json={"name": "n", "expiration": "never"}
        )
        external = {"name": "ext", "value": "gho_" + "x" * 36, "scopes": ["tokens:read:own"]}
        await call("POST", "/v1/admin/tokens", expect=201, json=external)
        await call("POST", "/v1/admin/tokens", expect=409, json=external)
        await call("POST", "/v1/admin/tokens", "alice", expect=403, json=external)
        # notifications (issue 14): endpoints and dead letters (no worker runs here)
        hook = await call(
            "POST",
            "/v1/webhooks",
            expect=201,
            json={"url": "https://hooks.example.com/patgate", "event_types": ["token.created"]},
        )
        await call("POST", "/v1/webhooks", expect=400, json={"url": "http://127.0.0.1/x"})
        await call("POST", "/v1/webhooks", "alice", expect=403, json={"url": "https://a.io/"})
        await call("GET", "/v1/webhooks")
        await call("GET", f"/v1/webhooks/{hook['id']}")
        await call("GET", "/v1/webhooks/wh_nope", expect=404)
        await call("POST", f"/v1/webhooks/{hook['id']}/rotate")
        await call("POST", f"/v1/webhooks/{hook['id']}/test", expect=202)
        await call("GET", f"/v1/webhooks/{hook['id']}/attempts")
        outbox = Outbox(store.client, store.keyspace.namespace)
        dead = Job("w-dead", "webhook", "acme", hook["id"], {"body": "{}"}, "token.created", 1.0)
        await outbox.bury(dead, 2.0)
        await call("GET", "/v1/notifications/dead")
        await call("POST", "/v1/notifications/dead/w-dead/retry")
        await call("POST", "/v1/notifications/dead/w-dead/retry", expect=404)
        await call("DELETE", f"/v1/webhooks/{hook['id']}", expect=204)
        await call("PUT", "/v1/orgs/acme", json={"token_limit": 1, "max_lifetime": None})
        await call("POST", "/v1/tokens", "bob", expect=409, json={"name": "n"})
        await call("GET", "/v1/events", params={"token_id": tid})
        await call("GET", "/v1/events", expect=400, params={"cursor": "x"})
        api.clock.now += 2 * DAY
        await call("GET", "/v1/tokens", "alice", params={"status": "expired"})
        await call("DELETE", f"/v1/tokens/{org['id']}", "admin", expect=204)
        await call("DELETE", "/v1/users/carol")
        await call("DELETE", "/v1/tokens", "bob")
        await call("POST", "/v1/verify", "alice", expect=400, json={})
        await call("GET", "/v1/me", "bob", expect=401)
    # every documented success response was exercised at least once
    successes = {(p, m) for p, m, s in call.seen if s.startswith("2")}
    documented = {(p, m) for p, item in DOC["paths"].items() for m in item if p != "/v1/verify"}
    assert documented - successes == set()


# -- the document is as strict as the code (issue 9) ---------------------------------------

_SCOPES = [
    "*", "all", "READ-ONLY", "restricted", "threads:read", "Threads:Read:Own", "a_b-c:*",
    "*:list", "x:nope", "x", ":read", "x:read:mine", "x:read:own:own", "1x:read", "x y:read",
    "", "x:read ", "all:read", "x:*:own",
]  # fmt: skip


@pytest.mark.parametrize("scope", _SCOPES)
def test_the_scope_pattern_is_the_scope_grammar(scope: str) -> None:
    from patgate.policies.scopes import validate_scopes

    try:
        validate_scopes([scope])
        valid = True
    except ValueError:
        valid = False
    assert bool(re.search(SCOPE_PATTERN, scope)) == valid


@pytest.mark.parametrize(
    ("pattern", "code_regex"),
    [(ID_PATTERN, inputs._ID_RE.pattern), (WORKSPACE_PATTERN, inputs._WORKSPACE_RE.pattern)],
)
def test_id_patterns_are_the_codes(pattern: str, code_regex: str) -> None:
    assert pattern == f"^{code_regex}$"


def test_every_operation_documents_its_errors_with_the_error_schema() -> None:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            if op.get("security") == []:
                continue
            # any authenticated call: two credentials (400), none (401), scope (403), store
            assert {"400", "401", "403", "503"} <= set(responses), (method, path)
            for status, spec in responses.items():
                if status >= "400":
                    schema = spec["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)


def test_request_bodies_are_closed_and_strings_bounded() -> None:
    schemas = DOC["components"]["schemas"]
    for name in ("TokenCreate", "TokenPatch", "Regenerate", "Scopes", "UserPut", "OrgPut"):
        assert schemas[name]["additionalProperties"] is False, name
    create = schemas["TokenCreate"]["properties"]
    assert create["name"]["minLength"] == 1
    assert create["scopes"]["oneOf"][0]["items"]["pattern"] == SCOPE_PATTERN
    assert schemas["OrgPut"]["properties"]["max_lifetime"]["oneOf"][1]["maximum"] == MAX_LIFETIME
    for field in ("member_scopes", "admin_scopes"):
        assert schemas["OrgPut"]["properties"][field]["items"]["pattern"] == SCOPE_PATTERN
        assert field in schemas["Org"]["required"]
    for field in ("workspaces", "grantable_scopes"):
        assert field in schemas["UserPut"]["properties"]
        assert field in schemas["User"]["required"]
