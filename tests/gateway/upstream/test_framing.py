"""Messages framed twice (RFC 9112 §6.3, §11.2), once per client, on raw loopback sockets.

Responses. Both clients parse with llhttp (httptools in ``http1``, aiohttp's own C
parser), which is strict where the RFC lets a recipient choose:

* ``Content-Length`` and ``Transfer-Encoding`` together (§6.3 item 3: TE overrides CL,
  but such a message "ought to be handled as an error" — it is the classic smuggling
  shape): refused, ``UpstreamProtocolError`` (502), and the connection is closed, so
  nothing read after it is ever taken as the next response.
* two different lengths (``5, 6`` or two lines): invalid framing, §6.3 item 5 — "the
  user agent MUST close the connection to the server and discard the received response":
  ``UpstreamProtocolError``, connection closed.
* the same length twice (``5, 5`` or two lines of ``5``): RFC 9110 §8.6 allows either
  accepting it as one ``5`` or rejecting the message; llhttp rejects, and so do we —
  a proxy gains nothing by repairing an upstream that frames ambiguously.

Requests. The proxy never forwards a request framed twice: the clients drop the caller's
``Content-Length``/``Transfer-Encoding`` (in any case of the name) and frame the body
themselves, so exactly one framing header goes upstream (checked on the raw bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from patgate.gateway.proxy import ProxyApp
from patgate.gateway.settings import Settings
from patgate.gateway.upstream import RawHeaders, UpstreamProtocolError

from ._loopback import body, header_lines, read_request, serving, upstream_for
from .test_tls import _call

pytestmark = pytest.mark.anyio

_FINE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
_TWICE = {
    "cl-then-te": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "te-then-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "cl-te-gzip-chunked": b"Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n",
    "cl-list-5-6": b"Content-Length: 5, 6\r\n",
    "cl-lines-5-6": b"Content-Length: 5\r\nContent-Length: 6\r\n",
    "cl-list-5-5": b"Content-Length: 5, 5\r\n",
    "cl-lines-5-5": b"Content-Length: 5\r\nContent-Length: 5\r\n",
}


def _doubly_framed(headers: bytes) -> bytes:
    # A body that fits either reading: 5 bytes by length, or one 3-byte chunk + the end.
    chunked = b"transfer-encoding" in headers.lower()
    payload = b"3\r\nabc\r\n0\r\n\r\n" if chunked else b"abcde"
    return b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + payload


@pytest.mark.parametrize("framing", list(_TWICE), ids=list(_TWICE))
async def test_a_response_framed_twice_is_refused_and_its_connection_closed(
    kind: str, framing: str
) -> None:
    answers = [_doubly_framed(_TWICE[framing]), _FINE]
    connection_ended = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            await read_request(reader)
            writer.write(answers.pop(0))
            await writer.drain()
        if await reader.read(1) == b"":  # the client closed this connection
            connection_ended.set()

    async with upstream_for(kind, handler) as (server, upstream):
        with pytest.raises(UpstreamProtocolError):  # refused at the head, both clients
            await upstream.send("GET", b"/", [], None)
        # Nothing more is read from that connection: the next request opens a new one.
        second = await upstream.send("GET", b"/", [], None)
        assert await body(second) == b"fine"
        await second.aclose()
        assert server.connections == 2
    assert answers == []


#: responses the proxy cannot relay: framed twice, or with a transfer coding it does not
#: decode. Transfer-Encoding is hop-by-hop (RFC 9110 §7.6.1) and only chunked is removed
#: on the way (RFC 9112 §7): a body still gzip-coded must not reach the client without the
#: field that says so (nginx answers these 502 as well).
_UNRELAYABLE = {
    "cl-then-te": _doubly_framed(_TWICE["cl-then-te"]),
    "cl-lines-5-6": _doubly_framed(_TWICE["cl-lines-5-6"]),
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te-gzip-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("case", list(_UNRELAYABLE), ids=list(_UNRELAYABLE))
async def test_the_proxy_answers_an_unrelayable_response_with_502(kind: str, case: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(_UNRELAYABLE[case])
        await writer.drain()
        await reader.read(1)

    async with serving(handler) as server:
        settings = Settings(upstream_url=f"http://127.0.0.1:{server.port}", upstream_client=kind)
        proxy = ProxyApp(settings)
        try:
            status, payload = await _call(proxy, "/x")
        finally:
            await proxy.aclose()
    assert status == 502
    assert b"abc" not in payload


async def _parts() -> AsyncIterator[bytes]:
    for part in (b"ab", b"c"):
        yield part


_REQUESTS: list[tuple[str, RawHeaders, bool]] = [
    ("cl+te bytes", [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")], False),
    ("te+cl stream", [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], True),
    ("two cl bytes", [(b"content-length", b"3"), (b"content-length", b"7")], False),
    ("two cl stream", [(b"content-length", b"7"), (b"content-length", b"3")], True),
    ("cl list stream", [(b"content-length", b"3, 7")], True),
    ("mixed case bytes", [(b"Content-Length", b"9"), (b"Transfer-Encoding", b"chunked")], False),
    ("mixed case stream", [(b"CONTENT-LENGTH", b"3"), (b"Transfer-Encoding", b"gzip")], True),
    ("te only stream", [(b"transfer-encoding", b"gzip, chunked")], True),
]


@pytest.mark.parametrize(("name", "headers", "streamed"), _REQUESTS, ids=[r[0] for r in _REQUESTS])
async def test_a_request_goes_upstream_with_exactly_one_framing_header(
    kind: str, name: str, headers: RawHeaders, streamed: bool
) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        fields = header_lines(head)
        if (b"transfer-encoding", b"chunked") in fields:
            payload = await reader.readuntil(b"0\r\n\r\n")
        else:
            payload = await reader.readexactly(int(dict(fields)[b"content-length"]))
        seen.append(head + payload)
        writer.write(_FINE)
        await writer.drain()

    async with upstream_for(kind, handler) as (_, upstream):
        response = await upstream.send("POST", b"/", headers, _parts() if streamed else b"abc")
        assert await body(response) == b"fine"
        await response.aclose()
    head, _, payload = seen[0].partition(b"\r\n\r\n")
    framing = [
        (n, v) for n, v in header_lines(head) if n in (b"content-length", b"transfer-encoding")
    ]
    assert len(framing) == 1, framing
    assert len([n for n, _ in header_lines(head) if n == b"host"]) == 1
    if framing[0][0] == b"content-length":
        assert (framing[0][1], payload) == (b"3", b"abc")
    else:
        assert framing[0][1] == b"chunked"
        assert payload in (b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n")
