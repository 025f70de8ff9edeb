"""What the policy engine reads from a caller: owner, scopes, workspaces — nothing else.

The data plane's :class:`~patgate.middleware.records.Identity` satisfies
:class:`PolicyIdentity`; so does :class:`Caller`, the engine's own stand-in (``patgate
policy explain``, tests, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Caller", "PolicyIdentity"]


class PolicyIdentity(Protocol):
    @property
    def owner_id(self) -> str: ...

    @property
    def scopes(self) -> frozenset[str]: ...

    #: ``None`` means every workspace.
    @property
    def workspaces(self) -> frozenset[str] | None: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """A minimal :class:`PolicyIdentity`."""

    owner_id: str
    scopes: frozenset[str]
    workspaces: frozenset[str] | None = None
