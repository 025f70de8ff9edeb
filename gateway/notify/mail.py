"""Mail for the token lifecycle (issue 14): the templates, and one SMTP delivery.

:func:`render` turns one notification kind and its context into ``(subject, text, html)``;
:class:`MailSender` sends one :class:`MailMessage` over a fresh SMTP connection
(aiosmtplib). A notification worker sends few mails, so a connection per message costs
little and never leaves a half-broken session behind for the next one.

Templates
=========

Each kind (:data:`KINDS`) has ``<kind>.txt`` and ``<kind>.html`` in ``templates/`` next
to this module. An operator directory (:attr:`MailConfig.templates`) overrides them file
by file: a missing file falls back to the built-in one. The ``.txt`` file starts with the
subject::

    Subject: New token {{ token_name }}
    <blank line>
    the plain-text body ...

The subject line is compiled on its own (not cut out of the rendered text), so a token
name holding a line break cannot move the split; any whitespace run in the rendered
subject becomes one space, so it can never make a second header. HTML is autoescaped,
text is not. Undefined names are errors (``StrictUndefined``): a template that names a
variable the context does not carry fails with :class:`ConfigError` naming the file
instead of mailing a blank where the token name should be.

The context: templates see these keys and nothing else (:data:`CONTEXT_KEYS`; a key
the caller passes outside this list is dropped):

=============== ===========================================================================
key             value
=============== ===========================================================================
kind            one of :data:`KINDS`
token_name      the token's name (free text: autoescaped in HTML)
token_id        the token's id
token_prefix    the display prefix already masked by :func:`mask`, e.g. ``pat_3kF9…``
token_type      ``personal``, ``service`` or ``oauth``
scopes          list of scope strings
expires_at      human string, ``2027-01-31 00:00 UTC`` or ``never``
at              when it happened, human string
ip              client IP (str) or None
user_agent      client User-Agent (str) or None
actor           who did it: a user id or ``the operator``
owner           ``alice`` or ``organization acme``
org_id          the organization's id
org_token       bool: organization-owned (mailed to every org admin, names the creator)
creator         the user id that created the token
lead            ``expiring`` only: how long before expiry, e.g. ``7 days``; else None
product         product name; ``patgate`` when the caller gives none
=============== ===========================================================================

Delivery and errors
===================

``security``: ``starttls`` upgrades after EHLO and refuses to go on when the server does
not offer STARTTLS (no silent fallback to plain text, RFC 3207 §4 leaves that choice to
the client); ``tls`` is TLS from the first byte (RFC 8314 §3); ``none`` is plain and is
refused (:class:`ConfigError`) together with a username, so a password never crosses the
wire in clear. Certificates are always verified, against the system's CAs plus
:attr:`MailConfig.ca_file`.

Every failure is :class:`DeliveryFailed`; ``retryable`` follows RFC 5321 §4.2.1 (4yz
transient, 5yz permanent):

============================================================ =========
failure                                                      retryable
============================================================ =========
connection refused, timeout, TLS handshake, server hung up   yes
any 4xx reply (greeting 421, 451 on RCPT or DATA, 454 AUTH)  yes
every recipient refused with 5xx                             no
authentication failed (535), AUTH not offered or no common   no
STARTTLS required but not offered                            no: a configuration mismatch
other 5xx (sender refused, DATA refused)                     no
a malformed message (no recipient, bad Message-ID, header)   no
============================================================ =========

"No" sends the notification to the dead letters at once: retrying cannot fix a wrong
password or a server without STARTTLS, and an operator should see it now. When only some
recipients are refused the message is delivered to the others and ``send`` returns (a
retry would mail the accepted ones twice); the refused addresses are logged.

Details are one line, never holding the password (it is scrubbed from server replies
too) nor a token secret (mail only ever carries the masked prefix).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
import jinja2

from patgate.middleware.errors import ConfigError, DeliveryFailed

__all__ = [
    "CONTEXT_KEYS",
    "KINDS",
    "MailConfig",
    "MailMessage",
    "MailSecurity",
    "MailSender",
    "mask",
    "render",
]

_log = logging.getLogger("patgate.notify")

MailSecurity = Literal["starttls", "tls", "none"]

KINDS = ("created", "revoked", "regenerated", "expiring", "expired")

CONTEXT_KEYS = (
    "kind",
    "token_name",
    "token_id",
    "token_prefix",
    "token_type",
    "scopes",
    "expires_at",
    "at",
    "ip",
    "user_agent",
    "actor",
    "owner",
    "org_id",
    "org_token",
    "creator",
    "lead",
    "product",
)

_BUILTIN = Path(__file__).parent / "templates"
_SUBJECT = "Subject:"
# A display prefix is ``<prefix>_`` and four characters (middleware.tokenformat: token
# prefixes are at most 16 letters/digits; middleware.external: ``glpat-``, ``gho_``).
_MAX_HEAD = 16
_SHOWN = 4
# The Message-ID is ``<key@patgate>`` (RFC 5322 §3.6.4): the key must not hold what would
# end or split the msg-id.
_BAD_KEY = re.compile(r'[^!-~]|[<>@"\\]')
# Headers MailSender owns; an extra header may not replace one of them.
_OWN_HEADERS = frozenset(
    {"from", "to", "subject", "date", "message-id", "auto-submitted", "mime-version"}
)


@dataclass(frozen=True, slots=True)
class MailConfig:
    """Where and how to send mail. Checked on construction (:class:`ConfigError`)."""

    host: str
    port: int = 587
    security: MailSecurity = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "patgate@localhost"
    #: seconds for the connect and for each SMTP command.
    timeout: float = 10.0
    #: operator templates overriding the built-in ones, file by file.
    templates: Path | None = None
    #: an extra CA to trust (self-signed servers, tests), on top of the system's.
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("mail: host is empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"mail: port {self.port} is not a TCP port")
        if self.security not in ("starttls", "tls", "none"):
            raise ConfigError(f"mail: security {self.security!r} is not starttls, tls or none")
        if not self.timeout > 0:
            raise ConfigError("mail: timeout must be positive")
        if (self.username is None) != (self.password is None):
            raise ConfigError("mail: username and password go together")
        if self.username is not None and self.security == "none":
            raise ConfigError("mail: AUTH needs starttls or tls (the password would go in clear)")


@dataclass(frozen=True, slots=True)
class MailMessage:
    """One mail. ``message_id`` is the notification's idempotency key: the Message-ID
    header is ``<message_id@patgate>``, so a redelivered notification is recognisably the
    same mail."""

    to: tuple[str, ...]
    subject: str
    text: str
    html: str
    message_id: str
    headers: tuple[tuple[str, str], ...] = ()


def mask(prefix: str) -> str:
    """A token's display prefix as mail shows it: ``pat_3kF9`` -> ``pat_3kF9…``.

    Only the issuer's head up to the first ``_`` or ``-`` and four characters are kept,
    which a display prefix already is: handed a full secret by mistake, mail still shows
    ``pat_3kF9…`` and never the secret."""
    for sep in ("_", "-"):
        head, found, rest = prefix.partition(sep)
        if found and 0 < len(head) <= _MAX_HEAD:
            return f"{head}{sep}{rest[:_SHOWN]}…"
    return prefix[:_SHOWN] + "…"


def render(
    kind: str, context: Mapping[str, Any], templates: Path | None = None
) -> tuple[str, str, str]:
    """``(subject, text, html)`` for one kind; see the module docstring for the context.

    Unknown kind -> ValueError; a missing ``templates`` directory, a template syntax
    error or an undefined variable -> :class:`ConfigError` naming the file."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    if templates is not None and not templates.is_dir():
        raise ConfigError(f"mail templates: {templates} is not a directory")
    # A fresh environment per call: a worker renders few mails, and an operator's edited
    # template is picked up without a restart.
    search = [str(templates), str(_BUILTIN)] if templates is not None else [str(_BUILTIN)]
    loader = jinja2.FileSystemLoader(search)
    values = {key: context[key] for key in CONTEXT_KEYS if key in context}
    values.setdefault("kind", kind)
    values.setdefault("product", "patgate")
    text_env = _environment(loader, autoescape=False)
    html_env = _environment(loader, autoescape=True)

    source, filename = _source(text_env, f"{kind}.txt")
    head, _, rest = source.partition("\n")
    if not head.startswith(_SUBJECT) or not rest.startswith(("\n", "\r\n")):
        raise ConfigError(
            f"mail template {filename}: the first line must be 'Subject: ...', then a blank line"
        )
    body = rest.split("\n", 1)[1]  # after the blank line
    subject = _compile(text_env, head[len(_SUBJECT) :], filename, 0).render(values)
    text = _compile(text_env, body, filename, 2).render(values)
    html_source, html_filename = _source(html_env, f"{kind}.html")
    html = _compile(html_env, html_source, html_filename, 0).render(values)
    return " ".join(subject.split()), text, html


class MailSender:
    """Sends :class:`MailMessage` over SMTP as :class:`MailConfig` says."""

    def __init__(self, config: MailConfig) -> None:
        self._config = config
        # Built once: loading the system CAs is the slow part of a TLS client context.
        self._tls: ssl.SSLContext | None = None
        if config.security != "none":
            self._tls = ssl.create_default_context()
            if config.ca_file is not None:
                try:
                    self._tls.load_verify_locations(cafile=str(config.ca_file))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"mail: cannot load CA file {config.ca_file}") from exc

    async def send(self, message: MailMessage) -> None:
        """Deliver ``message``; raises :class:`DeliveryFailed` (see the module docstring
        for which failures are retryable)."""
        mail = self._build(message)
        config = self._config
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            timeout=config.timeout,
            use_tls=config.security == "tls",
            # STARTTLS is done by hand below so that "not offered" is our decision.
            start_tls=False,
            tls_context=self._tls if config.security == "tls" else None,
        )
        try:
            await self._session(smtp, mail, message.to)
        except DeliveryFailed:
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # Worth a retry when one refusal is transient: that recipient may take it later.
            transient = any(400 <= r.code < 500 for r in exc.recipients)
            first = exc.recipients[0]
            raise DeliveryFailed(
                self._safe(
                    f"every recipient refused ({len(exc.recipients)}): {first.code} {first.message}"
                ),
                retryable=transient,
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # Auth (535/454), sender, DATA and greeting replies: RFC 5321 §4.2.1.
            what = type(exc).__name__.removeprefix("SMTP")
            raise DeliveryFailed(
                self._safe(f"SMTP {what}: {exc.code} {exc.message}"),
                retryable=400 <= exc.code < 500,
            ) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise DeliveryFailed(self._safe(f"SMTP: {exc}"), retryable=False) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Refused, timed out, TLS handshake or certificate, server hung up: transient
            # (ssl.SSLError is an OSError).
            raise DeliveryFailed(
                self._safe(f"SMTP {config.host}:{config.port}: {type(exc).__name__}: {exc}"),
                retryable=True,
            ) from exc
        finally:
            await _close(smtp)

    async def _session(
        self, smtp: aiosmtplib.SMTP, mail: EmailMessage, to: tuple[str, ...]
    ) -> None:
        config = self._config
        await smtp.connect()
        if config.security == "starttls":
            # connect() says EHLO only when it negotiates STARTTLS itself; here we decide.
            if smtp.last_ehlo_response is None:
                await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise DeliveryFailed(
                    f"SMTP {config.host}:{config.port} does not offer STARTTLS",
                    retryable=False,
                )
            await smtp.starttls(tls_context=self._tls)
        if config.username is not None and config.password is not None:
            # Checked here: aiosmtplib reports "no AUTH" and "no mechanism we speak" as a
            # bare SMTPException, which would read as transient.
            if smtp.last_ehlo_response is None:
                await smtp.ehlo()
            if not smtp.supported_auth_methods:
                raise DeliveryFailed(
                    f"SMTP {config.host}:{config.port} offers no AUTH mechanism "
                    "patgate supports (PLAIN, LOGIN, CRAM-MD5)",
                    retryable=False,
                )
            await smtp.login(config.username, config.password)
        refused, _ = await smtp.send_message(mail, sender=config.sender, recipients=list(to))
        if refused:
            _log.warning(
                "mail %s: refused by the server for %s",
                mail["Message-ID"],
                ", ".join(f"{addr} ({reply.code})" for addr, reply in refused.items()),
            )

    def _build(self, message: MailMessage) -> EmailMessage:
        if not message.to:
            raise DeliveryFailed("mail has no recipient", retryable=False)
        if not message.message_id or _BAD_KEY.search(message.message_id):
            raise DeliveryFailed("mail key is not usable in a Message-ID", retryable=False)
        mail = EmailMessage(policy=SMTP_POLICY)
        try:
            mail["From"] = self._config.sender
            mail["To"] = ", ".join(message.to)
            mail["Subject"] = message.subject
            mail["Date"] = format_datetime(datetime.now(UTC))
            mail["Message-ID"] = f"<{message.message_id}@patgate>"
            # RFC 3834 §5: tells auto-responders (vacation mail) not to answer.
            mail["Auto-Submitted"] = "auto-generated"
            for name, value in message.headers:
                if name.lower() in _OWN_HEADERS:
                    raise ValueError(name)
                mail[name] = value
            mail.set_content(message.text)
            mail.add_alternative(message.html, subtype="html")
        except (ValueError, TypeError) as exc:
            # Fixed text: a header value may hold anything, it is not echoed.
            raise DeliveryFailed("mail has an invalid header", retryable=False) from exc
        return mail

    def _safe(self, detail: str) -> str:
        """One line, at most 300 characters, never the password (a server might echo)."""
        if self._config.password:
            detail = detail.replace(self._config.password, "***")
        return " ".join(detail.split())[:300]


def _environment(loader: jinja2.BaseLoader, *, autoescape: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=loader,
        # The plain-text part is not HTML: escaping would show "&lt;" to the reader.
        autoescape=autoescape,  # noqa: S701
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _source(env: jinja2.Environment, name: str) -> tuple[str, str]:
    assert env.loader is not None
    try:
        source, filename, _ = env.loader.get_source(env, name)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(f"mail template {name} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mail template {name} cannot be read") from exc
    return source, filename or name


class _Template:
    """A compiled template that reports render errors as :class:`ConfigError` too."""

    def __init__(self, template: jinja2.Template, filename: str) -> None:
        self._template = template
        self._filename = filename

    def render(self, values: Mapping[str, Any]) -> str:
        try:
            return self._template.render(values)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"mail template {self._filename}: {exc.message}") from exc


def _compile(env: jinja2.Environment, source: str, filename: str, offset: int) -> _Template:
    """Compile one part of a template file; ``offset``: lines before it in the file, so a
    syntax error names the right line."""
    try:
        return _Template(env.from_string(source), filename)
    except jinja2.TemplateSyntaxError as exc:
        line = (exc.lineno or 0) + offset
        raise ConfigError(f"mail template {filename}, line {line}: {exc.message}") from exc


async def _close(smtp: aiosmtplib.SMTP) -> None:
    """QUIT politely when still connected; drop the connection if even that fails."""
    if not smtp.is_connected:
        return
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()
