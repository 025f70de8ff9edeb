"""The token lifecycle service layer, shared by the management API and the CLI."""

from __future__ import annotations

from .actor import Actor
from .audit import EventQuery, query_events
from .bootstrap import bootstrap
from .directory import Directory
from .listing import Filters, Page
from .tokens import Owner, TokenService

__all__ = [
    "Actor",
    "Directory",
    "EventQuery",
    "Filters",
    "Owner",
    "Page",
    "TokenService",
    "bootstrap",
    "query_events",
]
