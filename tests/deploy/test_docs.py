"""docs/deploy.md agrees with the code: the metrics table, the alerts, the settings."""

from __future__ import annotations

import re

from patgate.gateway.settings import ENV_VARS, FILE_VARS
from tests.deploy._support import PROMETHEUS_DIR, REPO, load_yaml, metric_families

DOC = REPO / "docs" / "deploy.md"


def _table_rows(first_cell: str) -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if line.startswith(f"| {first_cell}"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_metrics_table_has_one_row_per_metric_with_type_and_labels() -> None:
    families = {fam.exposed: fam for fam in metric_families().values()}
    rows = _table_rows("`patgate_")
    names = [_ticked(row[0])[0] for row in rows]
    assert sorted(names) == sorted(families), "one row per metric in middleware/metrics.py"
    for row in rows:
        name, kind, labels, meaning = row
        fam = families[_ticked(name)[0]]
        assert kind == fam.kind, name
        assert tuple(_ticked(labels)) == fam.labels, name
        assert meaning, name


def test_alert_table_lists_every_alert() -> None:
    documented = {_ticked(row[0])[0] for row in _table_rows("`Patgate")}
    rules = load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    assert documented == {r["alert"] for g in rules for r in g["rules"]}


def test_every_setting_named_exists() -> None:
    named = set(re.findall(r"\bPATGATE_[A-Z_]+\b", DOC.read_text()))
    assert named
    assert named <= set(ENV_VARS) | set(FILE_VARS)
