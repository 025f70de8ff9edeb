"""The README's promises: the two commands, the configuration and metrics tables."""

from __future__ import annotations

import re
from pathlib import Path

from patgate.gateway.notify.worker import NotifyMetrics
from patgate.gateway.settings import ENV_VARS, FILE_VARS
from patgate.middleware.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _table_names(prefix: str) -> set[str]:
    return set(re.findall(r"^\| `(" + prefix + r"[A-Za-z_]+)` \|", README, re.MULTILINE))


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert "bash .ci/test" in README
    assert "bash .ci/demo" in README
    lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines == ["exec bash .ci/test"]


def test_configuration_table_matches_settings() -> None:
    documented = _table_names("PATGATE_")
    assert documented == set(ENV_VARS) | set(FILE_VARS)


def test_metrics_table_matches_metrics() -> None:
    registry = Metrics().registry
    NotifyMetrics(registry)  # the notification worker's, on the same registry (issue 14)
    names = set()
    for collector in registry._collector_to_names:
        for metric in collector.collect():
            name = metric.name + ("_total" if metric.type == "counter" else "")
            names.add(name)
    assert _table_names("patgate_") == names


def test_every_local_link_and_image_of_the_docs_exists() -> None:
    """README and docs/*.md link files of the repository (and the console's
    screenshots, issue 15) that are there."""
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert missing == []
