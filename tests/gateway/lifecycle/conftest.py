"""The ``w`` fixture: the default lifecycle world of ``_world.py``."""

from __future__ import annotations

import pytest

from patgate.middleware.store import TokenStore
from tests.gateway.lifecycle._world import World, make_world


@pytest.fixture
async def w(store: TokenStore) -> World:
    return await make_world(store)
