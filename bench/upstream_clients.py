"""Which upstream client should the proxy use? Measure req/s at 16 connections.

Targets, each a uvicorn (uvloop + httptools) server in its own subprocess on 127.0.0.1:

* ``direct``        the upstream itself (a minimal ASGI app answering a small JSON body);
* ``httpx``         ProxyApp sending through ``httpx.AsyncClient`` (httpcore pool);
* ``httpx-aiohttp`` ProxyApp sending through ``httpx.AsyncClient`` + ``httpx_aiohttp``;
* ``httpx-aiohttp-transport``  ProxyApp calling the ``httpx_aiohttp`` transport directly
  (``gateway.upstream.HttpxUpstream``: httpx types, no client layer);
* ``aiohttp``       ProxyApp over a pooled ``aiohttp.ClientSession`` (``_AiohttpUpstream``);
* ``raw-aiohttp``   a minimal pure-ASGI proxy on ``aiohttp.ClientSession``, no header policy
  (the SPEC's 0.32x anchor);
* ``patgate``       ProxyApp with its default ``gateway.upstream.Http1Upstream``.

Load: ``wrk -t2 -c16 -d4s`` when wrk is installed, else a bounded aiohttp loop. Each proxy
is measured right after a direct run, so a neighbour's load skews both alike; the table
gives both req/s and the ratio. Bounded: about 55 s per round.

    python bench/upstream_clients.py [--duration 4] [--rounds 1] [--only patgate,raw-aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = (
    "direct",
    "httpx",
    "httpx-aiohttp",
    "httpx-aiohttp-transport",
    "aiohttp",
    "raw-aiohttp",
    "patgate",
)
_BODY = b'{"ok":true,"items":[1,2,3],"name":"bench"}'


# --- servers (run in subprocesses) -------------------------------------------------------


async def _upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _BODY})


class _RawAiohttpProxy:
    """The smallest honest proxy on aiohttp: streams both ways, no header policy."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._session: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import aiohttp
        from yarl import URL

        if scope["type"] != "http":
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        message = await receive()
        body = message.get("body", b"")
        qs = scope.get("query_string", b"")
        target = scope["raw_path"].decode() + ("?" + qs.decode() if qs else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k != b"host"]
        async with self._session.request(
            scope["method"],
            URL(self._upstream + target, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as response:
            out = [
                (k.lower(), v)
                for k, v in response.raw_headers
                if k.lower() not in (b"connection", b"transfer-encoding", b"keep-alive")
            ]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


class _AiohttpUpstream:
    """ProxyApp's upstream seam over one pooled ``aiohttp.ClientSession``."""

    def __init__(self, base: str) -> None:
        self._base = base
        self._session: Any = None

    async def send(self, method: str, target: bytes, headers: Any, body: Any) -> Any:
        import aiohttp
        from yarl import URL

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=4.0),
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                auto_decompress=False,
            )
        response = await self._session.request(
            method,
            URL(self._base + target.decode(), encoded=True),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            data=body,
            allow_redirects=False,
        )
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpResponse:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.raw_headers

    async def aiter_raw(self) -> Any:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        self._response.release()


class _ClientResponse:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers.raw

    def aiter_raw(self) -> Any:
        return self._response.aiter_raw()

    async def aclose(self) -> None:
        await self._response.aclose()


class _ClientUpstream:
    """ProxyApp's upstream seam over a full ``httpx.AsyncClient`` (what the SPEC measured)."""

    def __init__(self, base: str, client: Any) -> None:
        self._base = base
        self._client = client

    async def send(self, method: str, target: bytes, headers: Any, body: Any) -> Any:
        request = self._client.build_request(
            method, self._base + target.decode(), headers=headers, content=body
        )
        return _ClientResponse(await self._client.send(request, stream=True))

    async def aclose(self) -> None:
        await self._client.aclose()


def _proxy_app(kind: str, upstream: str) -> Any:
    import httpx

    from patgate.gateway.proxy import ProxyApp
    from patgate.gateway.settings import Settings
    from patgate.gateway.upstream import HttpxUpstream

    settings = Settings(upstream_url=upstream)
    if kind == "raw-aiohttp":
        return _RawAiohttpProxy(upstream)
    if kind == "patgate":
        return ProxyApp(settings)  # the default: gateway.upstream.create_upstream
    if kind == "aiohttp":
        return ProxyApp(settings, upstream=_AiohttpUpstream(upstream))
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    timeout = httpx.Timeout(30.0, connect=5.0)
    if kind == "httpx":
        transport: Any = httpx.AsyncHTTPTransport(limits=limits)
    else:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    if kind == "httpx-aiohttp-transport":
        return ProxyApp(settings, upstream=HttpxUpstream(upstream, transport, timeout=timeout))
    client = httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)
    return ProxyApp(settings, upstream=_ClientUpstream(upstream, client))


class _ClosingOnShutdown:
    """Lifespan wrapper: close the proxy's pool when uvicorn shuts down."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                close = getattr(self._app, "aclose", None)
                if close is not None:
                    await close()
                elif getattr(self._app, "_session", None) is not None:
                    await self._app._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _serve(kind: str, port: int, upstream_port: int) -> None:
    import uvicorn

    upstream = f"http://127.0.0.1:{upstream_port}"
    app = _upstream_app if kind == "direct" else _ClosingOnShutdown(_proxy_app(kind, upstream))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off" if kind == "direct" else "on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
    )


# --- driver ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _server(kind: str, upstream_port: int) -> Iterator[tuple[int, int]]:
    port = upstream_port if kind == "direct" else _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, __file__, "--serve", kind, str(port), str(upstream_port)]
    proc = subprocess.Popen(args, env=env)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wrk(port: int, duration: float) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c16",
            f"-d{max(1, round(duration))}s",
            f"http://127.0.0.1:{port}/items?x=1",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError(f"wrk failed:\n{out}")
    return float(match.group(1))


async def _aiohttp_load(port: int, duration: float) -> float:
    import aiohttp

    url = f"http://127.0.0.1:{port}/items?x=1"
    count = 0
    deadline = time.monotonic() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
            count += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(16)))
        return count / (time.monotonic() - started)


def _load(port: int, duration: float) -> float:
    if shutil.which("wrk"):
        return _wrk(port, duration)
    return asyncio.run(_aiohttp_load(port, duration))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--only", default=",".join(KINDS), help="comma-separated targets")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the best counts")
    parser.add_argument(
        "--serve", nargs=3, metavar=("KIND", "PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        kind, port, upstream_port = args.serve
        _serve(kind, int(port), int(upstream_port))
        return
    kinds = [k for k in KINDS if k != "direct" and k in args.only.split(",")]
    loader = "wrk -t2 -c16" if shutil.which("wrk") else "aiohttp loop, 16 connections"
    print(
        f"load: {loader}, {args.duration:g}s per measurement after 1s warm-up; each proxy is"
        f" paired with a direct run just before it (best of {args.rounds} round(s));"
        " upstream, proxy and load share the machine's cores"
    )
    best: dict[str, tuple[float, float, float]] = {}
    upstream_port = _free_port()
    with _server("direct", upstream_port):
        for _ in range(args.rounds):
            for kind in kinds:
                with _server(kind, upstream_port) as (port, pid):
                    _load(upstream_port, 1)
                    direct = _load(upstream_port, args.duration)
                    _load(port, 1)
                    cpu = _cpu_seconds(pid)
                    proxied = _load(port, args.duration)
                    # CPU per proxied request barely depends on a neighbour's load.
                    cpu_us = (_cpu_seconds(pid) - cpu) / (proxied * args.duration) * 1e6
                old = best.get(kind)
                if old is None or proxied / direct > old[1] / old[0]:
                    best[kind] = (direct, proxied, cpu_us)
    print(
        f"{'proxy':<24} {'direct req/s':>12} {'proxy req/s':>12} {'x direct':>9} {'CPU µs/req':>11}"
    )
    for kind, (direct, proxied, cpu_us) in best.items():
        print(
            f"{kind:<24} {direct:>12,.0f} {proxied:>12,.0f} {proxied / direct:>9.2f}"
            f" {cpu_us:>11,.0f}"
        )


if __name__ == "__main__":
    main()
