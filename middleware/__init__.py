"""patgate's reusable library: token format, store, cache, ASGI middleware, metrics.

The names most applications need are importable from here::

    from patgate.middleware import PatgateMiddleware, PatgateUser

They are loaded on first access (PEP 562): ``middleware.asgi`` builds on
``gateway.runtime``, which itself imports ``middleware`` submodules, so importing it
eagerly here would make ``import gateway.settings`` circular.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi import PatgateMiddleware
    from .auth import Authenticator
    from .user import PatgateUser

__all__ = ["Authenticator", "PatgateMiddleware", "PatgateUser"]

_LAZY = {
    "Authenticator": ".auth",
    "PatgateMiddleware": ".asgi",
    "PatgateUser": ".user",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)
