"""The fallback upstream client, ``PATGATE_UPSTREAM_CLIENT=aiohttp``: one
``aiohttp.ClientSession`` with its own connector, for when :class:`~.http1.Http1Upstream`
is suspected (a well-kept client to compare against) or an upstream needs what only a
full client does. Needs the ``aiohttp`` extra: ``pip install 'patgate[aiohttp]'``.

The session is configured as a proxy's, not a browser's: no cookies
(``DummyCookieJar``), no decompression, no redirects, no ``User-Agent``, ``Accept``,
``Accept-Encoding`` or ``Content-Type`` of its own, no proxy from the environment, the
target sent exactly as received (``yarl.URL(..., encoded=True)``). Framing is re-done as
in :mod:`.http1` (RFC 9112 §6.3): the caller's ``Content-Length``/``Transfer-Encoding``/
``Host`` are dropped; a bytes body gets its length, a streamed one the caller's
``Content-Length`` (enforced here: aiohttp would cut a longer body short silently) or
chunked. One difference aiohttp does not let us avoid: a body-less ``DELETE`` says
``Content-Length: 0``.

aiohttp's and asyncio's exceptions stay inside this module: ``send`` and ``aiter_raw``
raise the :class:`~patgate.middleware.errors.UpstreamError` family (fixed messages: theirs
hold addresses), chained with ``raise ... from exc``::

    TimeoutError (aiohttp ServerTimeoutError, ours)   → UpstreamTimeout
    ClientConnectorError (refused, DNS, TLS)          → UpstreamConnectError
    any other ClientError, OSError or ValueError      → UpstreamProtocolError

Timeouts as in :mod:`.http1`: ``connect_timeout`` for TCP and TLS setup (aiohttp's
``sock_connect``), ``timeout`` for a pool slot (``connect``, which also covers the setup),
the response head and each body chunk (``sock_read``), and each write of a streamed body
that waits on a full socket buffer (our deadline; aiohttp has no write timeout).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .base import (
    KEEPALIVE,
    Body,
    RawHeaders,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    origin_of,
)

__all__ = ["AiohttpUpstream"]

_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: aiohttp's default of 8190 bytes per header line is stricter than llhttp in .http1.
_MAX_FIELD = 64 * 1024


def _wrapped(exc: BaseException) -> UpstreamError:
    # Fixed messages: aiohttp's own name the upstream's host and port.
    if isinstance(exc, TimeoutError):  # ServerTimeoutError and its subclasses are ones too
        return UpstreamTimeout(f"upstream timed out ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientConnectorError):  # incl. the certificate/SSL errors
        return UpstreamConnectError("upstream connect failed")
    return UpstreamProtocolError(f"upstream exchange failed ({type(exc).__name__})")


_ERRORS = (aiohttp.ClientError, OSError, ValueError, TimeoutError)


class _Upload:
    """A streamed request body on its way through aiohttp's writer task.

    It enforces the declared length, stops once the upstream has answered, keeps what the
    caller's iterator raised (aiohttp would wrap it), and arms ``deadline`` while a chunk
    is being written: aiohttp asks for the next chunk only once the last one was drained.
    """

    __slots__ = ("_body", "_declared", "_timeout", "answered", "deadline", "error", "finished")

    def __init__(self, body: AsyncIterator[bytes], declared: int | None, timeout: float) -> None:
        self._body = body
        self._declared = declared
        self._timeout = timeout
        self.deadline: asyncio.Timeout | None = None  # send()'s, while it waits
        self.answered = False
        self.finished = False
        self.error: Exception | None = None

    def _arm(self, within: float | None) -> None:
        deadline = self.deadline
        if deadline is not None and not deadline.expired():
            loop = asyncio.get_running_loop()
            deadline.reschedule(None if within is None else loop.time() + within)

    async def chunks(self) -> AsyncIterator[bytes]:
        sent, declared = 0, self._declared
        try:
            async for chunk in self._body:
                if self.answered:
                    return  # an early answer: the connection is closed, not reused
                if not chunk:
                    continue
                sent += len(chunk)
                if declared is not None and sent > declared:
                    raise UpstreamProtocolError("request body longer than its Content-Length")
                self._arm(self._timeout)
                yield chunk
                self._arm(None)  # drained; waiting on the caller's body is not our timeout
            if declared is not None and sent != declared:
                raise UpstreamProtocolError("request body shorter than its Content-Length")
            self.finished = True
        except Exception as exc:
            self.error = exc
            raise


class _AiohttpResponse:
    __slots__ = ("_done", "_response", "_upload", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, upload: _Upload | None) -> None:
        self._response = response
        self._upload = upload
        self._done = False
        self.status = response.status
        self.headers: RawHeaders = response.raw_headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while chunk := await content.readany():
                yield chunk
        except _ERRORS as exc:
            raise _wrapped(exc) from exc
        self._done = True

    def ready_body(self) -> bytes | None:
        return None  # read through aiter_raw: aiohttp's buffer is its own

    async def aclose(self) -> None:
        upload = self._upload
        if self._done and (upload is None or upload.finished):
            self._response.release()  # back to the pool (aiohttp closes it if not reusable)
        else:
            self._response.close()  # half-read, or the request was cut short: never pooled


class AiohttpUpstream:
    """An :class:`~.base.Upstream` over an ``aiohttp.ClientSession`` of up to ``pool_size``
    keep-alive connections to one origin (created on first use, inside the event loop)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        pool_size: int = 256,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        origin = origin_of(base_url)
        self._base = f"{origin.scheme}://{origin.netloc}{origin.prefix}"
        self._ssl: ssl.SSLContext | bool = False
        if origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self.timeout = timeout
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size,
            limit_per_host=0,
            keepalive_timeout=self._keepalive,
            ssl=self._ssl,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.timeout + self._connect_timeout,
            sock_connect=self._connect_timeout,
            sock_read=self.timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,  # HTTP_PROXY is ignored on purpose, as in .http1
            requote_redirect_url=False,
            max_line_size=_MAX_FIELD,
            max_field_size=_MAX_FIELD,
        )
        return self._session

    async def send(
        self, method: str, target: bytes, headers: RawHeaders, body: Body
    ) -> _AiohttpResponse:
        if self._closed:
            raise UpstreamConnectError("the upstream pool is closed")
        session = self._session or self._open()
        fields, declared = _headers(method, headers, body)
        upload: _Upload | None = None
        data: bytes | AsyncIterator[bytes] | None = body
        if body is not None and not isinstance(body, bytes):
            upload = _Upload(body, declared, self.timeout)
            data = upload.chunks()
        deadline = asyncio.timeout(None)
        try:
            url = URL(self._base + target.decode("ascii"), encoded=True)
            async with deadline:
                if upload is not None:
                    upload.deadline = deadline
                try:
                    response = await session.request(
                        method, url, headers=fields, data=data, allow_redirects=False
                    )
                finally:
                    if upload is not None:
                        upload.deadline = None
        except _ERRORS as exc:
            if upload is not None and upload.error is not None:
                raise upload.error from None  # the caller's body failed (or ours refused it)
            if upload is not None and deadline.expired():
                raise UpstreamTimeout("upstream write timed out") from exc
            raise _wrapped(exc) from exc
        if upload is not None:
            upload.answered = True
        if response.status == 101:  # we never ask to switch protocols (aiohttp hands it on)
            response.close()
            raise UpstreamProtocolError("unexpected protocol switch")
        return _AiohttpResponse(response, upload)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


def _headers(method: str, headers: RawHeaders, body: Body) -> tuple[CIMultiDict[str], int | None]:
    """The caller's headers minus framing and ``Host`` (aiohttp sets the upstream's); the
    declared length of a streamed body. Same rules as ``Http1Upstream._head``."""
    fields: CIMultiDict[str] = CIMultiDict()
    declared: int | None = None
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise UpstreamProtocolError("header value with a line break")
        # RFC 9112 §6.3 item 3 and §11.2: never forward a request framed twice; the one
        # framing header is aiohttp's, from the body we hand it.
        if (lname := name.lower()) in _FRAMING:
            if lname == b"content-length" and value.strip().isdigit():
                declared = int(value)
            continue
        fields.add(name.decode("latin-1"), value.decode("latin-1"))
    if body is None and method in _BODY_METHODS:
        fields["Content-Length"] = "0"  # RFC 9110 §8.6: say "no content" explicitly
    elif body is not None and not isinstance(body, bytes) and declared is not None:
        fields["Content-Length"] = str(declared)
    return fields, declared
