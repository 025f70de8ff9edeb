"""Validation of management input: one clear message per bad field, nothing changed."""

from __future__ import annotations

import re
from typing import Any

from patgate.middleware.allowlist import normalize_allowlist
from patgate.middleware.errors import ValidationFailed
from patgate.middleware.records import TokenType
from patgate.policies.scopes import validate_scopes

__all__ = [
    "check_allowed_ips",
    "check_description",
    "check_grace_period",
    "check_id",
    "check_name",
    "check_scopes",
    "check_token_type",
    "check_workspaces",
]

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
_WORKSPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_WORKSPACES = 100
_TOKEN_TYPES: tuple[TokenType, ...] = ("personal", "service", "oauth")


def _printable(value: str) -> bool:
    return value.isprintable()


def check_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationFailed("name: expected a string")
    name = value.strip()
    if not 1 <= len(name) <= 100:
        raise ValidationFailed("name: must be 1 to 100 characters")
    if not _printable(name):
        raise ValidationFailed("name: must not contain control characters")
    return name


def check_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationFailed("description: expected a string")
    if len(value) > 1000:
        raise ValidationFailed("description: at most 1000 characters")
    if not all(ch.isprintable() or ch in "\n\t" for ch in value):
        raise ValidationFailed("description: must not contain control characters")
    return value


def check_scopes(value: Any, field: str = "scopes") -> tuple[str, ...]:
    # A list (JSON array) or tuple only: a JSON object is iterable too (its keys), and
    # {} would otherwise pass as "no scopes" (found by schemathesis).
    if not isinstance(value, list | tuple):
        raise ValidationFailed(f"{field}: expected a list of scope strings")
    items = list(value)
    if not all(isinstance(s, str) for s in items):
        raise ValidationFailed(f"{field}: expected a list of scope strings")
    try:
        return validate_scopes(items)
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}") from None


def check_workspaces(value: Any) -> tuple[str, ...] | None:
    """``None``, ``"*"`` or ``["*"]`` mean every workspace; else a list of workspace ids."""
    if value is None or value == "*" or value == ["*"]:
        return None
    if isinstance(value, str) or not isinstance(value, list):
        raise ValidationFailed('workspaces: expected "*" or a list of workspace ids')
    if not value:
        raise ValidationFailed('workspaces: an empty list allows nothing; use "*" or ids')
    if len(value) > _MAX_WORKSPACES:
        raise ValidationFailed(f"workspaces: at most {_MAX_WORKSPACES}")
    for ws in value:
        if not isinstance(ws, str) or not _WORKSPACE_RE.fullmatch(ws):
            raise ValidationFailed(f"workspaces: {ws!r} is not a valid workspace id")
    return tuple(sorted(set(value)))


def check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValidationFailed(
            f"{field}: 1-128 characters of letters, digits, '_', '.', '@' or '-'"
        )
    return value


def check_token_type(value: Any, default: TokenType) -> TokenType:
    if value is None:
        return default
    for t in _TOKEN_TYPES:
        if value == t:
            return t
    raise ValidationFailed(f"type: expected one of {', '.join(_TOKEN_TYPES)}")


def check_allowed_ips(value: Any) -> tuple[str, ...] | None:
    """``None`` (any address) or a list of up to 32 addresses/CIDRs, normalized
    (:func:`patgate.middleware.allowlist.normalize_allowlist`)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValidationFailed("allowed_ips: expected a list of IP addresses or CIDRs, or null")
    try:
        return normalize_allowlist(value)
    except ValueError as exc:
        raise ValidationFailed(f"allowed_ips: {exc}") from None


def check_grace_period(value: Any, maximum: float) -> float:
    """Seconds the previous secret keeps working after a regeneration: 0 (none) up to
    the org's ``max_grace_period``."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed("grace_period: expected a number of seconds")
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValidationFailed("grace_period: must be 0 or more seconds")
    if seconds > maximum:
        raise ValidationFailed(
            f"grace_period: at most {maximum:g} seconds (the organization's max_grace_period)"
        )
    return seconds
