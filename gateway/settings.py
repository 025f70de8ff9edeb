"""One frozen settings object, read from ``PATGATE_*`` environment variables.

The CLI turns its arguments into a :class:`Settings`; ``create_app(settings)`` and friends
take it. Nothing else reads the environment. The README's configuration table is checked
against :data:`ENV_VARS` by a test.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from patgate.middleware.config import DataPlaneConfig
from patgate.middleware.errors import ConfigError

__all__ = [
    "ENV_VARS",
    "FILE_VARS",
    "FORWARD_AUTH_SOURCES",
    "UPSTREAM_CLIENTS",
    "Settings",
    "check_frame_ancestors",
    "parse_hostport",
]


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}: expected true/false, got {value!r}")


def _number(value: str, name: str, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        parsed = kind(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(parsed) or parsed < minimum:
        raise ConfigError(f"{name}: must be ≥ {minimum}, got {value!r}")
    return parsed


def _token_limit(value: str, name: str) -> int | None:
    """A count of active tokens from 1 to 10000, or ``0``/``off`` for no limit."""
    if value.strip().lower() in ("0", "off", "none"):
        return None
    limit = _number(value, name, int, 1)
    if limit > 10_000:
        raise ConfigError(f"{name}: must be ≤ 10000 (or 0 for no limit), got {value!r}")
    return int(limit)


def _networks(value: str, name: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP address or CIDR") from None
    return items


@dataclass(frozen=True, slots=True)
class Settings(DataPlaneConfig):
    """Everything ``patgate`` runs with: the data plane's :class:`DataPlaneConfig` plus
    the gateway's listeners, upstream, forward-auth and management defaults."""

    upstream_url: str | None = None
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    admin_listen: tuple[str, int] = ("127.0.0.1", 8081)
    authz_listen: tuple[str, int] = ("127.0.0.1", 8082)
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 16 * 1024
    forward_auth_source: str = "auto"
    upstream_timeout: float = 30.0
    upstream_connect_timeout: float = 5.0
    upstream_pool_size: int = 256
    #: the upstream transport (gateway/upstream/): ``http1`` or the ``aiohttp`` fallback.
    upstream_client: str = "http1"
    #: a PEM bundle trusted for an ``https`` upstream instead of the system store.
    upstream_ca_file: Path | None = None
    #: active tokens per org, and per owner, for orgs created without naming them
    #: (issue 13); None: no limit.
    default_token_limit: int | None = 10
    default_owner_token_limit: int | None = None
    #: leaked-credential reports (``POST /v1/credentials/revoke``) per client and window.
    credential_report_limit: int = 10
    credential_report_window: float = 60.0
    default_org: str = "default"
    #: notifications (issue 14): the worker inside ``patgate serve``, mail and webhooks.
    notify: bool = True
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "patgate@localhost"
    smtp_timeout: float = 10.0
    smtp_ca_file: Path | None = None
    mail_templates: Path | None = None
    notify_max_attempts: int = 8
    notify_backoff: float = 5.0
    notify_lease: float = 60.0
    notify_claim_idle: float = 30.0
    #: seconds before expiry that reminders go out (the expiry mail itself always does).
    reminder_leads: tuple[float, ...] = (7 * 86_400.0, 86_400.0)
    webhook_timeout: float = 5.0
    webhook_allow_private: bool = False
    #: the web console at /console on the admin listener (issue 15).
    console: bool = True
    console_session_ttl: float = 8 * 3600.0
    console_frame_ancestors: str = "'none'"
    console_secure_cookie: str = "auto"
    workers: int = 1
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``PATGATE_*`` variables, then ``overrides`` (from CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, (attr, parse) in ENV_VARS.items():
            raw = env.get(var)
            if raw is not None and raw != "":
                values[attr] = parse(raw, var)
        for var, attr in FILE_VARS.items():
            path = env.get(var)
            if path and attr not in values:
                try:
                    secret = Path(path).read_bytes().strip()
                except OSError as exc:
                    raise ConfigError(f"{var}: cannot read {path}: {exc}") from exc
                if attr == "previous_pepper":
                    values[attr] = _pepper_value(secret, var)
                elif attr == "smtp_password":
                    values[attr] = secret.decode() or None
                else:
                    values[attr] = secret or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**values)


def _pepper_value(raw: bytes, name: str) -> bytes | None:
    """A previous pepper: ``none`` means the previous digests had no pepper (a rotation
    to a first pepper); empty means no rotation."""
    if raw.strip().lower() == b"none":
        return b""
    return raw or None


def _str(value: str, _name: str) -> str:
    return value


def _prefix(value: str, name: str) -> str:
    from patgate.middleware.tokenformat import TokenFormat

    try:
        TokenFormat(prefix=value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return value


def _replicas(value: str, name: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    if not value.strip().isdigit() or int(value) > 16:
        raise ConfigError(f"{name}: expected auto or a number of replicas 0-16, got {value!r}")
    return int(value)


_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _namespace(value: str, name: str) -> str:
    # It becomes a Cluster hash tag, ``{<namespace>:<partition>}``, and a SCAN pattern:
    # no braces, glob characters or spaces (middleware/keys.py).
    if not _NAMESPACE.fullmatch(value):
        raise ConfigError(f"{name}: 1-64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def _path(value: str, _name: str) -> Path:
    return Path(value)


def _url(value: str, name: str) -> str:
    if "://" not in value:
        raise ConfigError(f"{name}: expected a URL such as redis://host:6379/0, got {value!r}")
    return value.rstrip("/") if name == "PATGATE_UPSTREAM_URL" else value


def _bounded(value: str, name: str, low: float, high: float) -> float:
    seconds = float(_number(value, name, float, low))
    if seconds > high:
        raise ConfigError(f"{name}: must be ≤ {high:g}, got {value!r}")
    return seconds


#: a CSP source expression of ``frame-ancestors`` (CSP Level 3 §6.4.2): a keyword, a
#: scheme, or a host source with an optional scheme, port and path; nothing that could
#: end the directive (``;``, ``,``) or smuggle another one in.
_SOURCE = re.compile(
    r"'none'|'self'|[a-z][a-z0-9+.-]*:"
    r"|(?:[a-z][a-z0-9+.-]*://)?[\w.*-]+(?::\d+|:\*)?(?:/[\w./-]*)?",
    re.IGNORECASE,
)


def check_frame_ancestors(value: str, name: str = "frame_ancestors") -> str:
    """The sources allowed to frame the console, checked one by one; ``'none'`` (the
    default) forbids every frame, which also stops clickjacking (RFC 7034's intent)."""
    sources = value.split()
    if not sources:
        raise ConfigError(f"{name}: expected 'none', 'self' or host sources, got nothing")
    for source in sources:
        if not _SOURCE.fullmatch(source):
            raise ConfigError(f"{name}: {source!r} is not a CSP source expression")
    if "'none'" in sources and len(sources) > 1:
        raise ConfigError(f"{name}: 'none' cannot be combined with other sources")
    return " ".join(sources)


#: where forward-auth reads the original request (gateway/forwardauth.py).
FORWARD_AUTH_SOURCES = ("auto", "nginx", "traefik", "envoy")


def _source(value: str, name: str) -> str:
    v = value.strip().lower()
    if v not in FORWARD_AUTH_SOURCES:
        expected = ", ".join(FORWARD_AUTH_SOURCES)
        raise ConfigError(f"{name}: expected one of {expected}, got {value!r}")
    return v


_SECURITY = ("starttls", "tls", "none")
#: the upstream transports ``create_upstream`` knows (gateway/upstream/__init__.py).
UPSTREAM_CLIENTS = ("http1", "aiohttp")
_LEAD_UNITS = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def _leads(value: str, name: str) -> tuple[float, ...]:
    """``7d,1d`` (units d, h, m, s; bare numbers are seconds), or ``none``."""
    if value.strip().lower() == "none":
        return ()
    out = []
    for item in (v.strip().lower() for v in value.split(",") if v.strip()):
        unit = _LEAD_UNITS.get(item[-1:])
        number = item[:-1] if unit else item
        try:
            seconds = float(number) * (unit or 1.0)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not a duration such as 7d or 12h") from None
        if not 0 < seconds <= 366 * 86_400:
            raise ConfigError(f"{name}: {item!r} must be more than 0 and at most a year")
        out.append(seconds)
    return tuple(sorted(set(out), reverse=True))


def _choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    v = value.strip().lower()
    if v not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return v


#: environment variable → (Settings attribute, parser); documented in the README table.
ENV_VARS: dict[str, tuple[str, Any]] = {
    "PATGATE_REDIS_URL": ("redis_url", _url),
    "PATGATE_DATA_DIR": ("data_dir", _path),
    "PATGATE_NAMESPACE": ("namespace", lambda v, n: _namespace(v, n)),
    "PATGATE_TOKEN_PREFIX": ("token_prefix", _prefix),
    "PATGATE_PEPPER": ("pepper", lambda v, n: v.encode()),
    "PATGATE_PEPPER_PREVIOUS": ("previous_pepper", lambda v, n: _pepper_value(v.encode(), n)),
    "PATGATE_DURABLE_WRITES": ("durable_writes", _bool),
    "PATGATE_EXTERNAL_TOKENS": ("external_tokens", _bool),
    "PATGATE_DURABLE_REPLICAS": ("durable_replicas", lambda v, n: _replicas(v, n)),
    "PATGATE_REDIS_TIMEOUT": ("redis_timeout", lambda v, n: _number(v, n, float, 0.01)),
    "PATGATE_REDIS_CONNECT_TIMEOUT": (
        "redis_connect_timeout",
        lambda v, n: _number(v, n, float, 0.01),
    ),
    "PATGATE_INVALIDATION_STALENESS": (
        "invalidation_staleness",
        lambda v, n: _number(v, n, float, 0.05),
    ),
    "PATGATE_POLICY_FILE": ("policy_file", _path),
    "PATGATE_UPSTREAM_URL": ("upstream_url", _url),
    "PATGATE_LISTEN": ("listen", parse_hostport),
    "PATGATE_ADMIN_LISTEN": ("admin_listen", parse_hostport),
    "PATGATE_AUTHZ_LISTEN": ("authz_listen", parse_hostport),
    "PATGATE_TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "PATGATE_MAX_HEADER_BYTES": ("max_header_bytes", lambda v, n: _number(v, n, int, 1024)),
    "PATGATE_MAX_HEADERS": ("max_headers", lambda v, n: _number(v, n, int, 8)),
    "PATGATE_MAX_URL_BYTES": ("max_url_bytes", lambda v, n: _number(v, n, int, 256)),
    "PATGATE_FORWARD_AUTH_SOURCE": ("forward_auth_source", _source),
    "PATGATE_REALM": ("realm", _str),
    "PATGATE_CACHE_SIZE": ("cache_size", lambda v, n: _number(v, n, int, 0)),
    "PATGATE_CACHE_TTL": ("cache_ttl", lambda v, n: _number(v, n, float, 0)),
    "PATGATE_NEGATIVE_TTL": ("negative_ttl", lambda v, n: _number(v, n, float, 0)),
    "PATGATE_LASTUSED_INTERVAL": ("lastused_interval", lambda v, n: _number(v, n, float, 0.01)),
    "PATGATE_LASTUSED_MAX_PENDING": (
        "lastused_max_pending",
        lambda v, n: _number(v, n, int, 1),
    ),
    "PATGATE_UPSTREAM_TIMEOUT": ("upstream_timeout", lambda v, n: _number(v, n, float, 0.001)),
    "PATGATE_UPSTREAM_CONNECT_TIMEOUT": (
        "upstream_connect_timeout",
        lambda v, n: _number(v, n, float, 0.001),
    ),
    "PATGATE_UPSTREAM_POOL_SIZE": ("upstream_pool_size", lambda v, n: _number(v, n, int, 1)),
    "PATGATE_UPSTREAM_CLIENT": (
        "upstream_client",
        lambda v, n: _choice(v, n, UPSTREAM_CLIENTS),
    ),
    "PATGATE_UPSTREAM_CA_FILE": ("upstream_ca_file", _path),
    "PATGATE_EVENTS_MAXLEN": ("events_maxlen", lambda v, n: _number(v, n, int, 1000)),
    "PATGATE_AUTH_FAILURE_LIMIT": ("auth_failure_limit", lambda v, n: _number(v, n, int, 0)),
    "PATGATE_AUTH_FAILURE_WINDOW": (
        "auth_failure_window",
        lambda v, n: _number(v, n, float, 1),
    ),
    "PATGATE_TOMBSTONE_TTL": ("tombstone_ttl", lambda v, n: _number(v, n, float, 0)),
    "PATGATE_CREDENTIAL_REPORT_LIMIT": (
        "credential_report_limit",
        lambda v, n: _number(v, n, int, 1),
    ),
    "PATGATE_CREDENTIAL_REPORT_WINDOW": (
        "credential_report_window",
        lambda v, n: _number(v, n, float, 1),
    ),
    "PATGATE_DEFAULT_TOKEN_LIMIT": ("default_token_limit", lambda v, n: _token_limit(v, n)),
    "PATGATE_DEFAULT_OWNER_TOKEN_LIMIT": (
        "default_owner_token_limit",
        lambda v, n: _token_limit(v, n),
    ),
    "PATGATE_DEFAULT_ORG": ("default_org", _str),
    "PATGATE_NOTIFY": ("notify", _bool),
    "PATGATE_SMTP_HOST": ("smtp_host", _str),
    "PATGATE_SMTP_PORT": ("smtp_port", lambda v, n: _number(v, n, int, 1)),
    "PATGATE_SMTP_SECURITY": ("smtp_security", lambda v, n: _choice(v, n, _SECURITY)),
    "PATGATE_SMTP_USERNAME": ("smtp_username", _str),
    "PATGATE_SMTP_PASSWORD": ("smtp_password", _str),
    "PATGATE_SMTP_FROM": ("smtp_from", _str),
    "PATGATE_SMTP_TIMEOUT": ("smtp_timeout", lambda v, n: _number(v, n, float, 0.1)),
    "PATGATE_SMTP_CA_FILE": ("smtp_ca_file", _path),
    "PATGATE_MAIL_TEMPLATES": ("mail_templates", _path),
    "PATGATE_NOTIFY_MAX_ATTEMPTS": ("notify_max_attempts", lambda v, n: _number(v, n, int, 1)),
    "PATGATE_NOTIFY_BACKOFF": ("notify_backoff", lambda v, n: _number(v, n, float, 0.01)),
    "PATGATE_NOTIFY_LEASE": ("notify_lease", lambda v, n: _number(v, n, float, 1)),
    "PATGATE_NOTIFY_CLAIM_IDLE": ("notify_claim_idle", lambda v, n: _number(v, n, float, 0.1)),
    "PATGATE_REMINDER_LEADS": ("reminder_leads", lambda v, n: _leads(v, n)),
    "PATGATE_WEBHOOK_TIMEOUT": ("webhook_timeout", lambda v, n: _number(v, n, float, 0.1)),
    "PATGATE_WEBHOOK_ALLOW_PRIVATE": ("webhook_allow_private", _bool),
    "PATGATE_CONSOLE": ("console", _bool),
    "PATGATE_CONSOLE_SESSION_TTL": (
        "console_session_ttl",
        lambda v, n: _bounded(v, n, 60, 30 * 86_400),
    ),
    "PATGATE_CONSOLE_FRAME_ANCESTORS": ("console_frame_ancestors", check_frame_ancestors),
    "PATGATE_CONSOLE_SECURE_COOKIE": (
        "console_secure_cookie",
        lambda v, n: _choice(v, n, ("auto", "always", "never")),
    ),
    "PATGATE_WORKERS": ("workers", lambda v, n: _number(v, n, int, 1)),
    "PATGATE_LOG_LEVEL": ("log_level", _str),
}

#: variables naming a file to read a secret setting from (the value itself stays out of
#: the environment); the variable without ``_FILE`` wins when both are set.
FILE_VARS: dict[str, str] = {
    "PATGATE_PEPPER_FILE": "pepper",
    "PATGATE_PEPPER_PREVIOUS_FILE": "previous_pepper",
    "PATGATE_SMTP_PASSWORD_FILE": "smtp_password",
}
