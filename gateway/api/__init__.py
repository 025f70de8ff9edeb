"""The management API (``/v1/...``)."""

from __future__ import annotations

from .app import create_api_app
from .openapi import openapi_document

__all__ = ["create_api_app", "openapi_document"]
