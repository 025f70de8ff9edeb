"""Request-head limits (431/414) and strict Host (400) in patgate's uvicorn protocol,
over raw sockets against the real gateway and forward-auth listeners (issue 9)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from patgate.gateway.app import create_authz_app, create_gateway_app
from patgate.gateway.protocol import host_problem
from patgate.gateway.settings import Settings
from patgate.middleware.metrics import render
from patgate.middleware.runtime import Runtime
from tests.gateway._listen import body_of, exchange, listen, status_of
from tests.middleware._servers import serve
from tests.middleware._tokens import add_user, issue, make_policy

pytestmark = pytest.mark.anyio


class _Upstream:
    def __init__(self) -> None:
        self.requests = 0

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            self.requests += 1
            return JSONResponse({"path": request.url.path})

        return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@contextlib.asynccontextmanager
async def _gateway(settings: Settings) -> AsyncIterator[tuple[int, Runtime, _Upstream]]:
    upstream = _Upstream()
    async with serve(upstream.app(), lifespan="off") as up_port:
        settings = settings.evolve(upstream_url=f"http://127.0.0.1:{up_port}", lastused_interval=60)
        runtime = Runtime(settings, policy=make_policy())
        async with listen(create_gateway_app(runtime), settings) as port:
            yield port, runtime, upstream


@contextlib.asynccontextmanager
async def _authz(settings: Settings) -> AsyncIterator[tuple[int, Runtime]]:
    runtime = Runtime(settings.evolve(lastused_interval=60), policy=make_policy())
    async with listen(create_authz_app(runtime), runtime.settings) as port:
        yield port, runtime


def _decisions(runtime: Runtime) -> float:
    """Sum of ``patgate_decisions_total`` over every label."""
    text = render(runtime.metrics).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("patgate_decisions_total{")
    )


def _request(
    target: bytes = b"/public",
    headers: list[bytes] | None = None,
    *,
    version: bytes = b"HTTP/1.1",
    host: bool = True,
) -> bytes:
    lines = [b"GET " + target + b" " + version]
    if host:
        lines.append(b"Host: gw")
    lines += headers or []
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _huge_headers(count: int = 2000, size: int = 8192) -> list[bytes]:
    return [b"X-Filler-%d: %s" % (n, b"a" * size) for n in range(count)]


# --- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [False, True], ids=["no-token", "valid-token"])
async def test_16_mib_of_headers_get_431_quickly_and_never_reach_upstream(
    settings: Settings, token: bool
) -> None:
    async with _gateway(settings) as (port, runtime, upstream):
        extra = []
        if token:
            await add_user(runtime.store, "u1")
            issued = await issue(runtime.store, runtime.token_format, scopes=("threads:read",))
            extra = [b"Authorization: Bearer " + issued.secret.encode()]
        started = time.monotonic()
        response = await exchange(port, _request(b"/threads/1", extra + _huge_headers()))
        elapsed = time.monotonic() - started
        # Not 401: the head is refused before authentication.
        assert status_of(response) == 431, response[:300]
        assert json.loads(body_of(response))["error"] == "header_too_large"
        assert b"connection: close" in response.lower()
        assert elapsed < 3.0
        assert upstream.requests == 0
        # The listener is fine afterwards.
        ok = await exchange(port, _request(b"/public"))
        assert status_of(ok) == 200
        assert upstream.requests == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        # 100 fields are fine (Host and Connection are two of them), 101 are not.
        ([b"X-N-%d: v" % n for n in range(98)], 200),
        ([b"X-N-%d: v" % n for n in range(99)], 431),
        # ~63 KiB in total is fine, over 64 KiB is not.
        ([b"X-Big: " + b"b" * 63 * 1024], 200),
        ([b"X-Big: " + b"b" * 65 * 1024], 431),
        # One endless header (httptools buffers a field until it ends).
        ([b"X-Endless: " + b"e" * 4 * 1024 * 1024], 431),
    ],
    ids=["100-fields", "101-fields", "63KiB", "65KiB", "4MiB-one-field"],
)
async def test_header_limits_at_the_boundary(
    settings: Settings, headers: list[bytes], status: int
) -> None:
    async with _gateway(settings) as (port, _, upstream):
        response = await exchange(port, _request(b"/public", headers))
        assert status_of(response) == status, response[:300]
        assert upstream.requests == (1 if status == 200 else 0)


async def test_limits_are_settings(settings: Settings) -> None:
    async with _gateway(settings.evolve(max_headers=10, max_header_bytes=2048)) as (port, _, up):
        assert status_of(await exchange(port, _request(headers=[b"X-A: 1"] * 8))) == 200
        assert status_of(await exchange(port, _request(headers=[b"X-A: 1"] * 10))) == 431
        big = [b"X-B: " + b"b" * 3000]
        assert status_of(await exchange(port, _request(headers=big))) == 431
        assert up.requests == 1


async def test_overlong_request_target_gets_414(settings: Settings) -> None:
    async with _gateway(settings) as (port, _, upstream):
        response = await exchange(port, _request(b"/public?" + b"q" * 20_000))
        assert status_of(response) == 414
        assert json.loads(body_of(response))["error"] == "uri_too_long"
        assert upstream.requests == 0


async def test_forward_auth_refuses_huge_heads_before_authentication(
    settings: Settings,
) -> None:
    async with _authz(settings) as (port, runtime):
        nginx = [b"X-Original-Method: GET", b"X-Original-URI: /threads/1"]
        response = await exchange(port, _request(b"/authz", nginx + _huge_headers(200)))
        assert status_of(response) == 431
        assert _decisions(runtime) == 0  # the authenticator never ran
        ok = await exchange(port, _request(b"/authz", nginx))
        assert status_of(ok) == 401  # the same request, within limits: authenticated
        assert _decisions(runtime) == 1


async def test_pipelined_refusal_comes_after_the_earlier_response(settings: Settings) -> None:
    async with _gateway(settings) as (port, _, upstream):
        first = b"GET /public HTTP/1.1\r\nHost: gw\r\n\r\n"
        second = _request(b"/public", _huge_headers(20))
        response = await exchange(port, first + second)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 431 " in response.split(b"\r\n\r\n", 1)[1]
        assert upstream.requests == 1


# --- Host (RFC 9112 §3.2) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_request(host=False), 400),
        (_request(headers=[b"Host: b"]), 400),
        (_request(host=False, headers=[b"Host: a b"]), 400),
        (_request(host=False, headers=[b"Host: a/b"]), 400),
        (_request(host=False, headers=[b"Host: a:80x"]), 400),
        (_request(host=False, headers=[b"Host: [::1"]), 400),
        (_request(host=False, version=b"HTTP/1.0"), 200),
        (_request(host=False, headers=[b"Host: api.example:8080"]), 200),
        (_request(host=False, headers=[b"Host: [::1]:80"]), 200),
    ],
    ids=[
        "missing",
        "duplicate",
        "space",
        "slash",
        "bad-port",
        "open-bracket",
        "http10-without-host",
        "name-port",
        "ipv6",
    ],
)
async def test_gateway_host_rules(settings: Settings, request_bytes: bytes, status: int) -> None:
    async with _gateway(settings) as (port, _, upstream):
        response = await exchange(port, request_bytes)
        if status == 400:
            assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert json.loads(body_of(response))["error"] == "invalid_request"
            assert upstream.requests == 0
        else:
            assert status_of(response) == 200
            assert upstream.requests == 1


@pytest.mark.parametrize(
    "host_lines",
    [[], [b"Host: a", b"Host: b"], [b"Host: a b"]],
    ids=["missing", "duplicate", "malformed"],
)
async def test_forward_auth_host_rules_come_before_authentication(
    settings: Settings, host_lines: list[bytes]
) -> None:
    async with _authz(settings) as (port, _):
        nginx = [b"X-Original-Method: GET", b"X-Original-URI: /threads/1"]
        response = await exchange(port, _request(b"/authz", host_lines + nginx, host=False))
        # 400, not the 401 a request without a token gets.
        assert status_of(response) == 400
        assert json.loads(body_of(response))["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("values", "version", "ok"),
    [
        ([], "1.1", False),
        ([], "1.0", True),
        ([b""], "1.1", True),  # empty: a target without authority (RFC 9112 §3.2)
        ([b"a", b"a"], "1.1", False),
        ([b"a", b"a"], "1.0", False),
        ([b"example.com"], "1.1", True),
        ([b"example.com:"], "1.1", True),  # port = *DIGIT
        ([b"example.com:443"], "1.1", True),
        ([b"127.0.0.1:8080"], "1.1", True),
        ([b"[2001:db8::1]"], "1.1", True),
        ([b"[v1.x]"], "1.1", True),
        ([b"ex%41mple"], "1.1", True),
        ([b"a b"], "1.1", False),
        ([b"a\tb"], "1.1", False),
        ([b"user@host"], "1.1", False),
        ([b"host:port"], "1.1", False),
        ([b"[2001:db8::zz]"], "1.1", False),
        ([b"[::1]x"], "1.1", False),
        ([b"a,b"], "1.1", True),  # sub-delims are reg-name characters
        ([b"ex%4"], "1.1", False),
        ([b"h\xc3\xa9"], "1.1", False),
    ],
)
def test_host_problem_table(values: list[bytes], version: str, ok: bool) -> None:
    assert (host_problem(values, version) is None) is ok
