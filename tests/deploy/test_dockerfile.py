"""deploy/Dockerfile, checked instruction by instruction (no Docker engine here to build it).

Small (multi-stage, slim base), non-root, pinned base, health check on the admin
listener, ports = the settings defaults, and every COPY source exists in the repo and is
let through by the Dockerfile's own .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import tomllib
from dataclasses import dataclass
from typing import Any

import pytest

from patgate.gateway.settings import ENV_VARS, parse_hostport
from tests.deploy._support import DEPLOY, REPO, THIRD_PARTY_IMAGES, patgate_ports

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str
    stage: int

    def argv(self) -> list[str]:
        """Exec form (JSON array) or shell words."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list)
            return [str(v) for v in value]
        return shlex.split(text)


def _instructions() -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        # Comment lines are dropped even inside a continued instruction (Docker does too).
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _final_stage() -> list[Instruction]:
    instructions = _instructions()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for ins in _instructions():
        if ins.keyword != "COPY":
            continue
        words = ins.argv()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {ins.args!r}: use the KEY=value form"
                env[key] = value
    return env


def test_multi_stage_from_pinned_allowlisted_base() -> None:
    bases = [i.args.split()[0] for i in _instructions() if i.keyword == "FROM"]
    assert len(bases) >= 2, "build in one stage, copy only the installed venv into the next"
    for base in bases:
        assert base in THIRD_PARTY_IMAGES, f"{base} is not in the image allowlist"
        tag = base.partition(":")[2]
        assert tag not in {"", "latest"}, f"{base} must be pinned by tag"
        assert "slim" in tag, f"{base}: use a slim base to keep the image small"


def test_runs_as_non_root() -> None:
    users = [i.args.split(":")[0] for i in _final_stage() if i.keyword == "USER"]
    assert users, "the final stage must set USER"
    assert users[-1] not in {"root", "0"}


def test_exposes_exactly_the_settings_default_ports() -> None:
    exposed = {
        int(p.split("/")[0]) for i in _final_stage() if i.keyword == "EXPOSE" for p in i.argv()
    }
    assert exposed == set(patgate_ports().values())


def test_patgate_env_names_exist_and_listen_on_default_ports() -> None:
    env = _env(_final_stage())
    patgate_env = {k: v for k, v in env.items() if k.startswith("PATGATE_")}
    assert set(patgate_env) <= set(ENV_VARS), set(patgate_env) - set(ENV_VARS)
    ports = patgate_ports()
    for var, role in (
        ("PATGATE_LISTEN", "gateway"),
        ("PATGATE_ADMIN_LISTEN", "admin"),
        ("PATGATE_AUTHZ_LISTEN", "authz"),
    ):
        host, port = parse_hostport(patgate_env[var], var)
        # In a container every listener must accept connections from outside it.
        assert (host, port) == ("0.0.0.0", ports[role])
    assert "PATGATE_DATA_DIR" in patgate_env


def test_healthcheck_runs_the_copied_script_with_python() -> None:
    checks = [i for i in _final_stage() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    words = checks[0].args.split()
    assert any(w.startswith("--interval=") for w in words)
    assert any(w.startswith("--timeout=") for w in words)
    cmd = checks[0].args[checks[0].args.index("CMD") + 3 :]
    argv = Instruction("CMD", cmd, 0).argv()
    assert argv[0] == "python", "slim has no curl; the check must use Python"
    script = argv[1]
    copies = [i for i in _final_stage() if i.keyword == "COPY" and script.startswith("/")]
    copied = {w.rsplit("/", 1)[-1] for c in copies for w in c.argv()[:-1]}
    assert script.rsplit("/", 1)[-1] in copied
    assert "/healthz" in (DEPLOY / "healthcheck.py").read_text()


def test_entrypoint_is_the_patgate_console_script() -> None:
    entry = [i for i in _final_stage() if i.keyword == "ENTRYPOINT"]
    assert entry[-1].argv() == ["patgate"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "patgate" in scripts
    cmd = [i for i in _final_stage() if i.keyword == "CMD"]
    assert cmd[-1].argv() == ["serve"]


@pytest.mark.parametrize("source", _copy_sources())
def test_copy_source_exists_in_repo(source: str) -> None:
    assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last matching pattern wins, ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("source", _copy_sources())
def test_copy_source_not_excluded_by_dockerignore(source: str) -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert not _ignored(source.rstrip("/"), patterns)


def _source_packages() -> set[str]:
    """Every directory holding a Python package under the top-level directories the
    Dockerfile copies, as a repository path (``gateway/api``)."""
    tops = {s.rstrip("/") for s in _copy_sources() if (REPO / s).is_dir()}
    return {
        "/".join(init.parent.relative_to(REPO).parts)
        for top in tops
        for init in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def _setuptools() -> Any:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dirs() -> dict[str, str]:
    """Listed package → the repository directory it is built from (``package-dir``)."""
    data = _setuptools()
    return {pkg: data["package-dir"][pkg] for pkg in data["packages"]}


def test_pip_install_in_the_image_gets_every_package() -> None:
    # pyproject lists packages explicitly: a package missing there is missing from the
    # image (pip install . copies only listed packages), though every test here passes.
    dirs = _package_dirs()
    missing = _source_packages() - set(dirs.values())
    assert not missing, f"not in [tool.setuptools] packages, so not in the image: {missing}"
    # One import name (issue 10): every listed package is patgate or under it.
    assert all(p == "patgate" or p.startswith("patgate.") for p in dirs), dirs
    # Data-only packages (policies.examples) have no __init__.py but must exist and be
    # in the build context the Dockerfile copies.
    copied = {s.rstrip("/") for s in _copy_sources()}
    for package, path in dirs.items():
        assert (REPO / path).is_dir(), package
        assert path.split("/")[0] in copied, f"{package} is not copied into the build"


def test_package_data_globs_match_files() -> None:
    dirs = _package_dirs()
    for package, globs in _setuptools()["package-data"].items():
        for pattern in globs:
            matches = list((REPO / dirs[str(package)]).glob(pattern))
            assert matches, f"package-data {package}: {pattern} matches nothing"
