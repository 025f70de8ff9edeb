"""deploy/grafana/: the dashboard covers every metric and names only metrics that exist."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy._support import (
    DASHBOARD,
    check_expr,
    dashboard_exprs,
    dashboard_panels,
    metric_families,
    plain_expr,
    require_tool,
)


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_dashboard_identity() -> None:
    dash = _dashboard()
    assert dash["uid"] == "patgate"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "job", "instance"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_expr_names_only_real_metrics(expr: str) -> None:
    assert check_expr(expr)
    assert 'job=~"$job"' in expr
    assert 'instance=~"$instance"' in expr


def test_every_metric_has_a_panel() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= check_expr(expr)
    assert used == set(metric_families())


def test_every_query_panel_uses_the_datasource_variable() -> None:
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            assert panel["description"], panel["title"]


@pytest.mark.prometheus
def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = [
        {"record": f"dashboard:expr{i}", "expr": plain_expr(e)}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
