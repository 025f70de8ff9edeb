"""A real SMTP server on 127.0.0.1 for the notification tests (issue 14): aiosmtpd.

``smtp_server(directory, security=..., auth=...)`` starts an aiosmtpd ``Controller``
(its own thread and event loop) on a free port and records every message it accepts as a
:class:`Received`. ``security``: ``none`` (plain), ``starttls`` (STARTTLS offered and
required before MAIL) or ``tls`` (implicit TLS, SMTPS). ``auth=True`` accepts AUTH
LOGIN/PLAIN for :data:`USERNAME`/:data:`PASSWORD` only, and with STARTTLS requires it.
The certificate is self-signed for IP 127.0.0.1, made by the ``openssl`` CLI in
``directory``; clients trust it through :attr:`SmtpServer.ca_file`.

:meth:`SmtpServer.stop` and :meth:`SmtpServer.start` take the server down and bring it
back on the same port ("SMTP down for a while"); :func:`wait_for_messages` waits, bounded,
until N messages have arrived. Replies can be forced per recipient or for DATA
(:attr:`SmtpServer.rcpt_reply`, :attr:`SmtpServer.refused`, :attr:`SmtpServer.data_reply`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import anyio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = [
    "HOST",
    "PASSWORD",
    "USERNAME",
    "Received",
    "ServerSecurity",
    "SmtpServer",
    "make_certificate",
    "smtp_server",
    "wait_for_messages",
]

HOST = "127.0.0.1"
USERNAME = "mailer"
PASSWORD = "correct horse battery staple"

ServerSecurity = Literal["none", "starttls", "tls"]


@dataclass(frozen=True)
class Received:
    """One accepted message: the envelope and the parsed mail."""

    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    #: the authenticated user, or None
    login: str | None
    #: whether the message came over TLS (STARTTLS or implicit)
    tls: bool

    @property
    def text(self) -> str | None:
        return _part(self.message, "plain")

    @property
    def html(self) -> str | None:
        return _part(self.message, "html")

    def header(self, name: str) -> str | None:
        value = self.message[name]
        return None if value is None else str(value)


def _part(message: EmailMessage, subtype: str) -> str | None:
    body = message.get_body(preferencelist=(subtype,))
    if body is None or body.get_content_subtype() != subtype:
        return None
    content = body.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # SMTP sends CRLF; tests compare with "\n"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 and its key (EC P-256: fast to make).
    Reused when ``directory`` already holds one."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    if not cert.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "/usr/bin/openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )  # fmt: skip
    return cert, key


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class _Handler:
    """aiosmtpd hooks: forced replies, then record the message."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self._server.refused.get(address, self._server.rcpt_reply)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._server.data_delay:
            await asyncio.sleep(self._server.data_delay)  # a slow server: drills kill mid-batch
        if self._server.data_reply is not None:
            return self._server.data_reply
        raw = bytes(envelope.original_content)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data if session.authenticated else None
        tls = server.transport.get_extra_info("ssl_object") is not None
        self._server.record(
            Received(envelope.mail_from, tuple(envelope.rcpt_tos), raw, message, login, tls)
        )
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """A controllable aiosmtpd server; see the module docstring."""

    security: ServerSecurity
    auth: bool
    cert: Path
    key: Path
    #: the AUTH mechanisms offered (aiosmtpd has LOGIN and PLAIN).
    mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN")
    port: int = field(default_factory=_free_port)
    #: the reply to every RCPT (e.g. ``"550 5.1.1 no such user"``); None accepts.
    rcpt_reply: str | None = None
    #: replies for some recipients, overriding rcpt_reply.
    refused: dict[str, str] = field(default_factory=dict)
    #: the reply to DATA (e.g. ``"451 4.3.0 try later"``); None accepts and records.
    data_reply: str | None = None
    #: seconds each DATA takes before its reply (a slow server)
    data_delay: float = 0.0
    _messages: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    host = HOST

    @property
    def ca_file(self) -> Path:
        return self.cert

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def record(self, received: Received) -> None:
        with self._lock:
            self._messages.append(received)

    def start(self) -> None:
        """Listen on :attr:`port` (the same one after a :meth:`stop`). A Controller's loop
        is closed by its stop, so every start makes a new one."""
        assert self._controller is None, "already running"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        kwargs: dict[str, Any] = {"server_hostname": "patgate-test-smtp", "ready_timeout": 5.0}
        if self.security == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif self.security == "tls":
            kwargs.update(ssl_context=context)
        if self.auth:
            kwargs.update(
                authenticator=_authenticate,
                # aiosmtpd counts only STARTTLS as TLS; implicit TLS is encrypted anyway.
                auth_require_tls=self.security == "starttls",
                auth_required=self.security == "starttls",
                auth_exclude_mechanism=sorted({"LOGIN", "PLAIN"} - set(self.mechanisms)),
            )
        controller = Controller(_Handler(self), hostname=HOST, port=self.port, **kwargs)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening (connections are dropped); idempotent."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        mechanism in ("LOGIN", "PLAIN")
        and isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=USERNAME if ok else None)


@contextlib.contextmanager
def smtp_server(
    directory: Path,
    *,
    security: ServerSecurity = "none",
    auth: bool = False,
    mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN"),
) -> Iterator[SmtpServer]:
    """A running :class:`SmtpServer`; stopped on exit whatever state the test left."""
    cert, key = make_certificate(directory)
    server = SmtpServer(security=security, auth=auth, cert=cert, key=key, mechanisms=mechanisms)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_for_messages(
    server: SmtpServer,
    count: int,
    *,
    # A bound every call has by default (ASYNC109 prefers the caller's fail_after; a
    # test that forgets one would hang, this one cannot).
    timeout: float = 5.0,  # noqa: ASYNC109
) -> list[Received]:
    """The messages once at least ``count`` have arrived; TimeoutError after ``timeout``."""
    with anyio.fail_after(timeout):
        # Polling: messages arrive on the server's own thread and loop, where an
        # anyio.Event of this loop cannot be set.
        while len(messages := server.messages) < count:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return messages
