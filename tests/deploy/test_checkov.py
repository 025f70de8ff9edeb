"""checkov over deploy/: no failed check, and every exception documented with its reason.

checkov (a third-party IaC scanner, installed by .ci/install-tools into its own venv)
scans the Kubernetes manifests, the Dockerfile, the secrets in every file and, where
``kustomize`` or ``kubectl`` is on PATH, the rendered kustomizations (the base and the
Sentinel/Cluster overlays). It runs offline: ``--skip-download``, ``BC_SKIP_MAPPING``, no
API key and no update check, and none of the caller's ``CKV_*`` settings (a stray
``CKV_SKIP_CHECK`` must not hide a failure).

An exception is a ``checkov.io/skip…: CKV_…=<reason>`` annotation on a Kubernetes object
(checkov reads no comments there, and annotations survive kustomize) or a
``# checkov:skip=CKV_…:<reason>`` comment elsewhere; docs/deploy.md lists each one in its
exception table. The annotations are read here without checkov too, so the table is
checked even where checkov is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy._support import DEPLOY, REPO, load_yaml_docs, yaml_files

CHECKOV_VENV = REPO / ".venv-tools" / "checkov" / "bin" / "checkov"
DOC = REPO / "docs" / "deploy.md"
OVERLAYS = DEPLOY / "overlays"

_SKIP_COMMENT = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?")
#: checkov's resource ids: ``[base:|overlay:<dir>:]Kind.namespace.name``.
_RESOURCE = re.compile(r"^(?:base:|overlay:[^:]+:)?([A-Za-z]+)\.[^.]+\.(.+)$")


def _checkov() -> str:
    if CHECKOV_VENV.is_file():
        return str(CHECKOV_VENV)
    found = shutil.which("checkov")
    if found is None:
        pytest.skip("checkov not installed: run .ci/install-tools")
    return found


def _offline_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CKV_", "BC_", "PRISMA_", "CHECKOV_")) and k != "LOG_LEVEL"
    }
    # No platform mapping or guideline download, no PyPI version check.
    env.update(BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="TRUE")
    return env


@pytest.fixture(scope="module")
def reports() -> list[dict[str, Any]]:
    """checkov's JSON report, one entry per framework that found files."""
    checkov = _checkov()
    proc = subprocess.run(
        [checkov, "-d", "deploy", "--skip-download", "--compact", "-o", "json"],
        cwd=REPO,
        env=_offline_env(),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    # Exit 1 means failed checks, which the tests below name one by one.
    assert proc.returncode in {0, 1}, f"checkov exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    data = json.loads(proc.stdout)
    out = data if isinstance(data, list) else [data]
    assert all(isinstance(r, dict) for r in out)
    return [r for r in out if "check_type" in r]


def _results(reports: list[dict[str, Any]], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(r["check_type"], c) for r in reports for c in r["results"][kind]]


def _object(framework: str, check: dict[str, Any]) -> str:
    """What a skipped check is about: ``Kind/name``, or ``file/<path in deploy/>``."""
    if framework not in {"kubernetes", "kustomize"}:
        return f"file/{Path(check['file_abs_path']).relative_to(DEPLOY).as_posix()}"
    match = _RESOURCE.match(check["resource"])
    assert match, f"unexpected checkov resource id {check['resource']!r}"
    return f"{match.group(1)}/{match.group(2)}"


def test_no_failed_check(reports: list[dict[str, Any]]) -> None:
    failed = [
        f"{fw}: {c['check_id']} {c['check_name']!r} on {c['resource']} ({c['file_path']})"
        for fw, c in _results(reports, "failed_checks")
    ]
    assert not failed, "fix the manifest, or document an exception:\n" + "\n".join(failed)


def test_every_file_parses(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["results"]["parsing_errors"]


def test_scans_the_manifests_and_the_dockerfile(reports: list[dict[str, Any]]) -> None:
    passed = {r["check_type"]: r["summary"]["passed"] for r in reports}
    assert passed.get("kubernetes", 0) > 0, passed
    assert passed.get("dockerfile", 0) > 0, passed
    files = {c["file_path"] for _, c in _results(reports, "passed_checks")}
    for manifest in ("/deploy/kubernetes/deployment.yaml", "/deploy/kubernetes/valkey.yaml"):
        assert manifest in files


def test_scans_the_rendered_overlays(reports: list[dict[str, Any]]) -> None:
    if shutil.which("kustomize") is None and shutil.which("kubectl") is None:
        pytest.skip("checkov renders kustomizations with kustomize or kubectl: neither found")
    resources = {c["resource"] for fw, c in _results(reports, "passed_checks") if fw == "kustomize"}
    for overlay in sorted(p.name for p in OVERLAYS.iterdir()):
        deployment = f"overlay:overlays/{overlay}:Deployment.patgate.example-app"
        assert deployment in resources, f"checkov did not render overlays/{overlay}"


def test_every_skip_checkov_made_has_a_documented_reason(reports: list[dict[str, Any]]) -> None:
    documented = _documented()
    for fw, check in _results(reports, "skipped_checks"):
        where = f"{fw}: {check['check_id']} on {check['resource']}"
        reason = check["check_result"].get("suppress_comment") or ""
        assert reason.strip(), f"{where}: no reason"
        assert reason != "No comment provided", f"{where}: no reason"
        assert (check["check_id"], _object(fw, check)) in documented, (
            f"{where} is not in docs/deploy.md's checkov exception table"
        )


def _documented() -> set[tuple[str, str]]:
    """(check id, ``Kind/name``) pairs from docs/deploy.md's exception table."""
    pairs: set[tuple[str, str]] = set()
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `CKV"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"exception rows are | check | objects | why |: {line}"
        (check,) = re.findall(r"`(CKV[A-Z0-9_]+)`", cells[0])
        objects = re.findall(r"`((?:[A-Z][A-Za-z]+|file)/[A-Za-z0-9._/-]+)`", cells[1])
        assert objects, f"{check}: name the objects as `Kind/name`"
        assert len(cells[2]) > 20, f"{check}: give the reason"
        pairs.update((check, obj) for obj in objects)
    return pairs


def _manifest_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object and kustomize patch under deploy/ (patches are objects too)."""
    objects: list[dict[str, Any]] = []
    for path in yaml_files():
        for doc in load_yaml_docs(path):
            if doc.get("kind") == "Kustomization":
                for patch in doc.get("patches", []):
                    objects.extend(
                        p for p in yaml.safe_load_all(patch.get("patch", "")) if isinstance(p, dict)
                    )
            elif "apiVersion" in doc and "metadata" in doc:
                objects.append(doc)
    return objects


def _manifest_skips() -> set[tuple[str, str, str]]:
    """(check id, ``Kind/name``, reason) for every skip written in deploy/."""
    skips: set[tuple[str, str, str]] = set()
    for obj in _manifest_objects():
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if key.startswith(("checkov.io/skip", "bridgecrew.io/skip")):
                check, sep, reason = str(value).partition("=")
                assert sep, f"{key}: write CKV_ID=reason"
                assert "=" not in reason, f"{key}: checkov splits on '=', so one '=' only"
                skips.add((check, f"{obj['kind']}/{obj['metadata']['name']}", reason.strip()))
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".json"):
        for line in path.read_text().splitlines():
            match = _SKIP_COMMENT.search(line)
            if match:
                where = f"file/{path.relative_to(DEPLOY).as_posix()}"
                skips.add((match.group(1), where, (match.group(2) or "").strip()))
    return skips


def test_manifest_skips_are_the_documented_exceptions() -> None:
    skips = _manifest_skips()
    assert skips, "expected the documented exceptions (image digests) in the manifests"
    for check, obj, reason in sorted(skips):
        assert len(reason) > 20, f"{check} on {obj}: the skip needs its reason"
    written = {(check, obj) for check, obj, _ in skips}
    documented = _documented()
    assert written - documented == set(), "skips missing from docs/deploy.md's exception table"
    assert documented - written == set(), "docs/deploy.md lists exceptions no manifest makes"


def test_the_documented_command_is_the_one_run_here() -> None:
    text = DOC.read_text()
    assert "checkov -d deploy/ --skip-download" in text
    assert "BC_SKIP_MAPPING=TRUE" in text
