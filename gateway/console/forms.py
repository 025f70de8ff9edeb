"""HTML form bodies → the service layer's arguments.

A form is read capped (64 KiB, like the API's JSON bodies), as
``application/x-www-form-urlencoded`` only. Each function here only *reshapes* what the
browser sent; every rule (names, scopes, expiry, grants, limits) is the service layer's,
so a bad value gets the API's own message. :func:`field_of` finds which input a
service error is about, so the page can show it beside that input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from patgate.gateway.bodies import read_capped
from patgate.gateway.lifecycle import Owner
from patgate.gateway.lifecycle.expiry import PRESETS
from patgate.middleware.errors import ServiceError, ValidationFailed
from patgate.middleware.records import Org

__all__ = [
    "DURATIONS",
    "GRACE_PERIODS",
    "MAX_FORM",
    "Form",
    "create_arguments",
    "expiry_arguments",
    "field_of",
    "lines",
    "read_form",
]

MAX_FORM = 64 * 1024
_MAX_FIELDS = 2000
#: the expiry presets a form offers, in order, with their labels (SPEC: Token).
DURATIONS: tuple[tuple[str, str], ...] = (
    ("1d", "1 day"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("60d", "60 days"),
    ("90d", "90 days"),
    ("180d", "180 days"),
    ("1y", "1 year"),
    ("never", "Never"),
    ("custom", "Custom date"),
)
assert all(k in PRESETS for k, _ in DURATIONS if k != "custom")
#: how long a regenerated token's previous secret keeps working (issue 12).
GRACE_PERIODS: tuple[tuple[str, str], ...] = (
    ("0", "No overlap: the old secret stops now"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
)
_SPLIT = re.compile(r"[\s,]+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Form:
    fields: Mapping[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0] if values else default

    def has(self, name: str) -> bool:
        return name in self.fields

    def getlist(self, name: str) -> list[str]:
        return list(self.fields.get(name, ()))

    def values(self) -> dict[str, str]:
        """First value per field: what a re-rendered form puts back in its inputs."""
        return {k: v[0] for k, v in self.fields.items() if v}


async def read_form(request: Request) -> Form:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ValidationFailed("expected a form (application/x-www-form-urlencoded)")
    raw = await read_capped(request, MAX_FORM, "form")
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=_MAX_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise ValidationFailed(
            "the form could not be read (not UTF-8, or too many fields)"
        ) from None
    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        fields.setdefault(key, []).append(value)
    return Form(fields)


def lines(text: str) -> list[str]:
    """Items typed one per line, or separated by commas or spaces."""
    return [item for item in _SPLIT.split(text) if item]


def expiry_arguments(form: Form, prefix: str = "") -> dict[str, Any]:
    """``expiration``/``expires_at`` from a duration select and a custom date (the end of
    that day, UTC: a token "until 2027-03-01" works all of that day)."""
    choice = form.get(prefix + "expiration", "30d")
    if choice != "custom":
        return {"expiration": choice, "expires_at": None}
    day = form.get(prefix + "expires_on").strip()
    if not day:
        raise ValidationFailed("expires_at: choose a date for a custom expiry")
    if not _DATE.fullmatch(day):
        raise ValidationFailed(f"expires_at: {day[:20]!r} is not a date (YYYY-MM-DD)")
    return {"expiration": None, "expires_at": f"{day}T23:59:59Z"}


def _restricted(form: Form) -> dict[str, list[str]]:
    """Checkboxes named ``op`` with values ``<resource>:<operation>``."""
    chosen: dict[str, list[str]] = {}
    for value in form.getlist("op"):
        resource, _, operation = value.partition(":")
        chosen.setdefault(resource, []).append(operation)
    return chosen


def create_arguments(form: Form, org: Org, *, admin: bool) -> dict[str, Any]:
    """The keyword arguments of :meth:`TokenService.create` from the create form."""
    access = form.get("access", "default")
    scopes: list[str] | None = None
    restricted: dict[str, list[str]] | None = None
    role: str | None = None
    if access == "read":
        # Read only: every resource's read and list operations, or the wildcard's.
        if org.resources:
            restricted = {r: ["read", "list"] for r in org.resources}
        else:
            scopes = ["*:read", "*:list"]
    elif access == "role":
        role = form.get("role") or None
        if role is None:
            raise ValidationFailed("role: choose one of the organization's roles")
    elif access == "restricted":
        restricted = _restricted(form)
        if not restricted:
            raise ValidationFailed("restricted: tick at least one operation")
    elif access == "scopes":
        scopes = lines(form.get("scopes"))
        if not scopes:
            raise ValidationFailed("scopes: list at least one scope")
    elif access != "default":
        raise ValidationFailed("access: choose all, read only, a role, restricted or scopes")
    workspaces = None
    if form.get("workspace_scope", "all") == "some":
        workspaces = lines(form.get("workspaces"))
        if not workspaces:
            raise ValidationFailed("workspaces: list at least one workspace, or choose all")
    owner = None
    if admin and form.get("owner", "me") == "org":
        owner = Owner("org", org.id)
    allowed = lines(form.get("allowed_ips"))
    return {
        "name": form.get("name").strip(),
        "description": form.get("description").strip() or None,
        "scopes": scopes,
        "restricted": restricted,
        "role": role,
        "workspaces": workspaces,
        "owner": owner,
        "type": None,
        "allowed_ips": allowed or None,
        **expiry_arguments(form),
    }


def field_of(error: str | ServiceError) -> str | None:
    """The input a service error is about: a name taken is the name's; other messages
    start ``<field>: ...``."""
    if isinstance(error, ServiceError) and getattr(error, "code", None) == "name_taken":
        return "name"
    message = str(error)
    head, sep, _ = message.partition(":")
    if not sep or " " in head.strip():
        return None
    return head.strip().split(".")[0].split(",")[0] or None
