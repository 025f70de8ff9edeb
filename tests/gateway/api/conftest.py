"""The ``api`` fixture: the shared management-API world of ``_world.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from patgate.middleware.store import TokenStore
from tests.gateway.api._world import Api, make_api


@pytest.fixture
async def api(store: TokenStore) -> AsyncIterator[Api]:
    async with make_api(store) as a:
        yield a
