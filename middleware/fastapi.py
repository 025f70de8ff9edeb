"""FastAPI: the caller's identity as a dependency, with ``Security(...)`` scopes.

Needs the ``fastapi`` extra (``pip install 'patgate[fastapi]'``); this is the only module
that imports FastAPI, and nothing imports it on ``import patgate``. Behind
:class:`~patgate.middleware.asgi.PatgateMiddleware`::

    from fastapi import FastAPI, Security
    from patgate.middleware.fastapi import AuthRefused, identity, refusal_handler
    from patgate.middleware.records import Identity

    app = FastAPI()
    app.add_exception_handler(AuthRefused, refusal_handler)

    @app.get("/threads")
    def threads(who: Identity = Security(identity, scopes=["threads:read"])) -> dict: ...

``identity`` returns the :class:`~patgate.middleware.records.Identity` the middleware set
(``request.auth.identity``). A token lacking one of the route's scopes (checked against
its *effective* scopes, wildcard-aware: ``threads:*`` holds ``threads:read``) is refused
with the RFC 6750 403 ``insufficient_scope`` challenge naming the scopes; no identity (a
public route, or an app not behind the middleware) with the 401 challenge. Both are
rendered by the data plane's renderer; with :func:`refusal_handler` registered the body is
also the data plane's ``{"error", "detail"}``, without it FastAPI's ``{"detail"}``.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.security import SecurityScopes

from .records import Identity
from .requires import AuthRefused, refusal, refusal_handler
from .user import identity_of

__all__ = ["AuthRefused", "identity", "refusal_handler"]


async def identity(security_scopes: SecurityScopes, request: Request) -> Identity:
    """The caller's identity, if its token holds every scope of ``Security(scopes=…)``.

    ``async`` although it awaits nothing: FastAPI would run a plain function in its
    thread pool, a hop per request for a dictionary lookup."""
    prepared = refusal(request, security_scopes.scopes)
    if prepared is not None:
        raise AuthRefused(prepared)
    found = identity_of(request.scope)
    assert found is not None  # refusal() answered 401 otherwise
    return found
