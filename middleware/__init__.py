"""patgate's reusable library: token format, store, cache, ASGI middleware, runtime,
metrics. It never imports the application built on it (``patgate.gateway``).

The names most applications need are importable from here::

    from patgate.middleware import DataPlaneConfig, PatgateMiddleware, PatgateUser
"""

from __future__ import annotations

from .asgi import PatgateMiddleware
from .auth import Authenticator
from .config import DataPlaneConfig
from .user import PatgateUser

__all__ = ["Authenticator", "DataPlaneConfig", "PatgateMiddleware", "PatgateUser"]
