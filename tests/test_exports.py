"""The public surface (issue 10, STYLE 9 and 15): ``patgate.__all__`` exactly, and every
module's ``__all__`` naming things that exist."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import patgate

ROOT_EXPORTS = ["DataPlaneConfig", "PatgateMiddleware", "Settings", "__version__", "requires"]


def _modules() -> list[str]:
    names = ["patgate"]
    for info in pkgutil.walk_packages(patgate.__path__, "patgate."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the CLI
            names.append(info.name)
    return sorted(names)


def test_root_exports_exactly() -> None:
    assert patgate.__all__ == ROOT_EXPORTS
    from patgate import DataPlaneConfig, PatgateMiddleware, Settings, requires
    from patgate.middleware.asgi import PatgateMiddleware as middleware
    from patgate.middleware.config import DataPlaneConfig as config
    from patgate.middleware.requires import requires as decorator

    assert PatgateMiddleware is middleware
    assert DataPlaneConfig is config
    assert requires is decorator
    assert issubclass(Settings, DataPlaneConfig)
    assert isinstance(patgate.__version__, str)


def test_the_three_subpackages_exist() -> None:
    for name in ("middleware", "policies", "gateway"):
        assert isinstance(importlib.import_module(f"patgate.{name}"), ModuleType)


@pytest.mark.parametrize("name", _modules())
def test_every_all_names_something_that_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


def test_import_patgate_does_not_import_fastapi() -> None:
    """FastAPI is an optional extra: only patgate.middleware.fastapi imports it."""
    code = (
        "import sys, patgate, patgate.middleware.requires, patgate.gateway.cli; "
        "assert 'fastapi' not in sys.modules, 'fastapi imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
