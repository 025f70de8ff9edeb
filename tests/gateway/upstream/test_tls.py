"""TLS to the upstream (``https``, ``PATGATE_UPSTREAM_CA_FILE``), once per client, against
a real TLS server on 127.0.0.1 with a private CA (trustme): the chain is verified against
the configured bundle, the host name always; a failed handshake is a 502."""

from __future__ import annotations

import ssl
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trustme

from patgate.gateway.proxy import ProxyApp
from patgate.gateway.settings import Settings
from patgate.gateway.upstream import UpstreamConnectError, create_upstream, upstream_ssl_context
from patgate.middleware.errors import ConfigError

from ._loopback import body, keepalive_server, make, serving
from .conftest import server_context

pytestmark = pytest.mark.anyio
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_request_through_tls_succeeds_on_one_kept_alive_connection(
    kind: str, host: str, tls_server: ssl.SSLContext, ca_file: Path
) -> None:
    seen: list[bytes] = []
    async with serving(keepalive_server([_OK, _OK, _OK], seen), ssl_context=tls_server) as srv:
        settings = Settings(
            upstream_url=f"https://{host}:{srv.port}/api",
            upstream_client=kind,
            upstream_ca_file=ca_file,
        )
        upstream = create_upstream(settings)
        try:
            for _ in range(3):
                response = await upstream.send("GET", b"/x", [], None)
                assert (response.status, await body(response)) == (200, b"ok")
                await response.aclose()
        finally:
            await upstream.aclose()
    assert [s.split(b"\r\n")[0] for s in seen] == [b"GET /api/x HTTP/1.1"] * 3
    assert srv.connections == 1


@pytest.mark.parametrize("case", ["untrusted", "hostname"])
async def test_a_failed_handshake_is_a_connect_error(
    kind: str, case: str, ca: trustme.CA, ca_file: Path, tls_server: ssl.SSLContext
) -> None:
    if case == "untrusted":  # a certificate from a CA nobody configured
        server_tls, trusted = server_context(trustme.CA(), "127.0.0.1"), ca_file
    else:  # our CA, but a certificate for another name than the URL's
        server_tls, trusted = server_context(ca, "other.example"), ca_file

    async with serving(keepalive_server([_OK], []), ssl_context=server_tls) as srv:
        upstream = make(
            kind,
            f"https://127.0.0.1:{srv.port}",
            connect_timeout=2,
            ssl_context=upstream_ssl_context(trusted),
        )
        try:
            with pytest.raises(UpstreamConnectError) as info:
                await upstream.send("GET", b"/", [], None)
        finally:
            await upstream.aclose()
    assert type(info.value) is UpstreamConnectError
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError) or isinstance(
        getattr(cause, "os_error", None), ssl.SSLCertVerificationError
    )
    assert str(srv.port) not in str(info.value)


async def test_the_system_store_does_not_trust_a_private_ca(
    kind: str, tls_server: ssl.SSLContext
) -> None:
    async with serving(keepalive_server([_OK], []), ssl_context=tls_server) as srv:
        # No PATGATE_UPSTREAM_CA_FILE: the system store, which has never seen trustme's CA.
        upstream = create_upstream(
            Settings(upstream_url=f"https://127.0.0.1:{srv.port}", upstream_client=kind)
        )
        try:
            with pytest.raises(UpstreamConnectError):
                await upstream.send("GET", b"/", [], None)
        finally:
            await upstream.aclose()


async def _call(app: ProxyApp, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI app; the upstream behind it is real."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gw.test")],
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_proxy_answers_502_for_an_untrusted_upstream_and_200_for_a_trusted_one(
    kind: str, tls_server: ssl.SSLContext, ca_file: Path
) -> None:
    async with serving(keepalive_server([_OK], []), ssl_context=tls_server) as srv:
        url = f"https://127.0.0.1:{srv.port}"
        untrusted = ProxyApp(Settings(upstream_url=url, upstream_client=kind))
        trusted = ProxyApp(
            Settings(upstream_url=url, upstream_client=kind, upstream_ca_file=ca_file)
        )
        try:
            status, payload = await _call(untrusted, "/a")
            assert status == 502
            assert b"bad_gateway" in payload
            assert await _call(trusted, "/b") == (200, b"ok")
        finally:
            await untrusted.aclose()
            await trusted.aclose()


def test_ca_file_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PATGATE_UPSTREAM_CA_FILE: cannot load"):
        upstream_ssl_context(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="PATGATE_UPSTREAM_CA_FILE: cannot load"):
        upstream_ssl_context(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="PATGATE_UPSTREAM_URL is not https"):
        create_upstream(Settings(upstream_url="http://h", upstream_ca_file=tmp_path / "x.pem"))


def test_the_context_verifies_chain_and_host_name(ca_file: Path) -> None:
    context = upstream_ssl_context(ca_file)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
