"""``create_upstream``: ``PATGATE_UPSTREAM_CLIENT`` picks the client; the aiohttp one adds
no header of its own; without aiohttp installed, choosing it is a clear ``ConfigError``."""

from __future__ import annotations

import asyncio
import sys

import pytest

from patgate.gateway.settings import Settings
from patgate.gateway.upstream import Http1Upstream, create_upstream
from patgate.gateway.upstream.aiohttp_client import AiohttpUpstream
from patgate.middleware.errors import ConfigError

from ._loopback import body, header_lines, keepalive_server, make, serving


@pytest.mark.parametrize(
    ("kind", "client"), [("http1", Http1Upstream), ("aiohttp", AiohttpUpstream)]
)
def test_the_setting_picks_the_client(kind: str, client: type) -> None:
    settings = Settings.from_env(
        {"PATGATE_UPSTREAM_URL": "http://127.0.0.1:9", "PATGATE_UPSTREAM_CLIENT": kind.upper()}
    )
    assert isinstance(create_upstream(settings), client)


def test_http1_is_the_default() -> None:
    assert Settings().upstream_client == "http1"
    assert isinstance(create_upstream(Settings(upstream_url="http://h")), Http1Upstream)


def test_an_unknown_client_names_the_variable_and_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"PATGATE_UPSTREAM_CLIENT: expected one of http1, aiohttp"
    ):
        Settings.from_env({"PATGATE_UPSTREAM_CLIENT": "httpx"})
    with pytest.raises(
        ConfigError, match=r"PATGATE_UPSTREAM_CLIENT: expected one of http1, aiohttp"
    ):
        create_upstream(Settings(upstream_url="http://h", upstream_client="curl"))


def test_aiohttp_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp now fails
    monkeypatch.delitem(sys.modules, "patgate.gateway.upstream.aiohttp_client")
    settings = Settings(upstream_url="http://h", upstream_client="aiohttp")
    with pytest.raises(ConfigError) as info:
        create_upstream(settings)
    assert str(info.value) == (
        "PATGATE_UPSTREAM_CLIENT=aiohttp needs aiohttp: pip install 'patgate[aiohttp]'"
    )
    # http1 does not need it.
    assert isinstance(create_upstream(settings.evolve(upstream_client="http1")), Http1Upstream)


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.anyio
async def test_upstream_client_adds_no_headers_of_its_own(kind: str, method: str) -> None:
    """Only Host, the caller's headers and the framing of the body go up: no User-Agent,
    Accept, Accept-Encoding, Content-Type or Connection; no cookie kept from an answer."""
    seen: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Length: 0\r\n\r\n"
    async with serving(keepalive_server([answer, answer], seen)) as server:
        upstream = make(kind, f"http://127.0.0.1:{server.port}")
        try:
            for _ in range(2):
                response = await upstream.send(method, b"/", [(b"x-request-id", b"r1")], None)
                await body(response)
                await response.aclose()
        finally:
            await upstream.aclose()
    for head in seen:
        fields = header_lines(head)
        expected = [(b"host", b"127.0.0.1:%d" % server.port), (b"x-request-id", b"r1")]
        if method == "POST":  # RFC 9110 §8.6: an empty POST says so
            expected.append((b"content-length", b"0"))
        if method == "DELETE" and kind == "aiohttp":  # aiohttp's own; harmless, documented
            expected.append((b"content-length", b"0"))
        assert sorted(fields) == sorted(expected)


@pytest.mark.anyio
async def test_a_bytes_body_keeps_the_callers_content_type_only(kind: str) -> None:
    seen: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with serving(keepalive_server([answer, answer], seen)) as server:
        upstream = make(kind, f"http://127.0.0.1:{server.port}")
        try:
            for headers in ([], [(b"content-type", b"application/json")]):
                response = await upstream.send("POST", b"/", headers, b"{}")
                await response.aclose()
            await asyncio.sleep(0)
        finally:
            await upstream.aclose()
    assert [dict(header_lines(h)).get(b"content-type") for h in seen] == [None, b"application/json"]
