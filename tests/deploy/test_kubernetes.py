"""deploy/kubernetes/: patgate as a sidecar, wired to ports, files and names that exist."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from patgate.gateway.settings import ENV_VARS, parse_hostport
from patgate.policies.engine import parse_policy
from tests.deploy._support import (
    K8S,
    PROMETHEUS_DIR,
    THIRD_PARTY_IMAGES,
    THIRD_PARTY_PORTS,
    load_yaml,
    load_yaml_docs,
    own_image,
    patgate_ports,
)


def _objects() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes/ (kustomization.yaml is not one)."""
    docs = [doc for path in sorted(K8S.rglob("*.yaml")) for doc in load_yaml_docs(path)]
    return [d for d in docs if d["kind"] != "Kustomization"]


def _one(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _workloads() -> list[dict[str, Any]]:
    return [o for o in _objects() if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}]


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{w['metadata']['name']}/{c['name']}", c)
        for w in _workloads()
        for c in [*_pod_spec(w).get("initContainers", []), *_pod_spec(w)["containers"]]
    ]


def _app() -> dict[str, Any]:
    return _one("Deployment", "example-app")


def _container(name: str) -> dict[str, Any]:
    (c,) = [c for c in _pod_spec(_app())["containers"] if c["name"] == name]
    assert isinstance(c, dict)
    return c


def _config() -> dict[str, str]:
    (ref,) = _container("patgate")["envFrom"]
    data: dict[str, str] = _one("ConfigMap", ref["configMapRef"]["name"])["data"]
    return data


def _port(container: dict[str, Any], ref: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    for p in container.get("ports", []):
        if ref in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    raise AssertionError(f"{container['name']} declares no port {ref!r}")


def _volume_for(container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The Pod volume a file path lies in, and the path relative to the mount."""
    for mount in container["volumeMounts"]:
        rel = (
            PurePosixPath(path).relative_to(mount["mountPath"])
            if path.startswith(mount["mountPath"].rstrip("/") + "/")
            else None
        )
        if rel is not None:
            (vol,) = [v for v in _pod_spec(_app())["volumes"] if v["name"] == mount["name"]]
            assert "subPath" not in mount, "subPath mounts never see ConfigMap/Secret updates"
            return vol, str(rel)
    raise AssertionError(f"{path} is on no volume of {container['name']}")


def test_every_object_is_well_formed() -> None:
    objects = _objects()
    assert objects
    for obj in objects:
        assert obj["apiVersion"], obj
        assert obj["metadata"]["name"], obj


def test_kustomization_lists_existing_files_and_no_secret() -> None:
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
        kinds = {o["kind"] for o in load_yaml_docs(K8S / resource)}
        assert "Secret" not in kinds, "create the pepper Secret by hand; never commit one"


@pytest.mark.parametrize(("where", "container"), _containers())
def test_images_are_own_build_or_allowlisted(where: str, container: dict[str, Any]) -> None:
    image = container["image"]
    assert image == own_image() or image in THIRD_PARTY_IMAGES, f"{where}: {image}"


@pytest.mark.parametrize(("where", "container"), _containers())
def test_resource_requests_present(where: str, container: dict[str, Any]) -> None:
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests), where
    assert "memory" in container["resources"]["limits"], where


@pytest.mark.parametrize(("where", "container"), _containers())
def test_container_ports_exist_in_the_repo(where: str, container: dict[str, Any]) -> None:
    image = container["image"]
    allowed = (
        set(patgate_ports().values())
        if image == own_image()
        else set(THIRD_PARTY_PORTS[image.partition(":")[0]])
    )
    for port in container.get("ports", []):
        assert port["containerPort"] in allowed, f"{where}: {port}"


def test_workloads_run_as_non_root() -> None:
    for workload in _workloads():
        assert _pod_spec(workload)["securityContext"]["runAsNonRoot"] is True


def test_patgate_is_a_sidecar_next_to_the_app() -> None:
    names = [c["name"] for c in _pod_spec(_app())["containers"]]
    assert names == ["app", "patgate"]
    patgate = _container("patgate")
    assert patgate["image"] == own_image()
    assert patgate["args"][0] in {"gateway", "serve"}


def test_config_names_are_settings_and_ports_match_the_defaults() -> None:
    config = _config()
    assert set(config) <= set(ENV_VARS) | {"PATGATE_PEPPER_FILE"}
    patgate = _container("patgate")
    ports = patgate_ports()
    for var, role, name in (
        ("PATGATE_LISTEN", "gateway", "patgate-http"),
        ("PATGATE_ADMIN_LISTEN", "admin", "patgate-admin"),
    ):
        host, port = parse_hostport(config[var], var)
        assert host == "0.0.0.0"
        assert port == ports[role] == _port(patgate, name)


def test_upstream_is_the_app_on_loopback() -> None:
    url = urlsplit(_config()["PATGATE_UPSTREAM_URL"])
    assert url.hostname == "127.0.0.1"
    args = _container("app")["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1", "the app must not bypass patgate"
    assert int(args[args.index("--port") + 1]) == url.port
    assert "ports" not in _container("app")


@pytest.mark.parametrize(
    ("probe", "path"),
    [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")],
)
def test_probes_hit_health_endpoints_on_the_admin_port(probe: str, path: str) -> None:
    patgate = _container("patgate")
    get = patgate[probe]["httpGet"]
    assert get["path"] == path
    assert _port(patgate, get["port"]) == patgate_ports()["admin"]


def test_service_targets_the_sidecar_not_the_app() -> None:
    service = _one("Service", "example-app")
    pod_labels = _app()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert _port(_container("patgate"), port["targetPort"]) == patgate_ports()["gateway"]


def test_pepper_comes_from_a_secret_file() -> None:
    config = _config()
    assert "PATGATE_PEPPER" not in config
    patgate = _container("patgate")
    assert all(e["name"] != "PATGATE_PEPPER" for e in patgate.get("env", []))
    volume, key = _volume_for(patgate, config["PATGATE_PEPPER_FILE"])
    secret = _one("Secret", volume["secret"]["secretName"])
    assert key in secret["stringData"]
    assert volume["secret"].get("optional") is not True, "no pepper must mean no start"


def test_policy_comes_from_a_configmap_and_parses() -> None:
    config = _config()
    volume, key = _volume_for(_container("patgate"), config["PATGATE_POLICY_FILE"])
    policy = _one("ConfigMap", volume["configMap"]["name"])["data"][key]
    compiled = parse_policy(policy, "policy ConfigMap")
    assert compiled.route("GET", "/healthz").public


def test_redis_url_names_the_valkey_service() -> None:
    url = urlsplit(_config()["PATGATE_REDIS_URL"])
    service = _one("Service", str(url.hostname))
    (port,) = service["spec"]["ports"]
    assert port["port"] == url.port
    (valkey,) = _pod_spec(_one("StatefulSet", str(url.hostname)))["containers"]
    assert _port(valkey, port["targetPort"]) in THIRD_PARTY_PORTS["valkey/valkey"]
    args = valkey["args"]
    assert args[args.index("--appendonly") + 1] == "yes"


def test_scrape_annotations_name_the_admin_port() -> None:
    annotations = _app()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == patgate_ports()["admin"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_podmonitor_selects_the_app_and_its_admin_port() -> None:
    monitor = _one("PodMonitor", "patgate")
    pod_labels = _app()["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert _port(_container("patgate"), endpoint["port"]) == patgate_ports()["admin"]
    assert {"targetLabel": "job", "replacement": "patgate"} in endpoint["relabelings"]


def test_prometheusrule_is_a_copy_of_alerts_yml() -> None:
    rule = _one("PrometheusRule", "patgate")
    assert rule["spec"]["groups"] == load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
