"""Management API endpoints (``/v1/...``): thin translations to the service layer."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from patgate.gateway.bodies import read_capped
from patgate.gateway.lifecycle import (
    Actor,
    Directory,
    EventQuery,
    Filters,
    Owner,
    TokenService,
    query_events,
)
from patgate.gateway.lifecycle.listing import Page
from patgate.gateway.lifecycle.tokens import CREATE_FIELDS, MAX_REPORTED
from patgate.gateway.notify.setup import Notifications
from patgate.middleware.errors import ValidationFailed
from patgate.middleware.records import Token, TokenStatus, User

from .auth import ActorResolver
from .credentials import ReportLimit
from .notify_routes import NotifyApi

__all__ = ["ManagementApi", "Verifier"]

_MAX_BODY = 64 * 1024
#: responses that carry a secret must not be stored by any cache (cf. RFC 6749 §5.1).
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}

Verifier = Callable[[dict[str, Any], Actor], Awaitable[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


def _dispatch(handlers: dict[str, Endpoint]) -> Endpoint:
    get = handlers.get("GET")

    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None and request.method == "HEAD" and get is not None:
            handler = get
        assert handler is not None  # the Route only admits the methods in handlers
        return await handler(request)

    return endpoint


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_capped(request, _MAX_BODY)
    if not raw.strip():
        return {}
    try:
        # NaN and Infinity are not JSON (RFC 8259 §6) though Python's parser takes them.
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise ValidationFailed("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    return body


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")


def _str_or_none(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationFailed(f"{key}: expected a string")
    return value


_NEW_TOKEN_FIELDS = {"name", *CREATE_FIELDS}


def _new_token(body: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """The keyword arguments of a create or a registration, from its JSON body."""
    if "name" not in body:
        raise ValidationFailed("name: required")
    owner = None
    if body.get("owner") is not None:
        o = body["owner"]
        if (
            not isinstance(o, dict)
            or o.get("type") not in ("user", "org")
            or not set(o) <= {"type", "id"}
        ):
            raise ValidationFailed('owner: expected {"type": "user"|"org", "id": ...}')
        owner_id = o.get("id", actor.org_id if o["type"] == "org" else actor.id)
        if not isinstance(owner_id, str):
            raise ValidationFailed("owner.id: expected a string")
        owner = Owner(o["type"], owner_id)
    return {
        "name": body["name"],
        "description": body.get("description"),
        # Omitted (or null): the org's default scopes (issue 13), unless a role or
        # restricted says what the token may do.
        "scopes": body.get("scopes"),
        "workspaces": body.get("workspaces"),
        "expiration": _str_or_none(body, "expiration"),
        "expires_at": body.get("expires_at"),
        "owner": owner,
        "type": body.get("type"),
        "allowed_ips": body.get("allowed_ips"),
        "role": body.get("role"),
        "restricted": body.get("restricted"),
    }


class ManagementApi:
    def __init__(
        self,
        tokens: TokenService,
        directory: Directory,
        resolve: ActorResolver,
        *,
        verifier: Verifier | None = None,
        openapi: dict[str, Any] | None = None,
        reports: ReportLimit | None = None,
        notifications: Notifications | None = None,
    ) -> None:
        self.reports = reports
        #: webhook endpoints and dead letters (issue 14); None: not served.
        self.notify = (
            None
            if notifications is None
            else NotifyApi(notifications, resolve, _body, clock=tokens.clock)
        )
        self.tokens = tokens
        self.directory = directory
        self.resolve = resolve
        self.verifier = verifier
        self.openapi = openapi

    def _now(self) -> float:
        return self.tokens.clock()

    def _token(self, token: Token) -> dict[str, Any]:
        return token.to_json(self._now())

    def _page(self, page: Page) -> dict[str, Any]:
        items = []
        for t in page.items:
            item = self._token(t)
            owner = page.owners.get(t.owner_id) if t.owner_kind == "user" else None
            if owner is not None:
                item["owner"]["email"] = owner.email
                item["owner"]["name"] = owner.name
            items.append(item)
        return {"items": items, "next_cursor": page.next_cursor}

    @staticmethod
    def _filters(request: Request, *, default_status: TokenStatus | None = None) -> Filters:
        q = request.query_params
        return Filters.parse(
            status=q.get("status"),
            q=q.get("q"),
            type=q.get("type"),
            limit=q.get("limit"),
            cursor=q.get("cursor"),
            default_status=default_status,
        )

    # -- tokens --------------------------------------------------------------------------

    async def create_token(self, request: Request) -> Response:
        actor = await self.resolve(request)
        body = await _body(request)
        _only(body, _NEW_TOKEN_FIELDS)
        token, secret = await self.tokens.create(actor, **_new_token(body, actor))
        return JSONResponse(
            {"token": secret, **self._token(token)}, status_code=201, headers=_NO_STORE
        )

    async def register_token(self, request: Request) -> Response:
        """A token issued elsewhere (issue 13): by its value, hashed on arrival, or by
        its SHA-256; no secret in the answer, which has none to give."""
        actor = await self.resolve(request)
        body = await _body(request)
        _only(body, _NEW_TOKEN_FIELDS | {"value", "sha256", "issuer"})
        token = await self.tokens.register(
            actor,
            value=body.get("value"),
            sha256=body.get("sha256"),
            issuer=body.get("issuer"),
            **_new_token(body, actor),
        )
        return JSONResponse(self._token(token), status_code=201, headers=_NO_STORE)

    async def list_tokens(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(self._page(await self.tokens.list_own(actor, self._filters(request))))

    async def delete_all_tokens(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse({"deleted": await self.tokens.delete_all_own(actor)})

    async def get_token(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(self._token(await self.tokens.get(actor, request.path_params["id"])))

    async def patch_token(self, request: Request) -> Response:
        actor = await self.resolve(request)
        body = await _body(request)
        token = await self.tokens.update(actor, request.path_params["id"], body)
        return JSONResponse(self._token(token))

    async def delete_token(self, request: Request) -> Response:
        actor = await self.resolve(request)
        await self.tokens.delete(actor, request.path_params["id"])
        return Response(status_code=204)

    async def add_scopes(self, request: Request) -> Response:
        actor = await self.resolve(request)
        body = await _body(request)
        _only(body, {"scopes"})
        token = await self.tokens.add_scopes(
            actor, request.path_params["id"], body.get("scopes", [])
        )
        return JSONResponse(self._token(token))

    async def clear_scopes(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(
            self._token(await self.tokens.clear_scopes(actor, request.path_params["id"]))
        )

    async def remove_scope(self, request: Request) -> Response:
        actor = await self.resolve(request)
        token = await self.tokens.remove_scope(
            actor, request.path_params["id"], request.path_params["scope"]
        )
        return JSONResponse(self._token(token))

    async def revoke(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(self._token(await self.tokens.revoke(actor, request.path_params["id"])))

    async def regenerate(self, request: Request) -> Response:
        actor = await self.resolve(request)
        body = await _body(request)
        _only(body, {"expiration", "expires_at", "grace_period"})
        token, secret = await self.tokens.regenerate(
            actor,
            request.path_params["id"],
            expiration=_str_or_none(body, "expiration"),
            expires_at=body.get("expires_at"),
            grace_period=body.get("grace_period"),
        )
        return JSONResponse({"token": secret, **self._token(token)}, headers=_NO_STORE)

    async def end_grace(self, request: Request) -> Response:
        actor = await self.resolve(request)
        token = await self.tokens.end_grace(actor, request.path_params["id"])
        return JSONResponse(self._token(token))

    async def report_credentials(self, request: Request) -> Response:
        """Leaked secrets, reported without authentication (GitHub's credential
        revocation API): one answer whatever they are, so it tells nobody anything."""
        if self.reports is None:
            raise ValidationFailed("credential reports are not available on this listener")
        ip = self.resolve.client_ip(request)
        await self.reports.admit(ip)
        body = await _body(request)
        _only(body, {"credentials"})
        credentials = body.get("credentials")
        if (
            not isinstance(credentials, list)
            or not credentials
            or not all(isinstance(c, str) for c in credentials)
        ):
            raise ValidationFailed("credentials: expected a non-empty list of token strings")
        if len(credentials) > MAX_REPORTED:
            raise ValidationFailed(f"credentials: at most {MAX_REPORTED} per request")
        await self.tokens.revoke_reported(
            credentials, ip=ip, user_agent=request.headers.get("user-agent")
        )
        return JSONResponse({"status": "accepted"}, status_code=202, headers=_NO_STORE)

    # -- admin ---------------------------------------------------------------------------

    async def admin_list(self, request: Request) -> Response:
        actor = await self.resolve(request)
        org_id = request.query_params.get("org_id", actor.org_id)
        if org_id is None:
            raise ValidationFailed("org_id: required")
        # The admin table shows the active tokens unless a status is asked for
        # (``?status=revoked|expired``, ``?status=all`` for every one), issue 13.
        filters = self._filters(request, default_status="active")
        page = await self.tokens.list_org(actor, org_id, filters)
        return JSONResponse(self._page(page))

    async def admin_revoke(self, request: Request) -> Response:
        actor = await self.resolve(request)
        actor.require_admin("tokens:admin")
        return JSONResponse(self._token(await self.tokens.revoke(actor, request.path_params["id"])))

    # -- users and orgs ------------------------------------------------------------------

    @staticmethod
    def _user(user: User) -> dict[str, Any]:
        return user.to_json()

    async def list_users(self, request: Request) -> Response:
        actor = await self.resolve(request)
        org_id = request.query_params.get("org_id", actor.org_id)
        if org_id is None:
            raise ValidationFailed("org_id: required")
        users = await self.directory.list_users(actor, org_id)
        return JSONResponse({"items": [u.to_json() for u in users]})

    async def get_user(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(
            (await self.directory.get_user(actor, request.path_params["id"])).to_json()
        )

    async def put_user(self, request: Request) -> Response:
        actor = await self.resolve(request)
        body = await _body(request)
        user = await self.directory.put_user(actor, request.path_params["id"], body)
        return JSONResponse(user.to_json())

    async def delete_user(self, request: Request) -> Response:
        actor = await self.resolve(request)
        revoked = await self.directory.remove_user(actor, request.path_params["id"])
        return JSONResponse({"removed": request.path_params["id"], "revoked_tokens": revoked})

    async def get_org(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(
            (await self.directory.get_org(actor, request.path_params["id"])).to_json()
        )

    async def put_org(self, request: Request) -> Response:
        actor = await self.resolve(request)
        body = await _body(request)
        org = await self.directory.put_org(actor, request.path_params["id"], body)
        return JSONResponse(org.to_json())

    # -- events, verify, meta ------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """The org's audit log for an admin (``tokens:admin`` and the admin role); for
        anyone else with ``tokens:read:own``, only the events of the caller's own tokens
        (issue 13). The query's filters narrow that view and never widen it: another
        user's token id matches nothing, exactly like an unknown one, so the answer does
        not tell a member which ids exist."""
        actor = await self.resolve(request)
        owner = None
        if not actor.is_admin("tokens:admin"):
            actor.require("tokens:read", own=True)
            assert actor.owner_kind is not None  # the operator is an admin
            owner = (actor.owner_kind, actor.id)
        q = request.query_params
        limit = Filters.parse(limit=q.get("limit")).limit
        if actor.org_id is None:  # API callers are tokens, and every token has an org
            raise ValidationFailed("events: an org's events only")
        query = EventQuery(
            org_id=actor.org_id,
            token_id=q.get("token_id"),
            actor=q.get("actor"),
            type=q.get("type"),
            limit=limit,
            cursor=q.get("cursor"),
            owner=owner,
        )
        items, cursor = await query_events(self.tokens.store, query)
        return JSONResponse({"items": items, "next_cursor": cursor})

    async def verify(self, request: Request) -> Response:
        actor = await self.resolve(request)
        actor.require("tokens:read", own=True)
        if self.verifier is None:
            raise ValidationFailed("verification is not available on this listener")
        body = await _body(request)
        _only(body, {"token", "method", "path", "headers", "ip"})
        for key in ("token", "method", "path"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ValidationFailed(f"{key}: a non-empty string is required")
        extra = body.get("headers")
        # ``or {}`` downstream would take false, 0, "" and [] for "no headers".
        if extra is not None and not (
            isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())
        ):
            raise ValidationFailed("headers: expected an object of strings")
        return JSONResponse(await self.verifier(body, actor), headers=_NO_STORE)

    async def me(self, request: Request) -> Response:
        actor = await self.resolve(request)
        return JSONResponse(
            {
                "type": actor.kind,
                "id": actor.id,
                "org_id": actor.org_id,
                "role": actor.role,
                "token_id": actor.token_id,
                "scopes": sorted(actor.scopes),
                "time": self._now(),
            }
        )

    async def openapi_document(self, request: Request) -> Response:
        return JSONResponse(self.openapi or {})

    def routes(self) -> list[Route]:
        """One Route per path, so a 405 lists every method of the path in ``Allow``
        (RFC 9110 §15.5.6); Starlette answers 405 from the first route whose path matched."""
        table: list[tuple[str, str, Endpoint]] = [
            ("/v1/openapi.json", "GET", self.openapi_document),
            ("/v1/me", "GET", self.me),
            ("/v1/tokens", "POST", self.create_token),
            ("/v1/tokens", "GET", self.list_tokens),
            ("/v1/tokens", "DELETE", self.delete_all_tokens),
            ("/v1/tokens/{id}", "GET", self.get_token),
            ("/v1/tokens/{id}", "PATCH", self.patch_token),
            ("/v1/tokens/{id}", "DELETE", self.delete_token),
            ("/v1/tokens/{id}/scopes", "POST", self.add_scopes),
            ("/v1/tokens/{id}/scopes", "DELETE", self.clear_scopes),
            ("/v1/tokens/{id}/scopes/{scope}", "DELETE", self.remove_scope),
            ("/v1/tokens/{id}/revoke", "POST", self.revoke),
            ("/v1/tokens/{id}/regenerate", "POST", self.regenerate),
            ("/v1/tokens/{id}/end-grace", "POST", self.end_grace),
            ("/v1/credentials/revoke", "POST", self.report_credentials),
            ("/v1/admin/tokens", "GET", self.admin_list),
            ("/v1/admin/tokens", "POST", self.register_token),
            ("/v1/admin/tokens/{id}/revoke", "POST", self.admin_revoke),
            ("/v1/users", "GET", self.list_users),
            ("/v1/users/{id}", "GET", self.get_user),
            ("/v1/users/{id}", "PUT", self.put_user),
            ("/v1/users/{id}", "DELETE", self.delete_user),
            ("/v1/orgs/{id}", "GET", self.get_org),
            ("/v1/orgs/{id}", "PUT", self.put_org),
            ("/v1/events", "GET", self.events),
            ("/v1/verify", "POST", self.verify),
        ]
        if self.notify is not None:
            table += self.notify.table()
        by_path: dict[str, dict[str, Endpoint]] = {}
        for path, method, handler in table:
            by_path.setdefault(path, {})[method] = handler
        return [
            Route(path, _dispatch(handlers), methods=list(handlers))
            for path, handlers in by_path.items()
        ]
