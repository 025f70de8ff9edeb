"""The CLI on a bootstrapped org, shared by the CLI test modules of issues 12 and 13."""

from __future__ import annotations

import pytest

from tests.gateway.test_cli import Cli, boot_acme, clear_settings


@pytest.fixture
def acme_cli(
    valkey_url: str,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    """tests/gateway/test_cli.py's driver on org ``acme`` (admin, member alice)."""
    clear_settings(monkeypatch)
    cli = Cli(valkey_url, namespace, capsys)
    boot_acme(cli)
    return cli
