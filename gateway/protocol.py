"""uvicorn's httptools protocol with bounded request heads and strict ``Host``.

Every patgate listener runs uvicorn with ``http="httptools"``, which has no limit on the
request line or the header section: a client could send megabytes of headers that are
parsed, buffered, authenticated and forwarded (issue 9). This subclass refuses, at the
protocol level — before any ASGI app, authentication or forwarding runs:

==============================================  ======  ===============================
request head                                    status  setting (default)
==============================================  ======  ===============================
request target longer than the limit            414     ``max_url_bytes`` (16 KiB)
more header field lines than the limit          431     ``max_headers`` (100)
header section larger than the limit            431     ``max_header_bytes`` (64 KiB)
HTTP/1.1 without ``Host``; several ``Host``     400
lines; a ``Host`` that is not uri-host[:port]
==============================================  ======  ===============================

431 is RFC 6585 §5, 414 RFC 9110 §15.5.15; the ``Host`` rule is RFC 9112 §3.2 ("A server
MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request message that
lacks a Host header field and to any request message that contains more than one Host
header field line or a Host header field with an invalid field value"). HTTP/1.0 requests
may omit ``Host``.

Header bytes are counted as ``name: value\\r\\n``. httptools hands over a header only when
it is complete, so one endless header would still be buffered: the raw bytes received
while the head is incomplete are counted too, and a head still unfinished past
``max_url_bytes + max_header_bytes`` is refused.

A refusal is a complete response (JSON body ``{"error", "detail"}``, ``Connection:
close``) followed by a lingering close, as nginx does: the rest of the request is read
and discarded, unparsed, for at most :data:`LINGER_SECONDS`, because closing a socket
with unread data makes the kernel send a RST that can destroy the response before the
client reads it (RFC 9112 §9.6).

Every request cycle writes through :class:`~gateway.writes.CoalescedWrites`, so a response
whose head and body are sent in one loop turn leaves in one ``send``. The gateway
listener's subclass, :class:`gateway.fastpath.GatewayProtocol`, also serves bodiless
requests without the ASGI cycle (issue 16).

Middleware users run their own server; ``uvicorn.run(app, http=limited_protocol())`` gives
them the same limits (see docs/data-plane.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from patgate.middleware.responses import error_body

from .writes import CoalescedWrites

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_URL_BYTES",
    "LINGER_SECONDS",
    "PatgateHttpToolsProtocol",
    "host_problem",
    "limited_protocol",
]

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_MAX_URL_BYTES = 16 * 1024
#: how long a refused connection is drained before it is closed.
LINGER_SECONDS = 2.0

#: ``Host`` values :func:`host_problem` accepted (it is a pure function of the value).
_GOOD_HOSTS: set[bytes] = set()
_GOOD_HOSTS_MAX = 1024

# RFC 9110 §7.2: Host = uri-host [ ":" port ]; RFC 3986 §3.2.2: uri-host = IP-literal /
# IPv4address / reg-name, reg-name = *( unreserved / pct-encoded / sub-delims ) — empty
# allowed (RFC 9112 §3.2: an empty Host when the target has no authority).
_REG_NAME = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_IP_FUTURE = re.compile(rb"v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")
_PORT = re.compile(rb"[0-9]*")


def host_problem(values: list[bytes], http_version: str) -> str | None:
    """Why the ``Host`` field lines ``values`` are unacceptable (RFC 9112 §3.2), or
    ``None`` when they are fine."""
    if not values:
        return None if http_version == "1.0" else "HTTP/1.1 request without a Host header"
    if len(values) > 1:
        return "more than one Host header"
    value = values[0]
    if value.startswith(b"["):
        end = value.find(b"]")
        if end == -1:
            return "malformed Host header"
        literal, rest = value[1:end], value[end + 1 :]
        if not _IP_FUTURE.fullmatch(literal):
            try:
                ipaddress.IPv6Address(literal.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return "malformed Host header"
    else:
        name, colon, port = value.partition(b":")
        if not _REG_NAME.fullmatch(name):
            return "malformed Host header"
        rest = colon + port
    if rest and not (rest[:1] == b":" and _PORT.fullmatch(rest[1:])):
        return "malformed Host header"
    return None


def _response(status: int, reason: bytes, code: str, detail: str) -> bytes:
    """The whole refusal on the wire: uvicorn's ASGI machinery is not involved yet, so
    the one renderer's body goes behind a hand-written status line."""
    body = error_body(code, detail)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    )
    return head + body


class _Refused(Exception):
    """Raised inside a parser callback; stops httptools and carries the response."""

    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response


class PatgateHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` enforcing the limits in the module docstring.

    The limits are class attributes; :func:`limited_protocol` makes a subclass with other
    values (uvicorn instantiates the class itself, once per connection).
    """

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per connection (uvicorn makes one protocol object per connection).
        self._in_head = False
        self._head_raw = 0
        self._header_bytes = 0
        self._header_count = 0
        self._hosts: list[bytes] = []
        self._draining = False
        self._pending: bytes | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._writes: CoalescedWrites | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = CoalescedWrites(transport, self.loop)

    # -- bytes in ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # lingering close: discard unparsed
        # Only chunks that *continue* an incomplete head are counted (the one where the
        # message began may also hold the previous request's body), so this is a lower
        # bound of the head's size, over by at most one read.
        if self._in_head:
            self._head_raw += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.response)
                return
            self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_raw > self.max_url_bytes + self.max_header_bytes:
            self._refuse(_TOO_LARGE)

    def _bad_request(self) -> None:
        if self._writes is not None:
            self._writes.flush()
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _refuse(self, response: bytes) -> None:
        self._draining = True
        self._in_head = False
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            # Pipelined behind requests still being answered: responses go out in request
            # order (RFC 9112 §9.3.2), so this one waits for on_response_complete.
            self._pending = response
            return
        self._write_refusal(response)

    def _write_refusal(self, response: bytes) -> None:
        if self._writes is not None:
            self._writes.flush()  # the responses before it go first
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()  # drain (pipelining may have paused reads)
        self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)

    def on_response_complete(self) -> None:
        if self._writes is not None:
            self._writes.flush()
        pending = self._pending
        if pending is None or self.pipeline:
            super().on_response_complete()  # starts the next pipelined request, if any
            return
        self.server_state.total_requests += 1
        self._pending = None
        self._write_refusal(pending)

    def eof_received(self) -> None:
        # The client finished sending: the drain is over (a falsy return closes the
        # transport after pending writes, as uvicorn's own eof_received does).
        if self._draining:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_raw = 0
        self._header_bytes = 0
        self._header_count = 0
        self._hosts = []

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_url_bytes:
            raise _Refused(_URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_count > self.max_headers or self._header_bytes > self.max_header_bytes:
            raise _Refused(_TOO_LARGE)
        super().on_header(name, value)
        if self.headers[-1][0] == b"host":
            self._hosts.append(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        hosts = self._hosts
        # Nearly every request names a Host already seen valid: a set probe, not a regex.
        if len(hosts) != 1 or hosts[0] not in _GOOD_HOSTS:
            problem = host_problem(hosts, self.parser.get_http_version())
            if problem is not None:
                raise _Refused(_response(400, b"Bad Request", "invalid_request", problem))
            if len(hosts) == 1:
                if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
                    _GOOD_HOSTS.clear()  # bounded: names a client makes up cost memory
                _GOOD_HOSTS.add(hosts[0])
        self._dispatch()

    def _dispatch(self) -> None:
        """uvicorn's request dispatch (a cycle, its ASGI task or its place in the
        pipeline), the cycle writing through :class:`CoalescedWrites`."""
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle and self._writes is not None:
            # A new request cycle (not an upgrade): its head and body leave in one send.
            self.cycle.transport = self._writes  # type: ignore[assignment]


_TOO_LARGE = _response(
    431,
    b"Request Header Fields Too Large",
    "header_too_large",
    "the request's header section is too large or has too many fields",
)
_URI_TOO_LONG = _response(414, b"URI Too Long", "uri_too_long", "the request target is too long")


def limited_protocol(
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
) -> type[PatgateHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    attrs = {
        "max_header_bytes": max_header_bytes,
        "max_headers": max_headers,
        "max_url_bytes": max_url_bytes,
    }
    return type("PatgateHttpToolsProtocol", (PatgateHttpToolsProtocol,), attrs)
