"""Settings from ``PATGATE_*`` variables: parsing, errors naming the variable, the README."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from patgate.gateway.settings import ENV_VARS, FILE_VARS, Settings, parse_hostport
from patgate.middleware.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("var", "value", "attr", "expected"),
    [
        ("PATGATE_REDIS_URL", "redis://h:6379/0", "redis_url", "redis://h:6379/0"),
        ("PATGATE_REDIS_URL", "unix:///run/v.sock?db=0", "redis_url", "unix:///run/v.sock?db=0"),
        ("PATGATE_DATA_DIR", "/var/lib/patgate", "data_dir", Path("/var/lib/patgate")),
        ("PATGATE_NAMESPACE", "prod", "namespace", "prod"),
        ("PATGATE_TOKEN_PREFIX", "acme", "token_prefix", "acme"),
        ("PATGATE_PEPPER", "s3cret", "pepper", b"s3cret"),
        ("PATGATE_DURABLE_WRITES", "no", "durable_writes", False),
        ("PATGATE_DURABLE_WRITES", " TRUE ", "durable_writes", True),
        ("PATGATE_DURABLE_WRITES", "0", "durable_writes", False),
        ("PATGATE_DURABLE_WRITES", "on", "durable_writes", True),
        ("PATGATE_POLICY_FILE", "p.toml", "policy_file", Path("p.toml")),
        ("PATGATE_UPSTREAM_URL", "http://127.0.0.1:9000/", "upstream_url", "http://127.0.0.1:9000"),
        ("PATGATE_LISTEN", "0.0.0.0:9000", "listen", ("0.0.0.0", 9000)),
        ("PATGATE_ADMIN_LISTEN", "[::1]:8081", "admin_listen", ("::1", 8081)),
        ("PATGATE_AUTHZ_LISTEN", ":8082", "authz_listen", ("127.0.0.1", 8082)),
        ("PATGATE_LISTEN", "localhost:0", "listen", ("localhost", 0)),
        (
            "PATGATE_TRUSTED_PROXIES",
            "10.0.0.0/8, ::1 ,*",
            "trusted_proxies",
            ("10.0.0.0/8", "::1", "*"),
        ),
        ("PATGATE_TRUSTED_PROXIES", "", "trusted_proxies", ("127.0.0.1", "::1")),  # unset
        ("PATGATE_REALM", "api", "realm", "api"),
        ("PATGATE_CACHE_SIZE", "0", "cache_size", 0),
        ("PATGATE_CACHE_TTL", "1.5", "cache_ttl", 1.5),
        ("PATGATE_NEGATIVE_TTL", "0", "negative_ttl", 0.0),
        ("PATGATE_LASTUSED_INTERVAL", "0.01", "lastused_interval", 0.01),
        ("PATGATE_LASTUSED_MAX_PENDING", "7", "lastused_max_pending", 7),
        ("PATGATE_UPSTREAM_TIMEOUT", "2.5", "upstream_timeout", 2.5),
        ("PATGATE_UPSTREAM_CONNECT_TIMEOUT", "1", "upstream_connect_timeout", 1.0),
        ("PATGATE_UPSTREAM_POOL_SIZE", "16", "upstream_pool_size", 16),
        ("PATGATE_UPSTREAM_CLIENT", "aiohttp", "upstream_client", "aiohttp"),
        ("PATGATE_UPSTREAM_CLIENT", " HTTP1 ", "upstream_client", "http1"),
        ("PATGATE_UPSTREAM_CA_FILE", "/etc/ca.pem", "upstream_ca_file", Path("/etc/ca.pem")),
        ("PATGATE_EVENTS_MAXLEN", "1000", "events_maxlen", 1000),
        ("PATGATE_DEFAULT_TOKEN_LIMIT", "25", "default_token_limit", 25),
        ("PATGATE_DEFAULT_TOKEN_LIMIT", "off", "default_token_limit", None),
        ("PATGATE_DEFAULT_TOKEN_LIMIT", "0", "default_token_limit", None),
        ("PATGATE_DEFAULT_OWNER_TOKEN_LIMIT", "3", "default_owner_token_limit", 3),
        ("PATGATE_EXTERNAL_TOKENS", "false", "external_tokens", False),
        ("PATGATE_DEFAULT_ORG", "acme", "default_org", "acme"),
        ("PATGATE_WORKERS", "4", "workers", 4),
        ("PATGATE_LOG_LEVEL", "debug", "log_level", "debug"),
        ("PATGATE_CONSOLE", "off", "console", False),
        ("PATGATE_CONSOLE_SESSION_TTL", "3600", "console_session_ttl", 3600.0),
        (
            "PATGATE_CONSOLE_FRAME_ANCESTORS",
            "'self'  https://app.example.com",
            "console_frame_ancestors",
            "'self' https://app.example.com",
        ),
        ("PATGATE_CONSOLE_SECURE_COOKIE", "always", "console_secure_cookie", "always"),
    ],
)
def test_good_values(var: str, value: str, attr: str, expected: Any) -> None:
    settings = Settings.from_env({var: value})
    assert getattr(settings, attr) == expected
    assert type(getattr(settings, attr)) is type(expected)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PATGATE_REDIS_URL", "localhost:6379"),
        ("PATGATE_UPSTREAM_URL", "127.0.0.1:9000"),
        ("PATGATE_DURABLE_WRITES", "maybe"),
        ("PATGATE_DURABLE_WRITES", "2"),
        ("PATGATE_LISTEN", "8080"),
        ("PATGATE_LISTEN", "host:99999"),
        ("PATGATE_ADMIN_LISTEN", "host:http"),
        ("PATGATE_AUTHZ_LISTEN", "host:-1"),
        ("PATGATE_TRUSTED_PROXIES", "10.0.0.300"),
        ("PATGATE_TRUSTED_PROXIES", "127.0.0.1,proxy.local"),
        ("PATGATE_CACHE_SIZE", "-1"),
        ("PATGATE_CACHE_SIZE", "lots"),
        ("PATGATE_CACHE_SIZE", "1.5"),
        ("PATGATE_CACHE_TTL", "-0.5"),
        ("PATGATE_NEGATIVE_TTL", "soon"),
        ("PATGATE_LASTUSED_INTERVAL", "0"),
        ("PATGATE_LASTUSED_MAX_PENDING", "0"),
        ("PATGATE_UPSTREAM_TIMEOUT", "0"),
        ("PATGATE_UPSTREAM_CONNECT_TIMEOUT", "x"),
        ("PATGATE_UPSTREAM_POOL_SIZE", "0"),
        ("PATGATE_UPSTREAM_CLIENT", "httpx"),
        ("PATGATE_EVENTS_MAXLEN", "999"),
        ("PATGATE_DEFAULT_TOKEN_LIMIT", "-1"),
        ("PATGATE_DEFAULT_TOKEN_LIMIT", "10001"),
        ("PATGATE_DEFAULT_OWNER_TOKEN_LIMIT", "many"),
        ("PATGATE_WORKERS", "0"),
        ("PATGATE_PEPPER_FILE", "/nonexistent/pepper"),
        ("PATGATE_CONSOLE", "maybe"),
        ("PATGATE_CONSOLE_SESSION_TTL", "30"),
        ("PATGATE_CONSOLE_SESSION_TTL", "99999999"),
        # A source list must not end the directive and smuggle in another one.
        ("PATGATE_CONSOLE_FRAME_ANCESTORS", "'self'; script-src *"),
        ("PATGATE_CONSOLE_FRAME_ANCESTORS", "'none' https://a.example"),
        ("PATGATE_CONSOLE_FRAME_ANCESTORS", " "),
        ("PATGATE_CONSOLE_SECURE_COOKIE", "sometimes"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_pepper_file(tmp_path: Path) -> None:
    path = tmp_path / "pepper"
    path.write_bytes(b"  from-file\n")
    assert Settings.from_env({"PATGATE_PEPPER_FILE": str(path)}).pepper == b"from-file"
    # an explicit PATGATE_PEPPER wins over the file
    both = {"PATGATE_PEPPER_FILE": str(path), "PATGATE_PEPPER": "direct"}
    assert Settings.from_env(both).pepper == b"direct"
    path.write_bytes(b"\n")
    assert Settings.from_env({"PATGATE_PEPPER_FILE": str(path)}).pepper is None
    assert "from-file" not in repr(Settings(pepper=b"from-file"))


def test_overrides_win_and_none_is_ignored() -> None:
    env = {"PATGATE_NAMESPACE": "env", "PATGATE_REDIS_URL": "redis://env:6379"}
    s = Settings.from_env(env, namespace="flag", redis_url=None)
    assert (s.namespace, s.redis_url) == ("flag", "redis://env:6379")
    with pytest.raises(ConfigError, match="unknown settings: bogus"):
        Settings.from_env({}, bogus=1)
    assert Settings.from_env({}) == Settings()
    assert s.evolve(realm="x").realm == "x"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATGATE_REALM", "from-os")
    assert Settings.from_env().realm == "from-os"


def test_parse_hostport_error_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--listen"):
        parse_hostport("nope", "--listen")


def test_readme_table_documents_every_variable_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(PATGATE_[A-Z_]+)` \| ([^|]+) \|", readme, re.MULTILINE))
    assert set(rows) == {*ENV_VARS, *FILE_VARS}
    defaults = Settings()
    for var, (attr, parse) in ENV_VARS.items():
        shown = rows[var].strip()
        if shown.startswith("*("):
            assert getattr(defaults, attr) is None, var
        else:
            assert parse(shown.strip("`"), var) == getattr(defaults, attr), var
