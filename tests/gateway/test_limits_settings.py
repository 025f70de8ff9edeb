"""``PATGATE_AUTH_FAILURE_LIMIT`` and ``PATGATE_AUTH_FAILURE_WINDOW`` (issue 12): parsing,
errors naming the variable, and what the Runtime builds from them."""

from __future__ import annotations

import pytest

from patgate.gateway.settings import ENV_VARS, Settings
from patgate.middleware.config import DataPlaneConfig
from patgate.middleware.errors import ConfigError
from patgate.middleware.runtime import Runtime


def test_defaults_are_50_failures_per_minute() -> None:
    settings = Settings.from_env({})
    assert (settings.auth_failure_limit, settings.auth_failure_window) == (50, 60.0)
    config = DataPlaneConfig()
    assert (config.auth_failure_limit, config.auth_failure_window) == (50, 60.0)
    assert {"PATGATE_AUTH_FAILURE_LIMIT", "PATGATE_AUTH_FAILURE_WINDOW"} <= set(ENV_VARS)


@pytest.mark.parametrize(
    ("var", "value", "attr", "expected"),
    [
        ("PATGATE_AUTH_FAILURE_LIMIT", "0", "auth_failure_limit", 0),
        ("PATGATE_AUTH_FAILURE_LIMIT", " 200 ", "auth_failure_limit", 200),
        ("PATGATE_AUTH_FAILURE_WINDOW", "1", "auth_failure_window", 1.0),
        ("PATGATE_AUTH_FAILURE_WINDOW", "90.5", "auth_failure_window", 90.5),
    ],
)
def test_values(var: str, value: str, attr: str, expected: object) -> None:
    settings = Settings.from_env({var: value})
    assert getattr(settings, attr) == expected
    assert type(getattr(settings, attr)) is type(expected)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PATGATE_AUTH_FAILURE_LIMIT", "-1"),
        ("PATGATE_AUTH_FAILURE_LIMIT", "1.5"),
        ("PATGATE_AUTH_FAILURE_LIMIT", "lots"),
        ("PATGATE_AUTH_FAILURE_WINDOW", "0"),
        ("PATGATE_AUTH_FAILURE_WINDOW", "0.5"),
        ("PATGATE_AUTH_FAILURE_WINDOW", "a minute"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_runtime_builds_the_limiter_from_the_settings() -> None:
    env = {"PATGATE_REDIS_URL": "redis://127.0.0.1:1/0"}
    runtime = Runtime(
        Settings.from_env(
            {**env, "PATGATE_AUTH_FAILURE_LIMIT": "7", "PATGATE_AUTH_FAILURE_WINDOW": "30"}
        )
    )
    assert (runtime.limiter.limit, runtime.limiter.window) == (7, 30.0)
    assert runtime.authenticator.limiter is runtime.limiter
    assert runtime.subscriber.on_block == runtime.limiter.block
    off = Runtime(Settings.from_env({**env, "PATGATE_AUTH_FAILURE_LIMIT": "0"}))
    assert off.authenticator.limiter is None
    assert not off.limiter.enabled
