"""The console's Jinja2 environment: autoescaped, strict, templates from the package.

Every page extends ``base.html``; links are built from the mount point the request
came through (``root_path``), so the same templates serve ``/console`` on the admin
listener and wherever a host product mounts the console.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import jinja2

__all__ = ["Renderer", "ago", "masked", "shown", "when"]


def when(at: float | None) -> str:
    if at is None:
        return "never"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(at: float | None, now: float | None = None) -> str:
    """A relative time: "in 29 days", "3 hours ago", "just now"."""
    if at is None:
        return ""
    delta = at - (time.time() if now is None else now)
    future, seconds = delta > 0, abs(delta)
    units = ((86_400, "day"), (3600, "hour"), (60, "minute"))
    for i, (size, unit) in enumerate(units):
        if seconds >= size:
            # Rounded, not floored: a token made "for 7 days" a second ago expires
            # "in 7 days", not "in 6 days"; 59.9 minutes is "1 hour".
            n = round(seconds / size)
            if i and n * size >= units[i - 1][0]:
                size, unit = units[i - 1]
                n = round(seconds / size)
            text = f"{n} {unit}{'' if n == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return "in under a minute" if future else "just now"


def shown(value: Any, key: str = "") -> str:
    """An audit event's data value as people read it: times as times, lists joined,
    nothing as a dash (never Python's repr)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and (key.endswith("_at") or key == "until"):
        return when(float(value))
    if isinstance(value, list | tuple):
        return ", ".join(shown(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {shown(v, k)}" for k, v in value.items())
    return str(value)


def masked(prefix: str) -> str:
    """A token shown partially masked: its display prefix, then dots (never the secret)."""
    return prefix + "…" + "•" * 8


class Renderer:
    def __init__(self, title: str) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("patgate.gateway.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(when=when, ago=ago, masked=masked, shown=shown)
        self.env.globals["product"] = title

    def render(self, name: str, context: dict[str, Any]) -> str:
        return self.env.get_template(name).render(context)
