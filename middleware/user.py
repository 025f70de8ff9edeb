"""What the middleware puts in the ASGI scope, in Starlette's conventions.

Built once per token when it is read from Redis (and cached with it), so annotating a
request allocates nothing:

* ``scope["auth"]`` — :class:`PatgateCredentials`, whose ``scopes`` is a
  :class:`ScopeList`: sorted, read-only, and wildcard-aware for ``in``; its
  ``identity`` is the token's :class:`~middleware.records.Identity` (``None`` on a
  public route) and ``errors`` the middleware's renderer (its realm);
* ``scope["user"]`` — :class:`PatgateUser`.

Nothing else: two keys, as Starlette's own ``AuthenticationMiddleware`` sets. Each key
more is an insertion per request, and the one that takes a Starlette app's scope past 21
keys reallocates the whole dict (issue 16: that cost ~0.7 µs per request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser

from patgate.policies.scopes import ScopeSet, validate_required

from .records import Identity
from .responses import ErrorResponses

__all__ = ["PatgateCredentials", "PatgateUser", "ScopeList", "identity_of", "renderer_of"]


def _read_only(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("a token's scopes are read-only")


class ScopeList(list[str]):
    """A token's scopes as Starlette expects them (``request.auth.scopes``), where ``in``
    honours wildcards and presets: ``"threads:read" in scopes`` is true for a token with
    ``threads:*``, so ``@requires("threads:read")`` agrees with the policy engine. It is
    shared by every request of the token, hence read-only."""

    __slots__ = ("_compiled",)

    def __init__(self, compiled: ScopeSet) -> None:
        super().__init__(sorted(compiled.scopes))
        self._compiled = compiled

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        if list.__contains__(self, item):
            return True
        try:
            required = validate_required(item)
        except ValueError:
            return False
        return self._compiled.grants(required)

    append = extend = insert = remove = pop = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only


class PatgateCredentials(AuthCredentials):
    """``scope["auth"]``: Starlette's credentials carrying a :class:`ScopeList`, plus
    the token's ``identity`` (``None``: no token, a public route) and the ``errors``
    renderer that ``patgate.requires`` and the FastAPI dependency answer with."""

    def __init__(
        self,
        compiled: ScopeSet,
        identity: Identity | None = None,
        errors: ErrorResponses | None = None,
    ) -> None:
        self.scopes = ScopeList(compiled)
        self.identity = identity
        self.errors = errors if errors is not None else ErrorResponses()

    @classmethod
    def anonymous(cls, errors: ErrorResponses) -> PatgateCredentials:
        """``scope["auth"]`` on a public route: no scopes, no identity."""
        return cls(ScopeSet.from_scopes(frozenset()), None, errors)


class PatgateUser(BaseUser):
    """``scope["user"]`` for a request authenticated with a token.

    ``identity`` is the token id (Starlette's ``BaseUser`` contract is a string);
    ``token`` is the full :class:`~middleware.records.Identity`.
    """

    __slots__ = ("token",)

    def __init__(self, token: Identity) -> None:
        self.token = token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.token.owner_id

    @property
    def identity(self) -> str:
        return self.token.token_id

    @property
    def owner_id(self) -> str:
        return self.token.owner_id

    @property
    def scopes(self) -> frozenset[str]:
        return self.token.scopes


def identity_of(scope: Mapping[str, Any]) -> Identity | None:
    """The request's :class:`~middleware.records.Identity` from ``scope["auth"]``, or
    ``None`` (a public route, or a request the middleware did not see)."""
    auth = scope.get("auth")
    return auth.identity if isinstance(auth, PatgateCredentials) else None


def renderer_of(scope: Mapping[str, Any]) -> ErrorResponses:
    """The middleware's renderer (its realm), or the default one for a route that is
    not behind the middleware."""
    auth = scope.get("auth")
    return auth.errors if isinstance(auth, PatgateCredentials) else ErrorResponses()
