"""Every YAML file under deploy/ parses (all documents of multi-document files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy._support import DEPLOY, load_yaml_docs, yaml_files


def test_there_are_manifests() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert {"compose.yaml", "prometheus/prometheus.yml", "prometheus/alerts.yml"} <= names
    assert any(n.startswith("kubernetes/") for n in names)


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_parses(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document is a mapping"
