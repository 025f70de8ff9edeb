"""patgate: personal access tokens for HTTP APIs.

The one import name of the installed distribution. The repository keeps the product's
folders at the top (``middleware/``, ``policies/``, ``gateway/``); setuptools maps them to
``patgate.middleware``, ``patgate.policies`` and ``patgate.gateway`` (``package-dir`` in
pyproject.toml), and this file — the ``patgate`` package itself — lives here so that the
top of the repository keeps its fixed layout. Layers point down only::

    patgate.gateway  →  patgate.middleware  →  patgate.policies

Most applications need these names::

    from patgate import PatgateMiddleware, Settings, requires

``Settings`` is everything ``patgate`` runs with (read by ``Settings.from_env()``);
``DataPlaneConfig`` is the part the middleware needs. With no Redis URL either one means
the embedded Valkey store in ``data_dir``. ``requires`` is Starlette's decorator whose
refusals carry the RFC 6750 challenge. FastAPI's dependency is in
``patgate.middleware.fastapi`` (the ``fastapi`` extra), never imported from here.
"""

from __future__ import annotations

from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware
from patgate.middleware.config import DataPlaneConfig
from patgate.middleware.requires import requires

__all__ = ["DataPlaneConfig", "PatgateMiddleware", "Settings", "__version__", "requires"]

__version__ = "0.1.0"
