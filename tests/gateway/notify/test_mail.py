"""Mail notifications (issue 14, gateway.notify.mail) against a real SMTP server.

Every test talks to aiosmtpd on 127.0.0.1 (tests/gateway/notify/_smtp.py): plain,
STARTTLS and implicit TLS with a self-signed certificate, AUTH, forced replies, and a
server taken down and brought back on the same port. No SMTP mock."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patgate.gateway.notify.mail import (
    CONTEXT_KEYS,
    KINDS,
    MailConfig,
    MailMessage,
    MailSecurity,
    MailSender,
    mask,
    render,
)
from patgate.middleware.errors import ConfigError, DeliveryFailed
from tests.gateway.notify._smtp import (
    PASSWORD,
    USERNAME,
    Received,
    ServerSecurity,
    SmtpServer,
    smtp_server,
    wait_for_messages,
)

pytestmark = pytest.mark.anyio

TO = ("alice@example.test", "bob@example.test")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One self-signed certificate for the module's servers."""
    return tmp_path_factory.mktemp("smtp-cert")


@pytest.fixture
def server(cert_dir: Path) -> Iterator[SmtpServer]:
    with smtp_server(cert_dir) as running:
        yield running


def _context(kind: str = "created", **overrides: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "kind": kind,
        "token_name": "deploy-bot",
        "token_id": "tok_01JD8Z",
        "token_prefix": mask("pat_3kF9"),
        "token_type": "personal",
        "scopes": ["repo:read", "repo:write"],
        "expires_at": "2027-01-31 00:00 UTC",
        "at": "2026-12-02 06:30 UTC",
        "ip": "203.0.113.7",
        "user_agent": "curl/8.5.0",
        "actor": "alice",
        "owner": "alice",
        "org_id": "acme",
        "org_token": False,
        "creator": "alice",
        "lead": "7 days" if kind == "expiring" else None,
        "product": "patgate",
    }
    context.update(overrides)
    return context


def _message(kind: str = "created", key: str = "evt-1.created", **overrides: Any) -> MailMessage:
    subject, text, html = render(kind, _context(kind, **overrides))
    return MailMessage(to=TO, subject=subject, text=text, html=html, message_id=key)


def _config(server: SmtpServer, security: MailSecurity | None = None, **fields: Any) -> MailConfig:
    defaults: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": security or server.security,
        "ca_file": server.ca_file,
        "sender": "patgate@example.test",
        "timeout": 5.0,
    }
    return MailConfig(**{**defaults, **fields})


async def _failure(config: MailConfig, message: MailMessage | None = None) -> DeliveryFailed:
    with pytest.raises(DeliveryFailed) as caught:
        await MailSender(config).send(message or _message())
    return caught.value


# -- rendering and the delivered message ----------------------------------------------

#: what each kind's text and html parts must say besides the name and masked token.
EXPECTED = {
    "created": ["2026-12-02 06:30 UTC", "203.0.113.7", "curl/8.5.0", "repo:read, repo:write",
                "2027-01-31 00:00 UTC"],
    "revoked": ["2026-12-02 06:30 UTC", "alice", "203.0.113.7"],
    "regenerated": ["2026-12-02 06:30 UTC", "alice", "2027-01-31 00:00 UTC"],
    "expiring": ["2027-01-31 00:00 UTC", "7 days", "regenerate tok_01JD8Z"],
    "expired": ["2027-01-31 00:00 UTC"],
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
async def test_each_kind_is_delivered_with_its_headers_and_both_parts(
    server: SmtpServer, kind: str
) -> None:
    message = _message(kind, key=f"evt-42.{kind}")
    await MailSender(_config(server)).send(message)

    [got] = await wait_for_messages(server, 1)
    assert got.sender == "patgate@example.test"
    assert got.recipients == TO
    assert got.header("From") == "patgate@example.test"
    assert got.header("To") == ", ".join(TO)
    assert got.header("Subject") == message.subject
    assert "deploy-bot" in message.subject
    assert got.header("Message-ID") == f"<evt-42.{kind}@patgate>"
    assert got.header("Auto-Submitted") == "auto-generated"
    assert got.header("Date")
    assert got.message.get_content_type() == "multipart/alternative"
    assert got.text is not None
    assert got.html is not None
    for part in (got.text, got.html):
        assert "pat_3kF9…" in part
        assert "deploy-bot" in part
        for expected in EXPECTED[kind]:
            assert expected in part, (kind, expected)


async def test_an_org_token_mail_names_its_creator(server: SmtpServer) -> None:
    message = _message(org_token=True, creator="carol", owner="organization acme", actor="carol")
    await MailSender(_config(server)).send(message)
    [got] = await wait_for_messages(server, 1)
    for part in (got.text, got.html):
        assert part is not None
        assert "Creator:" in part or "Creator</th>" in part
        assert "carol" in part
        assert "organization acme" in part


def _leaks(got: Received, value: str) -> bool:
    """Whether ``value`` is anywhere in the message: the raw bytes (headers, any part
    sent 7bit/8bit) and the decoded parts (quoted-printable or base64 would hide it from
    a scan of the raw bytes alone)."""
    decoded = [got.text or "", got.html or "", *(str(v) for v in got.message.values())]
    return value.encode() in got.raw or any(value in text for text in decoded)


async def test_a_full_secret_never_appears_in_the_mail(server: SmtpServer) -> None:
    secret = "pat_" + "".join(secrets.choice(BASE62) for _ in range(36))
    hidden = secret[len("pat_") + 4 :]  # what follows the display prefix
    # The caller has the secret at hand (create/regenerate) and passes it by mistake: as
    # extra context keys, and even as the "prefix" to mask. None of it may reach the mail.
    context = _context(token_prefix=mask(secret), secret=secret, token=secret, value=secret)
    subject, text, html = render("created", context)
    await MailSender(_config(server)).send(
        MailMessage(TO, subject, text, html, message_id="evt-7.created")
    )
    # Positive control: the same check does see a secret that is in the mail.
    control = _context(token_name=f"leaked {secret}")
    subject, text, html = render("created", control)
    await MailSender(_config(server)).send(
        MailMessage(TO, subject, text, html, message_id="evt-8.created")
    )

    clean, leaked = await wait_for_messages(server, 2)
    assert _leaks(leaked, secret)
    assert _leaks(leaked, hidden)
    assert not _leaks(clean, secret)
    assert not _leaks(clean, hidden)
    assert _leaks(clean, secret[:8] + "…")  # the masked token is there


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("pat_3kF9", "pat_3kF9…"),
        ("pat_3kF9xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "pat_3kF9…"),
        ("glpat-AbCdEfGhIjKlMnOp", "glpat-AbCd…"),
        ("opaquevaluewithoutissuer", "opaq…"),
    ],
)
def test_mask_keeps_only_a_display_prefix(given: str, shown: str) -> None:
    assert mask(given) == shown


def test_a_token_name_cannot_add_a_header_through_the_subject() -> None:
    subject, _, _ = render("created", _context(token_name="x\r\nBcc: eve@example.test"))
    assert "\n" not in subject
    assert "\r" not in subject


def test_unknown_context_keys_are_dropped_and_product_defaults() -> None:
    context = _context()
    del context["product"]
    subject, _, _ = render("created", context)
    assert subject.startswith("[patgate]")
    assert "product" in CONTEXT_KEYS


# -- transport security and AUTH ------------------------------------------------------


async def test_starttls_with_a_self_signed_certificate(cert_dir: Path) -> None:
    # The server refuses MAIL before STARTTLS, so a delivery proves the upgrade.
    with smtp_server(cert_dir, security="starttls") as server:
        await MailSender(_config(server)).send(_message())
        [got] = await wait_for_messages(server, 1)
    assert got.tls


async def test_implicit_tls(cert_dir: Path) -> None:
    with smtp_server(cert_dir, security="tls") as server:
        await MailSender(_config(server)).send(_message())
        [got] = await wait_for_messages(server, 1)
    assert got.tls


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_an_untrusted_certificate_is_a_retryable_failure(
    cert_dir: Path, security: ServerSecurity
) -> None:
    with smtp_server(cert_dir, security=security) as server:
        failed = await _failure(_config(server, ca_file=None))
        assert failed.retryable
        assert server.messages == []


async def test_starttls_not_offered_is_refused_not_sent_in_clear(server: SmtpServer) -> None:
    failed = await _failure(_config(server, "starttls"))
    assert not failed.retryable
    assert "STARTTLS" in failed.detail
    assert server.messages == []


async def test_implicit_tls_to_a_plain_server_is_a_retryable_failure(server: SmtpServer) -> None:
    started = time.monotonic()
    failed = await _failure(_config(server, "tls", timeout=2.0))
    assert failed.retryable
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_auth_succeeds(cert_dir: Path, security: ServerSecurity, mechanism: str) -> None:
    with smtp_server(cert_dir, security=security, auth=True, mechanisms=(mechanism,)) as server:
        config = _config(server, username=USERNAME, password=PASSWORD)
        await MailSender(config).send(_message())
        [got] = await wait_for_messages(server, 1)
    assert got.login == USERNAME


async def test_auth_failure_is_final_and_never_shows_the_password(cert_dir: Path) -> None:
    wrong = "Tr0ub4dor&3-wrong"
    with smtp_server(cert_dir, security="starttls", auth=True) as server:
        config = _config(server, username=USERNAME, password=wrong)
        failed = await _failure(config)
        assert not failed.retryable
        assert "535" in failed.detail
        assert wrong not in str(failed)
        assert wrong not in repr(config)
        assert server.messages == []


@pytest.mark.parametrize(
    ("security", "auth", "mechanisms"),
    [
        # aiosmtpd counts only STARTTLS as TLS, so over implicit TLS it offers no AUTH.
        ("tls", False, ("LOGIN", "PLAIN")),
        ("starttls", True, ()),  # "AUTH" with no mechanism patgate speaks
    ],
)
async def test_auth_not_offered_is_final(
    cert_dir: Path, security: ServerSecurity, auth: bool, mechanisms: tuple[str, ...]
) -> None:
    with smtp_server(cert_dir, security=security, auth=auth, mechanisms=mechanisms) as server:
        failed = await _failure(_config(server, username=USERNAME, password=PASSWORD))
        assert not failed.retryable
        assert "AUTH" in failed.detail
        assert server.messages == []


def test_auth_over_plain_text_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        MailConfig(host="127.0.0.1", security="none", username=USERNAME, password=PASSWORD)
    with pytest.raises(ConfigError):
        MailConfig(host="127.0.0.1", username=USERNAME)


# -- failures: down, refused, deferred ------------------------------------------------


async def test_server_down_is_retryable_quickly_and_delivery_resumes_on_restart(
    server: SmtpServer,
) -> None:
    server.stop()  # nothing listens on the port now
    config = _config(server, timeout=1.0)
    started = time.monotonic()
    failed = await _failure(config)
    assert failed.retryable
    assert time.monotonic() - started < 2.0

    server.start()  # back on the same port
    await MailSender(config).send(_message())
    [got] = await wait_for_messages(server, 1)
    assert got.header("Message-ID") == "<evt-1.created@patgate>"


async def test_a_server_that_never_answers_times_out_retryably() -> None:
    # Accepts connections (the kernel's backlog) and never sends its 220 greeting.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = int(silent.getsockname()[1])
        config = MailConfig(host="127.0.0.1", port=port, security="none", timeout=0.5)
        started = time.monotonic()
        failed = await _failure(config)
    assert failed.retryable
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        ("550 5.1.1 No such user here", False),
        ("553 5.1.3 Bad destination mailbox address syntax", False),
        ("451 4.3.0 Try again later", True),
        ("452 4.2.2 Mailbox full", True),
    ],
)
async def test_every_recipient_refused(server: SmtpServer, reply: str, retryable: bool) -> None:
    server.rcpt_reply = reply
    failed = await _failure(_config(server))
    assert failed.retryable is retryable
    assert reply[:3] in failed.detail
    assert server.messages == []


async def test_some_recipients_refused_still_delivers_to_the_others(server: SmtpServer) -> None:
    server.refused["bob@example.test"] = "550 5.1.1 No such user here"
    await MailSender(_config(server)).send(_message())
    [got] = await wait_for_messages(server, 1)
    assert got.recipients == ("alice@example.test",)


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("451 4.3.0 Try again later", True), ("554 5.6.0 Message rejected", False)],
)
async def test_data_refused(server: SmtpServer, reply: str, retryable: bool) -> None:
    server.data_reply = reply
    failed = await _failure(_config(server))
    assert failed.retryable is retryable


@pytest.mark.parametrize(
    ("message", "what"),
    [
        (MailMessage((), "s", "t", "h", message_id="k"), "recipient"),
        (MailMessage(TO, "s", "t", "h", message_id="a@b"), "Message-ID"),
        (MailMessage(TO, "s", "t", "h", message_id="a b"), "Message-ID"),
        (MailMessage(TO, "s", "t", "h", message_id="k", headers=(("Subject", "x"),)), "header"),
        (MailMessage(TO, "s", "t", "h", message_id="k", headers=(("X-A", "1\r\nB: 2"),)), "header"),
    ],
)
async def test_a_malformed_message_is_final(
    server: SmtpServer, message: MailMessage, what: str
) -> None:
    failed = await _failure(_config(server), message)
    assert not failed.retryable
    assert what in failed.detail
    assert server.messages == []


async def test_extra_headers_are_sent(server: SmtpServer) -> None:
    message = _message()
    extra = MailMessage(
        message.to, message.subject, message.text, message.html, message.message_id,
        headers=(("X-Patgate-Event", "token.created"), ("List-Id", "<tokens.patgate>")),
    )  # fmt: skip
    await MailSender(_config(server)).send(extra)
    [got] = await wait_for_messages(server, 1)
    assert got.header("X-Patgate-Event") == "token.created"
    assert got.header("List-Id") == "<tokens.patgate>"


# -- operator templates and escaping --------------------------------------------------


async def test_an_operator_template_overrides_the_builtin_one(
    server: SmtpServer, tmp_path: Path
) -> None:
    (tmp_path / "created.txt").write_text(
        "Subject: ACME: token {{ token_name }} made\n\nHello from ACME, {{ owner }}.\n"
    )
    subject, text, html = render("created", _context(), tmp_path)
    assert subject == "ACME: token deploy-bot made"
    assert text == "Hello from ACME, alice.\n"
    assert "pat_3kF9…" in html  # created.html falls back to the built-in one
    _, builtin_text, builtin_html = render("created", _context())
    assert html == builtin_html
    assert text != builtin_text

    config = _config(server, templates=tmp_path)
    subject, text, html = render("created", _context(), config.templates)
    await MailSender(config).send(MailMessage(TO, subject, text, html, message_id="k"))
    [got] = await wait_for_messages(server, 1)
    assert got.header("Subject") == "ACME: token deploy-bot made"
    assert got.text == "Hello from ACME, alice.\n"


@pytest.mark.parametrize(
    ("name", "source", "says"),
    [
        ("created.txt", "Subject: x\n\n{% if %}\n", "line 3"),
        ("created.txt", "Subject: {{ nope }}\n\nbody\n", "nope"),
        ("created.txt", "Subject: x\n\n{{ secret }}\n", "secret"),
        ("created.txt", "no subject line\n\nbody\n", "Subject"),
        ("created.html", "<p>{{ token_name | nofilter }}</p>", "nofilter"),
        ("created.html", "<p>{% for %}</p>", "line 1"),
    ],
)
def test_a_broken_template_is_a_config_error_naming_the_file(
    tmp_path: Path, name: str, source: str, says: str
) -> None:
    (tmp_path / name).write_text(source)
    with pytest.raises(ConfigError) as caught:
        render("created", _context(), tmp_path)
    assert name in str(caught.value)
    assert says in str(caught.value)


def test_unknown_kind_and_missing_template_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        render("deleted", _context())
    with pytest.raises(ConfigError):
        render("created", _context(), tmp_path / "missing")


async def test_html_is_autoescaped(server: SmtpServer) -> None:
    name = "<script>alert(1)</script>"
    await MailSender(_config(server)).send(_message(token_name=name))
    [got] = await wait_for_messages(server, 1)
    assert got.html is not None
    assert got.text is not None
    assert "<script>" not in got.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in got.html
    assert name in got.text  # plain text is not HTML: shown as typed
