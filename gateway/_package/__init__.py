"""patgate: personal access tokens for HTTP APIs.

The one import name of the installed distribution. The repository keeps the product's
folders at the top (``middleware/``, ``policies/``, ``gateway/``); setuptools maps them to
``patgate.middleware``, ``patgate.policies`` and ``patgate.gateway`` (``package-dir`` in
pyproject.toml), and this file — the ``patgate`` package itself — lives here so that the
top of the repository keeps its fixed layout. Layers point down only::

    patgate.gateway  →  patgate.middleware  →  patgate.policies

Most applications need two names::

    from patgate import PatgateMiddleware, Settings
"""

from __future__ import annotations

from patgate.gateway.settings import Settings
from patgate.middleware.asgi import PatgateMiddleware

__all__ = ["PatgateMiddleware", "Settings", "__version__"]

__version__ = "0.1.0"
