"""What the deploy tests compare the manifests against: the repo's own files.

Images, ports, metric names and settings all come from the code (``Settings`` defaults,
``ENV_VARS``, ``Metrics``, ``pyproject.toml``); the only
hand-written facts are the third-party images below, each with its reason.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.metrics import MetricWrapperBase

from patgate.gateway.notify.worker import NotifyMetrics
from patgate.gateway.settings import Settings
from patgate.middleware.metrics import DECISION_REASONS, Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "patgate.json"

#: Every image a manifest may name besides patgate's own build, pinned by tag, and why.
THIRD_PARTY_IMAGES: dict[str, str] = {
    "python:3.11-slim-bookworm": "Dockerfile base: CPython 3.11 (requires-python) on Debian 12",
    "valkey/valkey:8.0.2": "the store of record: Valkey >= 7.2 with AOF (SPEC), WAITAOF needs 7.2",
    "prom/prometheus:v2.53.3": "Prometheus LTS line; alerts.yml also checked by Debian's promtool",
    "grafana/grafana:11.3.1": "renders deploy/grafana/dashboards/patgate.json (schemaVersion 39)",
}

#: The ports the third-party images listen on, by repository (their documented defaults).
THIRD_PARTY_PORTS: dict[str, frozenset[int]] = {
    "valkey/valkey": frozenset({6379}),
    "prom/prometheus": frozenset({9090}),
    "grafana/grafana": frozenset({3000}),
}

#: Labels Prometheus adds to every scraped series, and a histogram's bucket label.
TARGET_LABELS = frozenset({"job", "instance"})


def own_image() -> str:
    """The tag the Dockerfile's build gets: ``patgate:<pyproject version>``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return f"{project['name']}:{project['version']}"


def patgate_ports() -> dict[str, int]:
    """Listener role → default port, from :class:`Settings`."""
    s = Settings()
    return {"gateway": s.listen[1], "admin": s.admin_listen[1], "authz": s.authz_listen[1]}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # as registered, without the _total suffix prometheus-client strips
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    documentation: str

    @property
    def exposed(self) -> str:
        """The name users see in the docs table: counters with ``_total``."""
        return self.name + "_total" if self.kind == "counter" else self.name

    @property
    def series(self) -> frozenset[str]:
        """Every sample name this family exposes."""
        if self.kind == "counter":
            return frozenset({self.name + "_total", self.name + "_created"})
        if self.kind == "histogram":
            return frozenset(self.name + s for s in ("_bucket", "_sum", "_count", "_created"))
        return frozenset({self.name})


def metric_families() -> dict[str, Family]:
    metrics = Metrics()
    # the notification worker's, registered beside the data plane's (issue 14)
    notify = NotifyMetrics(metrics.registry)
    out: dict[str, Family] = {}
    for value in [*vars(metrics).values(), *vars(notify).values()]:
        if isinstance(value, MetricWrapperBase):
            # _labelnames/_type are prometheus-client internals, but the only place the
            # label names live before a child exists.
            kind = str(value._type)
            fam = Family(value._name, kind, tuple(value._labelnames), value._documentation)
            out[fam.name] = fam
    return out


def series_index() -> dict[str, Family]:
    """Sample name → family."""
    return {s: fam for fam in metric_families().values() for s in fam.series}


_SELECTOR = re.compile(r"\b(patgate_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass(frozen=True, slots=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def selectors(expr: str) -> Iterator[Selector]:
    for match in _SELECTOR.finditer(expr):
        body = match.group(2) or ""
        yield Selector(match.group(1), tuple(_MATCHER.findall(body)))


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in _GROUPING.findall(expr)
        for label in group.split(",")
        if label.strip()
    }


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package 'prometheus'; .ci/install-tools)")
    return path


def check_expr(expr: str) -> set[str]:
    """Assert ``expr`` names only patgate series and labels that exist; return the families.

    Label matchers on a patgate series must use that family's labels (or the target
    labels); ``by``/``without`` may use any of them; ``reason`` values must be real reasons.
    """
    index = series_index()
    families = metric_families()
    used: set[str] = set()
    all_labels = {label for fam in families.values() for label in fam.labels}
    for sel in selectors(expr):
        assert sel.metric in index, f"{sel.metric} is not a patgate series ({expr})"
        fam = index[sel.metric]
        used.add(fam.name)
        allowed = set(fam.labels) | TARGET_LABELS | ({"le"} if fam.kind == "histogram" else set())
        for label, op, value in sel.matchers:
            assert label in allowed, f"{sel.metric} has no label {label!r} ({expr})"
            if label == "reason":
                values = value.split("|") if op in {"=~", "!~"} else [value]
                unknown = set(values) - set(DECISION_REASONS)
                assert not unknown, f"unknown reason(s) {unknown} ({expr})"
    extra = grouping_labels(expr) - all_labels - TARGET_LABELS - {"le"}
    assert not extra, f"grouping by unknown label(s) {extra} ({expr})"
    return used


#: Grafana's variables → values that make a dashboard expression plain PromQL.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}


def dashboard_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def plain_expr(expr: str) -> str:
    for var, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr
