"""The issue-12 alerts: blocked clients (the failed-authentication limit) and the reuse
tripwire, in alerts.yml and its PrometheusRule copy, each with a promtool case that fires
it (run by tests/deploy/test_prometheus_rules.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patgate.middleware.tripwire import REUSE_EVENTS
from tests.deploy._support import DEPLOY, PROMETHEUS_DIR, check_expr, load_yaml

#: alert → (the family it reads, its severity as docs/deploy.md lists it).
ALERTS = {
    "PatgateClientsBlocked": ("patgate_client_blocks", "warning"),
    "PatgateTokenReuse": ("patgate_token_reuse", "critical"),
}


DOCS = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()


def _rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize(
    ("alert", "family", "severity"), [(a, f, s) for a, (f, s) in ALERTS.items()]
)
def test_alert_reads_its_metric_in_both_files(alert: str, family: str, severity: str) -> None:
    plain = _rules(load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"])[alert]
    operator = load_yaml(DEPLOY / "kubernetes" / "monitoring" / "prometheusrule.yaml")
    assert _rules(operator["spec"]["groups"])[alert] == plain
    assert family in check_expr(plain["expr"])
    assert plain["labels"]["severity"] == severity
    documented = [line for line in DOCS.splitlines() if line.startswith(f"| `{alert}` |")]
    assert len(documented) == 1
    assert documented[0].rstrip().endswith(f"| {severity} |")
    assert plain["annotations"]["summary"]
    assert plain["annotations"]["description"]
    assert "for" not in plain  # the first block / reuse is the signal


def test_reuse_alert_is_per_kind_and_kinds_match_the_tripwire() -> None:
    rule = _rules(load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"])["PatgateTokenReuse"]
    assert "by (job, kind)" in rule["expr"]
    assert "{{ $labels.kind }}" in rule["annotations"]["summary"]
    cases = [
        series["series"]
        for test in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
        for series in test["input_series"]
        if series["series"].startswith("patgate_token_reuse_total")
    ]
    kinds = {s.split('kind="', 1)[1].split('"', 1)[0] for s in cases}
    assert kinds
    assert kinds <= set(REUSE_EVENTS)
