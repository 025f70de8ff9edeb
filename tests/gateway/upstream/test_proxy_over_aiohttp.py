"""The proxy's end-to-end suite (``tests/gateway/test_proxy_e2e.py``, the same tests,
not copies) run again with ``PATGATE_UPSTREAM_CLIENT=aiohttp``: its ``_stack`` builds
``Settings(**settings)``, and here every such Settings gets ``upstream_client="aiohttp"``."""

from __future__ import annotations

import functools

import pytest

from patgate.gateway.settings import Settings
from patgate.gateway.upstream.aiohttp_client import AiohttpUpstream
from tests.gateway import test_proxy_e2e as e2e
from tests.gateway.test_proxy_e2e import (  # noqa: F401  (collected here, with the fixture)
    test_client_disconnect_mid_stream_closes_upstream,
    test_client_disconnect_mid_upload_aborts_upstream_request,
    test_closed_upstream_port_is_502,
    test_garbage_from_upstream_is_502,
    test_large_streaming_download_arrives_intact,
    test_large_streaming_upload_arrives_intact,
    test_public_route_strips_client_identity_headers,
    test_request_reaches_upstream_with_patgate_headers_only,
    test_slow_upstream_is_504,
    test_upstream_client_adds_no_headers_of_its_own,
    test_upstream_connection_is_kept_alive_and_reused,
)


@pytest.fixture(autouse=True)
def _over_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e, "Settings", functools.partial(Settings, upstream_client="aiohttp"))


def test_the_stack_really_uses_aiohttp() -> None:
    from patgate.gateway.proxy import ProxyApp

    settings = vars(e2e)["Settings"](upstream_url="http://127.0.0.1:9")  # what _stack calls
    proxy = ProxyApp(settings)
    assert isinstance(proxy._upstream, AiohttpUpstream)
