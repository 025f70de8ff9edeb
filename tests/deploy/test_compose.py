"""deploy/compose.yaml: images, ports, URLs and mounts all point at things that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from patgate.gateway.settings import ENV_VARS, parse_hostport
from patgate.policies.engine import load_policy
from tests.deploy._support import (
    DEPLOY,
    REPO,
    THIRD_PARTY_IMAGES,
    THIRD_PARTY_PORTS,
    load_yaml,
    own_image,
    patgate_ports,
)

COMPOSE = DEPLOY / "compose.yaml"


def _services() -> dict[str, Any]:
    services = load_yaml(COMPOSE)["services"]
    assert isinstance(services, dict)
    return services


def _argv(service: dict[str, Any]) -> list[str]:
    entry = service.get("entrypoint", [])
    command = service.get("command", [])
    return [str(a) for a in [*entry, *command]]


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _patgate_services() -> dict[str, Any]:
    return {n: s for n, s in _services().items() if s["image"] == own_image()}


def _listen_ports(name: str, service: dict[str, Any]) -> set[int]:
    """The ports a service's container listens on, from the repo's own files."""
    image = service["image"]
    if image == own_image():
        argv = _argv(service)
        if "--port" in argv:  # the sample app under uvicorn
            return {int(_flag(argv, "--port"))}
        env = service.get("environment", {})
        ports = set(patgate_ports().values())
        for var in ("PATGATE_LISTEN", "PATGATE_ADMIN_LISTEN", "PATGATE_AUTHZ_LISTEN"):
            if var in env:
                ports.add(parse_hostport(env[var], var)[1])
        return ports
    return set(THIRD_PARTY_PORTS[image.partition(":")[0]])


@pytest.mark.parametrize("name", sorted(_services()))
def test_image_is_own_build_or_allowlisted(name: str) -> None:
    service = _services()[name]
    image = service["image"]
    if image == own_image():
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        )
    else:
        assert image in THIRD_PARTY_IMAGES, f"{name}: {image} is not in the image allowlist"
        assert "build" not in service


@pytest.mark.parametrize("name", sorted(_services()))
def test_published_ports_are_ports_the_service_listens_on(name: str) -> None:
    service = _services()[name]
    for spec in service.get("ports", []):
        container_port = int(str(spec).rsplit(":", 1)[-1])
        assert container_port in _listen_ports(name, service), f"{name}: {spec}"
        # Only the proxied API is published on every interface; the rest stay local.
        if container_port != patgate_ports()["gateway"]:
            assert str(spec).startswith("127.0.0.1:"), f"{name}: publish {spec} on 127.0.0.1"


def test_patgate_listens_where_the_settings_say() -> None:
    env = _services()["patgate"]["environment"]
    ports = patgate_ports()
    assert parse_hostport(env["PATGATE_LISTEN"], "")[1] == ports["gateway"]
    assert parse_hostport(env["PATGATE_ADMIN_LISTEN"], "")[1] == ports["admin"]


@pytest.mark.parametrize("name", sorted(_patgate_services()))
def test_environment_names_are_settings(name: str) -> None:
    env = _services()[name].get("environment", {})
    assert set(env) <= set(ENV_VARS) | {"PATGATE_PEPPER_FILE"}


def test_valkey_runs_with_aof() -> None:
    argv = _argv(_services()["valkey"])
    assert _flag(argv, "--appendonly") == "yes"


def test_redis_url_names_the_valkey_service_and_port() -> None:
    url = urlsplit(_services()["patgate"]["environment"]["PATGATE_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "valkey"
    assert url.port in _listen_ports("valkey", _services()["valkey"])


def test_upstream_url_names_the_upstream_service_and_its_port() -> None:
    url = urlsplit(_services()["patgate"]["environment"]["PATGATE_UPSTREAM_URL"])
    upstream = _services()[str(url.hostname)]
    argv = _argv(upstream)
    assert _flag(argv, "--host") == "0.0.0.0"
    assert {url.port} == _listen_ports(str(url.hostname), upstream)
    # The sample app is a real ASGI app of the package, not a file of deploy/.
    module, _, attr = argv[argv.index("uvicorn") + 1].partition(":")
    assert hasattr(__import__(module, fromlist=[attr]), attr)
    assert f":{url.port}/" in " ".join(upstream["healthcheck"]["test"])


def test_pepper_comes_from_the_environment_not_the_file() -> None:
    value = _services()["patgate"]["environment"]["PATGATE_PEPPER"]
    # ${VAR:?message}: compose refuses to start without it; no pepper is committed.
    assert re.fullmatch(r"\$\{PATGATE_PEPPER:\?[^}]+\}", value)


@pytest.mark.parametrize("name", sorted(_services()))
def test_depends_on_names_services(name: str) -> None:
    assert set(_services()[name].get("depends_on", {})) <= set(_services())


def _bind_mounts() -> list[tuple[str, str, str]]:
    out = []
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if source.startswith("."):
                out.append((name, source, target))
    return out


@pytest.mark.parametrize(("name", "source", "target"), _bind_mounts())
def test_bind_mount_sources_exist(name: str, source: str, target: str) -> None:
    assert (DEPLOY / source).exists(), f"{name}: {source} -> {target}"


def test_policy_file_is_in_a_mounted_directory_and_valid() -> None:
    policy = Path(_services()["patgate"]["environment"]["PATGATE_POLICY_FILE"])
    # The directory is mounted, not the file, so edits (a rename) reach the container.
    sources = [s for n, s, t in _bind_mounts() if n == "patgate" and Path(t) == policy.parent]
    assert len(sources) == 1
    local = (DEPLOY / sources[0]).resolve()
    assert local.is_dir()
    load_policy(local / policy.name)


def test_prometheus_scrapes_the_patgate_admin_port() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "patgate"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = parse_hostport(target, "target")
        assert host in _patgate_services()
        env = _services()[host]["environment"]
        assert port == parse_hostport(env["PATGATE_ADMIN_LISTEN"], "")[1]


def test_prometheus_mount_holds_its_config_and_rules() -> None:
    argv = _argv(_services()["prometheus"])
    config_path = next(a.split("=", 1)[1] for a in argv if a.startswith("--config.file="))
    mounts = {t: s for n, s, t in _bind_mounts() if n == "prometheus"}
    mount_target = str(Path(config_path).parent)
    local = DEPLOY / mounts[mount_target]
    config = load_yaml(local / Path(config_path).name)
    for rule_file in config["rule_files"]:
        assert (local / rule_file).is_file()


def test_grafana_provisioning_matches_the_mounts() -> None:
    mounts = {s: t for n, s, t in _bind_mounts() if n == "grafana"}
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = load_yaml(provisioning / "dashboards" / "patgate.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == [mounts["./grafana/dashboards"]]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert url.port in THIRD_PARTY_PORTS["prom/prometheus"]
    home = _services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(mounts["./grafana/dashboards"] + "/")
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()
