"""deploy/prometheus/: promtool accepts the config and rules, and the alert unit tests pass.

The alert expressions only name metrics, labels and reasons that middleware/metrics.py
defines, so a renamed metric cannot silently disarm an alert.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from patgate.middleware.metrics import DECISION_REASONS
from tests.deploy._support import PROMETHEUS_DIR, check_expr, load_yaml, require_tool

ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"

#: What the alert rules must watch (issue 6), alert name → the family it reads.
REQUIRED_ALERTS = {
    "PatgateHighUnauthorizedRate": "patgate_decisions",
    "PatgateHighForbiddenRate": "patgate_decisions",
    "PatgateRedisDown": "patgate_redis_up",
    "PatgateLastUsedDropped": "patgate_lastused_dropped",
    "PatgatePolicyReloadFailed": "patgate_policy_reloads",
    "PatgateUpstream5xx": "patgate_upstream_requests",
    "PatgateDecisionLatencyHigh": "patgate_decision_seconds",
    # issue 11
    "PatgateInvalidationLagHigh": "patgate_invalidation_lag_seconds",
    "PatgateInvalidationBehind": "patgate_invalidation_position",
}


def _rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR
    )


@pytest.mark.prometheus
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@pytest.mark.prometheus
def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("alert", "family"), sorted(REQUIRED_ALERTS.items()))
def test_required_alert_reads_its_metric(alert: str, family: str) -> None:
    (rule,) = [r for r in _rules() if r.get("alert") == alert]
    assert family in check_expr(rule["expr"])
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: str(r["alert"]))
def test_alert_names_only_real_metrics_and_labels(rule: dict[str, Any]) -> None:
    used = check_expr(rule["expr"])
    assert used or "up{" in rule["expr"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: str(r["alert"]))
def test_every_alert_has_a_unit_test_that_fires_it(rule: dict[str, Any]) -> None:
    fired = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert rule["alert"] in fired


def _reasons(alert: str) -> set[str]:
    (rule,) = [r for r in _rules() if r["alert"] == alert]
    match = re.search(r'reason=~"([^"]+)"', rule["expr"])
    assert match, alert
    return set(match.group(1).split("|"))


def test_401_and_403_reason_groups_are_disjoint_real_reasons() -> None:
    unauthorized = _reasons("PatgateHighUnauthorizedRate")
    forbidden = _reasons("PatgateHighForbiddenRate")
    assert not unauthorized & forbidden
    assert unauthorized | forbidden <= set(DECISION_REASONS)
    assert not (unauthorized | forbidden) & {"ok", "public"}
