"""Where the console is served (issue 15): at ``/console`` on the admin listener of
every role, mounted there (links and the cookie's path under ``/console``), beside the
API and ``/metrics``; ``PATGATE_CONSOLE=false`` leaves it out."""

from __future__ import annotations

import httpx
import pytest

from patgate.gateway.server import build_listeners
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime
from tests.middleware._servers import serve

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("role", ["gateway", "api", "authz"])
async def test_admin_listener_serves_the_console(settings: Settings, role: str) -> None:
    settings = settings.evolve(upstream_url="http://127.0.0.1:9")  # never called here
    runtime = Runtime(settings)
    admin, _ = build_listeners(settings, role, runtime)[-1]
    async with serve(admin) as port, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}"
        page = await client.get(base + "/console/login")
        assert page.status_code == 200
        assert 'action="/console/login"' in page.text
        assert 'href="/console/static/console.css"' in page.text
        assert "path=/console" in page.headers["set-cookie"].lower()
        assert (await client.get(base + "/console/static/console.js")).status_code == 200
        # Not signed in: the console's pages lead to its sign-in.
        tokens = await client.get(base + "/console/tokens")
        assert tokens.status_code == 303
        assert tokens.headers["location"] == "/console/login"
        # The rest of the listener is untouched.
        assert (await client.get(base + "/metrics")).status_code == 200
        assert (await client.get(base + "/v1/me")).status_code == 401
        assert (await client.get(base + "/consoles")).status_code != 200


async def test_console_can_be_turned_off(settings: Settings) -> None:
    settings = settings.evolve(console=False)
    runtime = Runtime(settings)
    ((admin, _),) = build_listeners(settings, "api", runtime)
    async with serve(admin) as port, httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{port}/console/login")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/json")
