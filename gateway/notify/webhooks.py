"""Signed webhooks for the token lifecycle (issue 14), per the Standard Webhooks
specification 1.0.0 (https://www.standardwebhooks.com, "the spec" below).

========================= ===================================================================
name                      does
========================= ===================================================================
``EVENT_TYPES``           the event types an endpoint may subscribe to (``"*"``: all of them)
``new_secret``            a fresh endpoint secret, ``whsec_`` + base64 of 32 random bytes
``check_url``             an endpoint URL, or ``ValidationFailed`` (HTTPS, no SSRF literals)
``check_event_types``     a subscription list, or ``ValidationFailed`` naming the bad entry
``payload``               the JSON body the spec recommends: ``type``, ``timestamp``, ``data``
``signature_headers``     ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``
``Attempt``               the outcome of one delivery attempt, safe to store and show
``WebhookSender``         one signed POST: no redirects, short timeouts, bounded reads
========================= ===================================================================

Retries, backoff and disabling an endpoint belong to the caller (the outbox); this module
makes one attempt and says, in :attr:`Attempt.retryable`, whether another could help.
No function here logs, and no error or :class:`Attempt` ever carries a secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from patgate.middleware.errors import ValidationFailed

__all__ = [
    "EVENT_TYPES",
    "Attempt",
    "WebhookSender",
    "check_event_types",
    "check_url",
    "new_secret",
    "payload",
    "signature_headers",
]

#: event types an endpoint may subscribe to (the audit event types that notify); "*"
#: subscribes to all. Full-stop delimited, ``[a-z_]`` identifiers (spec: "Event types").
EVENT_TYPES = (
    "token.created",
    "token.registered",
    "token.revoked",
    "token.regenerated",
    "token.deleted",
    "token.expiring",
    "token.expired",
    "token.reuse_after_revoke",
    "token.reuse_after_rotation",
    "token.reuse_after_expiry",
    "token.reuse_after_delete",
    "webhook.test",
)

_ALL = "*"
_MAX_URL = 2048
#: the response body is read (and dropped) up to this much: enough for any sane answer,
#: bounded against an endpoint that streams forever.
_MAX_RESPONSE = 64 * 1024
_USER_AGENT = "patgate-webhooks"
#: the spec's table: "Random. At least 24 bytes" — 32 is what Svix and the spec's own
#: libraries generate.
_SECRET_BYTES = 32

# URL checks. Only printable ASCII is accepted: a non-ASCII host would be IDNA-mapped by
# the client after the check (full-width digits, U+FF10-U+FF19, map to ASCII ones, so a
# "127.0.0.1" in them passes as a name and connects to loopback), and a backslash or a
# space is read differently by different URL parsers. Punycode is fine.
_URL_CHARS = re.compile(r"[\x21-\x5b\x5d-\x7e]+")  # printable ASCII but "\\"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# A host whose last label is a number is no DNS name (no TLD is numeric) but may be an
# IPv4 address in a legacy form that getaddrinfo still accepts: "127.1", "2130706433",
# "0x7f.0.0.1", "0177.0.0.1". They are decoded as the resolver would and checked.
_NUMERIC_TAIL = re.compile(r"(?:^|\.)(?:0x[0-9a-f]*|[0-9]+)\.?$")


def new_secret() -> str:
    """A fresh endpoint secret, Standard Webhooks form: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def check_url(url: object, *, allow_private: bool = False) -> str:
    """A webhook endpoint URL, or :class:`ValidationFailed`.

    Accepted: a ``str`` of at most 2048 printable ASCII characters (IDN hosts in punycode);
    scheme ``https`` — ``http`` too only when ``allow_private`` (spec, "Enforcing HTTPS":
    the signature does not encrypt the event); a host; an optional valid port; no userinfo
    (``user:pass@``), no fragment.

    SSRF (spec, "Server side request forgery"): unless ``allow_private``, a host that is
    ``localhost`` or ends in ``.localhost`` (RFC 6761 §6.3; any case, trailing dot or not)
    is refused, and so is a literal IP address — IPv4 in any form the resolver accepts,
    IPv6, IPv6 embedding an IPv4 one (mapped, 6to4, Teredo) — that is loopback, private,
    link-local, multicast, unspecified, reserved or otherwise not global. This checks the
    URL only: a DNS name that resolves to an internal address is for the network (an
    egress proxy or subnet, as the spec recommends) to stop.

    Returns the URL with its scheme and host lower-cased, the rest unchanged.
    """
    if not isinstance(url, str):
        raise ValidationFailed("url must be a string")
    if not url:
        raise ValidationFailed("url must not be empty")
    if len(url) > _MAX_URL:
        raise ValidationFailed(f"url must be at most {_MAX_URL} characters")
    if not _URL_CHARS.fullmatch(url):
        raise ValidationFailed(
            "url must be printable ASCII, without spaces or backslashes (punycode for IDN)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise ValidationFailed("url is malformed") from None
    scheme = parts.scheme.lower()
    allowed = ("http", "https") if allow_private else ("https",)
    if scheme not in allowed:
        raise ValidationFailed(f"url scheme must be {' or '.join(allowed)}")
    if not url[len(scheme) :].startswith("://") or not parts.netloc:
        raise ValidationFailed("url must have a host")
    if "@" in parts.netloc:
        raise ValidationFailed("url must not contain userinfo (user:password@)")
    if "#" in url:
        raise ValidationFailed("url must not contain a fragment")
    host = parts.hostname or ""
    if not host:
        raise ValidationFailed("url must have a host")
    if port == 0:
        raise ValidationFailed("url port must be between 1 and 65535")
    address = _literal_address(host)
    if "[" in parts.netloc and not isinstance(address, ipaddress.IPv6Address):
        raise ValidationFailed("url host is not a valid IPv6 address")  # e.g. "[v1.fe]"
    if address is None and (not _HOSTNAME.fullmatch(host) or len(host.rstrip(".")) > 253):
        raise ValidationFailed("url host is not a valid host name")
    if not allow_private:
        if address is not None and not _is_public(address):
            raise ValidationFailed("url host must not be a private or local address")
        name = host.rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            raise ValidationFailed("url host must not be localhost")
    # Lower-case only the scheme and the host[:port]; the path and query stay as given
    # (they are the receiver's, and may be case-sensitive).
    rest = url[len(scheme) + 3 + len(parts.netloc) :]
    return f"{scheme}://{parts.netloc.lower()}{rest}"


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host literally is, or None for a DNS name; ValidationFailed for
    something that is neither."""
    if ":" in host:  # only an IPv6 literal (from "[...]") has a colon in its host
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise ValidationFailed("url host is not a valid IPv6 address") from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    if _NUMERIC_TAIL.search(host):
        try:
            # inet_aton is what getaddrinfo uses for numeric hosts: the same legacy forms.
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise ValidationFailed("url host is not a valid host name") from None
    return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 address carrying an IPv4 one may reach it: ::ffff:127.0.0.1 does, and a
        # 6to4 (2002::/16) or Teredo relay may too. Both must be public.
        embedded = [address.ipv4_mapped, address.sixtofour]
        embedded += list(address.teredo or ())
        if not all(_is_public(v4) for v4 in embedded if v4 is not None):
            return False
        if address.ipv4_mapped is not None:
            return True
    # is_global alone is not enough: it is True for IPv4 multicast (224.0.0.0/4).
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )


def check_event_types(value: object) -> tuple[str, ...]:
    """A non-empty list (or tuple) of :data:`EVENT_TYPES` entries, or ``["*"]``,
    deduplicated and sorted; or :class:`ValidationFailed` naming the bad entry.

    ``"*"`` subscribes to every event type, present and future, so a list holding it
    collapses to ``("*",)``.
    """
    if not isinstance(value, list | tuple):
        raise ValidationFailed("event_types must be a list of event types")
    if not value:
        raise ValidationFailed("event_types must not be empty")
    for entry in value:
        if not isinstance(entry, str):
            raise ValidationFailed(f"event type must be a string, not {type(entry).__name__}")
        if entry != _ALL and entry not in EVENT_TYPES:
            raise ValidationFailed(f"unknown event type {entry[:64]!r}")
    if _ALL in value:
        return (_ALL,)
    return tuple(sorted(set(value)))


def payload(event_type: str, data: Mapping[str, Any], at: float) -> bytes:
    """The JSON body the spec recommends ("Payload structure"): ``{"type": ...,
    "timestamp": RFC 3339 UTC of the event (``at``, seconds since the epoch), "data":
    {...}}``, compact (the spec's minified form), UTF-8. The event's time, not the
    attempt's: retries send the very same bytes."""
    stamp = datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="microseconds")
    body = {"type": event_type, "timestamp": stamp.replace("+00:00", "Z"), "data": dict(data)}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def signature_headers(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> list[tuple[str, str]]:
    """``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (``v1,<base64
    HMAC-SHA256 over f"{id}.{ts}.{body}">``) per the spec ("Webhook headers"), computed
    with the standardwebhooks package.

    ``msg_id`` must not contain a ``.`` (spec, "Signature scheme": it would make the
    signed content ambiguous) nor whitespace; ``body`` must be UTF-8 (the package signs
    text). Either, or a malformed secret, is a ``ValueError`` that never shows the secret.
    """
    if not msg_id or "." in msg_id or not msg_id.isprintable() or " " in msg_id:
        raise ValueError("webhook msg_id must be non-empty, printable, without '.' or spaces")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("webhook body must be UTF-8") from None
    try:
        signer = Webhook(secret)
    except Exception:  # binascii.Error, EmptyWebhookSecretError: say nothing of the secret
        raise ValueError("invalid webhook secret") from None
    signature = signer.sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), text)
    return [
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature),
    ]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, safe to store and show (never a secret, a header or a URL).

    ``retryable`` follows the spec ("Delivery success and failure"): every failure is
    worth retrying — a 3xx (the URL should be updated, but may be), a 4xx, a 5xx, a
    timeout, a refused or reset connection — except ``410 Gone``, where the receiver
    says it wants no more and the sender "should disable the webhook endpoint". A
    success is not retryable (there is nothing to retry).
    """

    #: when it started (time.time(), or the ``now`` given to ``deliver``)
    at: float
    #: a 2xx answer
    ok: bool
    #: the HTTP status, None when no answer
    status: int | None
    #: one line: "timeout", "connection refused", "redirect not followed (302)", "HTTP 500"
    error: str | None
    duration_ms: float
    retryable: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _outcome(status: int) -> tuple[bool, str | None, bool]:
    """(ok, error, retryable) for an HTTP answer."""
    if 200 <= status <= 299:
        return True, None, False
    if 300 <= status <= 399:
        # Never followed (spec: "3xx: Failure ... update the webhook URL instead").
        return False, f"redirect not followed ({status})", True
    return False, f"HTTP {status}", status != 410


def _network_error(exc: BaseException, default: str) -> str:
    """A one-line, fixed reason for a network failure (never the exception's text, which
    may carry the URL), found in the exception's chain; ``default`` when none is known."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; bounded in case it loops
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "name resolution failed"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if type(seen).__name__.startswith("SSL"):
            return "TLS error"
        seen = seen.__cause__ or seen.__context__
    return default


class WebhookSender:
    """Delivers one signed webhook per :meth:`deliver` call.

    ``timeout`` bounds the whole attempt — connect, send, the answer's status and the
    (bounded) read of its body — and ``connect_timeout`` the TCP and TLS set-up. The
    spec suggests 15-30 s for slow consumers; the caller's settings choose. The client
    is httpx's unless one is given (then it is not closed by :meth:`aclose`); either way
    redirects are not followed and, for our own, proxy environment variables are
    ignored (trust_env=False): an endpoint is reached directly or not at all.

    :meth:`deliver` does not check the URL again: it was checked by :func:`check_url`
    when the endpoint was registered.
    """

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._timeout = timeout
        self._httpx_timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        self._owns_client = client is None
        if client is None:
            client = httpx.AsyncClient(
                timeout=self._httpx_timeout, follow_redirects=False, trust_env=False
            )
        self._client = client

    async def deliver(
        self, url: str, secret: str, msg_id: str, body: bytes, *, now: float | None = None
    ) -> Attempt:
        """One POST with Content-Type application/json, the signature headers (timestamp =
        int(now or time.time())), User-Agent "patgate-webhooks", never following redirects
        (a 3xx is a failed attempt), short timeouts; reads at most 64 KiB of the response.
        Returns an Attempt; never raises for network or HTTP errors (a bad ``msg_id``,
        body or secret is the caller's bug: ``ValueError``, from :func:`signature_headers`).
        """
        at = time.time() if now is None else now
        headers = [
            ("content-type", "application/json"),
            ("user-agent", _USER_AGENT),
            *signature_headers(secret, msg_id, int(at), body),
        ]
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            request = self._client.build_request(
                "POST", url, content=body, headers=headers, timeout=self._httpx_timeout
            )
            # One deadline for the whole attempt: httpx's timeouts are per operation, so
            # an endpoint trickling bytes could otherwise hold the attempt indefinitely.
            # The status is the answer: a body cut short (an error here) or too slow (the
            # deadline, once ``status`` is set) does not change it.
            async with asyncio.timeout(self._timeout):
                response = await self._client.send(request, stream=True, follow_redirects=False)
                try:
                    status = response.status_code
                    with contextlib.suppress(httpx.HTTPError, OSError):
                        await _drain(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            error = "timeout"
        except httpx.ConnectError as exc:
            error = _network_error(exc, "connection failed")
        except httpx.RemoteProtocolError:
            error = "protocol error"
        except (httpx.ReadError, httpx.WriteError) as exc:
            error = _network_error(exc, "connection lost")
        except httpx.InvalidURL:
            error = "invalid URL"
        except httpx.UnsupportedProtocol:
            error = "unsupported URL scheme"
        except httpx.HTTPError as exc:
            error = f"request failed ({type(exc).__name__})"
        except OSError as exc:
            error = _network_error(exc, "connection failed")
        duration_ms = (time.perf_counter() - started) * 1000
        if status is None:
            return Attempt(at, False, None, error or "no answer", duration_ms, True)
        ok, failure, retryable = _outcome(status)
        return Attempt(at, ok, status, failure, duration_ms, retryable)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


async def _drain(response: httpx.Response) -> None:
    """Read and drop at most ``_MAX_RESPONSE`` bytes of the answer (nothing in it is used;
    reading lets a small answer finish cleanly)."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= _MAX_RESPONSE:
            return
