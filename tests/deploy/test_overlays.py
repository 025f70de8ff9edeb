"""deploy/overlays/{sentinel,cluster}: N patgate replicas against a Sentinel group or a Cluster.

Each overlay patches the base (deploy/kubernetes/): it removes the example Valkey, takes
``PATGATE_REDIS_URL`` from a Secret (the URL carries the ACL password), sets the replica
and worker counts, and opens egress to the store's ports. The structure is checked with
PyYAML; the rendered result with ``kubectl kustomize`` (or ``kustomize build``) where one
is installed. The example URLs go through patgate's own parser.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from patgate.gateway.settings import ENV_VARS
from patgate.middleware.connect import parse_store_url
from tests.deploy._support import DEPLOY, K8S, load_yaml, load_yaml_docs

OVERLAYS = DEPLOY / "overlays"
MODES = ["sentinel", "cluster"]
NAMESPACE = "patgate"


def _kustomization(mode: str) -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(OVERLAYS / mode / "kustomization.yaml")
    return data


def _example_secret(mode: str) -> dict[str, Any]:
    (secret,) = load_yaml_docs(OVERLAYS / mode / "redis-secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert isinstance(secret, dict)
    return secret


def _base_objects() -> dict[tuple[str, str], dict[str, Any]]:
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    objects = [o for r in resources for o in load_yaml_docs(K8S / r)]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _render(path: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed: overlays not rendered")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=MODES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    mode: str = request.param
    return mode, _render(OVERLAYS / mode)


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert isinstance(c, dict)
    return c


def _cpu(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    """The ports a NetworkPolicy lets out to, DNS aside."""
    ports = {int(p["port"]) for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    return ports - {53}


def test_there_is_one_overlay_per_mode() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == sorted(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_overlay_builds_on_the_base_and_patches_what_exists(mode: str) -> None:
    kustomization = _kustomization(mode)
    assert kustomization["kind"] == "Kustomization"
    (base,) = kustomization["resources"]
    assert (OVERLAYS / mode / base).resolve() == K8S.resolve()
    base_objects = _base_objects()
    patches = kustomization["patches"]
    assert patches
    for patch in patches:
        docs = list(yaml.safe_load_all(patch["patch"]))
        assert len(docs) == 1, patch
        (doc,) = docs
        if "target" in patch:  # a JSON 6902 patch: a list of operations
            assert isinstance(doc, list), patch
            assert doc, patch
            key = (patch["target"]["kind"], patch["target"]["name"])
        else:  # a strategic merge patch: part of an object
            assert isinstance(doc, dict), patch
            key = (doc["kind"], doc["metadata"]["name"])
            assert doc["metadata"]["namespace"] == NAMESPACE, key
        assert key in base_objects, f"{mode}: patches {key}, which the base does not define"


@pytest.mark.parametrize("mode", MODES)
def test_example_url_is_this_mode_and_egress_allows_its_ports(mode: str) -> None:
    secret = _example_secret(mode)
    assert secret["metadata"]["namespace"] == NAMESPACE
    url = parse_store_url(secret["stringData"]["url"])
    assert url.mode == mode
    assert url.tls, "the example should show TLS (rediss+...)"
    assert url.username, "the example should show ACL user:password"
    assert url.password, "the example should show ACL user:password"
    if mode == "sentinel":
        assert url.service
        assert url.sentinel_password, "the example should show the sentinels' own ACL"
    (egress_patch,) = [p for p in _kustomization(mode)["patches"] if "target" in p]
    (op,) = yaml.safe_load(egress_patch["patch"])
    ports = {int(p["port"]) for p in op["value"]["ports"]}
    assert {port for _, port in url.hosts} <= ports
    if mode == "sentinel":
        assert 6379 in ports, "the primary Sentinel names listens on 6379"


def test_base_renders_with_the_example_valkey() -> None:
    objects = _render(K8S)
    assert _find(objects, "StatefulSet", "valkey")
    assert _find(objects, "Namespace", NAMESPACE)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_rendered_overlay_has_no_example_valkey(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {k for k in names if k[1] == "valkey"}, "the store is external in the overlays"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_rendered_overlay_takes_the_url_from_the_secret(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    mode, objects = rendered
    config = _find(objects, "ConfigMap", "patgate-config")["data"]
    assert "PATGATE_REDIS_URL" not in config, "a URL with a password belongs in a Secret"
    assert set(config) <= set(ENV_VARS) | {"PATGATE_PEPPER_FILE"}
    patgate = _container(_find(objects, "Deployment", "example-app"), "patgate")
    (env,) = [e for e in patgate["env"] if e["name"] == "PATGATE_REDIS_URL"]
    ref = env["valueFrom"]["secretKeyRef"]
    secret = _example_secret(mode)
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    assert ref.get("optional") is not True, "no store URL must mean no start"
    assert "Secret" not in {o["kind"] for o in objects}, "create the Secrets by hand"


def test_rendered_overlay_runs_n_replicas_of_n_workers(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    deployment = _find(objects, "Deployment", "example-app")
    assert deployment["spec"]["replicas"] >= 2
    workers = int(_find(objects, "ConfigMap", "patgate-config")["data"]["PATGATE_WORKERS"])
    assert workers >= 2
    resources = _container(deployment, "patgate")["resources"]
    assert _cpu(resources["limits"]["cpu"]) >= workers, "a core per worker"
    assert _cpu(resources["requests"]["cpu"]) <= _cpu(resources["limits"]["cpu"])


def test_rendered_overlay_lets_patgate_reach_the_store_only(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    mode, objects = rendered
    policy = _find(objects, "NetworkPolicy", "example-app")
    url = parse_store_url(_example_secret(mode)["stringData"]["url"])
    ports = _egress_ports(policy)
    assert {port for _, port in url.hosts} <= ports
    assert ports <= {6379, 26379}
    assert _find(objects, "NetworkPolicy", "default-deny")["spec"]["podSelector"] == {}
