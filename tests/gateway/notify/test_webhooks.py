"""Signed webhooks (issue 14, gateway.notify.webhooks): Standard Webhooks headers and
signatures, endpoint URL and event-type checks, and one delivery attempt against a real
receiver on 127.0.0.1 (tests/gateway/notify/_receiver.py): retries keep the webhook-id,
redirects are not followed, timeouts are bounded, 410 is final, secrets never leak."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from patgate.gateway.notify import webhooks
from patgate.gateway.notify.webhooks import (
    EVENT_TYPES,
    Attempt,
    WebhookSender,
    check_event_types,
    check_url,
    new_secret,
    payload,
    signature_headers,
)
from patgate.middleware.errors import ValidationFailed
from tests.gateway.notify._receiver import Answer, receiver
from tests.middleware._servers import free_port

pytestmark = pytest.mark.anyio

MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
BODY = payload("token.revoked", {"token_id": "tok_1", "name": "ci"}, at=1_700_000_000.25)


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    s = WebhookSender(timeout=2.0, connect_timeout=1.0)
    try:
        yield s
    finally:
        await s.aclose()


def test_exports() -> None:
    assert sorted(webhooks.__all__) == sorted(
        [
            "EVENT_TYPES",
            "Attempt",
            "WebhookSender",
            "check_event_types",
            "check_url",
            "new_secret",
            "payload",
            "signature_headers",
        ]
    )


# -- secrets, payload, signature ---------------------------------------------------------


def test_new_secret_is_whsec_base64_of_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    for secret in (first, second):
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
        Webhook(secret)  # the package accepts it


def test_payload_is_the_specs_compact_json() -> None:
    body = payload("token.created", {"id": "tok_1", "name": "café"}, at=1_667_507_170.344522)
    assert (
        body
        == (
            '{"type":"token.created","timestamp":"2022-11-03T20:26:10.344522Z",'
            '"data":{"id":"tok_1","name":"café"}}'
        ).encode()
    )
    with pytest.raises(ValueError, match="JSON"):
        payload("token.created", {"x": float("nan")}, at=0)


def test_signature_matches_the_reference_vector() -> None:
    # The test vector of the Standard Webhooks / Svix libraries.
    headers = signature_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert headers == [
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
    ]


def test_signature_verifies_with_the_package_and_only_with_its_secret() -> None:
    secret = new_secret()
    headers = dict(signature_headers(secret, MSG_ID, int(time.time()), BODY))
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(new_secret()).verify(BODY, headers)


BAD_SECRET = "whsec_" + "!" * 40  # no base64 digit: decodes to nothing


@pytest.mark.parametrize(
    ("msg_id", "body", "secret", "reason"),
    [
        ("msg.1", b"{}", None, "msg_id"),  # a "." makes id.ts.body ambiguous (spec)
        ("", b"{}", None, "msg_id"),
        ("msg 1", b"{}", None, "msg_id"),
        ("msg\n1", b"{}", None, "msg_id"),
        ("msg_1", b"\xff", None, "UTF-8"),
        ("msg_1", b"{}", "whsec_", "invalid webhook secret"),
        ("msg_1", b"{}", BAD_SECRET, "invalid webhook secret"),
    ],
)
def test_signature_refuses_bad_input_without_showing_the_secret(
    msg_id: str, body: bytes, secret: str | None, reason: str
) -> None:
    secret = secret or new_secret()
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        signature_headers(secret, msg_id, 1, body)
    if secret != "whsec_":
        assert secret.removeprefix("whsec_") not in str(caught.value)
    assert caught.value.__cause__ is None


# -- check_url ---------------------------------------------------------------------------

LONG = "https://example.com/" + "a" * (2048 - len("https://example.com/"))

ACCEPTED = [
    ("https://example.com/hook", "https://example.com/hook"),
    ("HTTPS://Hooks.Example.COM:8443/Path?Q=A", "https://hooks.example.com:8443/Path?Q=A"),
    ("https://example.com", "https://example.com"),
    ("https://example.com./x", "https://example.com./x"),
    ("https://xn--caf-dma.example/x", "https://xn--caf-dma.example/x"),
    ("https://93.184.216.34/hook", "https://93.184.216.34/hook"),
    (
        "https://[2606:2800:220:1:248:1893:25c8:1946]/h",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/h",
    ),
    ("https://localhost.example.com/", "https://localhost.example.com/"),
    ("https://[::ffff:8.8.8.8]/", "https://[::ffff:8.8.8.8]/"),
    ("https://8.8.8.8:443", "https://8.8.8.8:443"),
    (LONG, LONG),
]


@pytest.mark.parametrize(("url", "normalized"), ACCEPTED)
def test_check_url_accepts(url: str, normalized: str) -> None:
    assert check_url(url) == normalized
    assert check_url(url, allow_private=True) == normalized


PRIVATE = [
    "https://127.0.0.1/hook",
    "https://127.1/hook",  # legacy IPv4 forms getaddrinfo still accepts
    "https://2130706433/hook",
    "https://0x7f000001/hook",
    "https://0177.0.0.1/hook",
    "https://10.1.2.3/hook",
    "https://172.16.0.1/hook",
    "https://192.168.1.1/hook",
    "https://100.64.0.1/hook",  # shared address space (RFC 6598)
    "https://169.254.169.254/latest/meta-data",  # cloud metadata
    "https://0.0.0.0/hook",
    "https://224.0.0.1/hook",
    "https://240.0.0.1/hook",
    "https://255.255.255.255/hook",
    "https://[::1]/hook",
    "https://[::]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[ff02::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "https://[2001:db8::1]/hook",  # documentation
    "https://localhost/hook",
    "https://LOCALHOST./hook",
    "https://api.localhost/hook",
    "http://127.0.0.1:8080/hook",  # http: also refused without allow_private
    "http://example.com/hook",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_check_url_refuses_private_targets_unless_allowed(url: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_url(url)
    assert caught.value.status_code == 400
    normalized = check_url(url, allow_private=True)
    assert normalized.lower() == url.lower()


REFUSED = [
    (None, "string"),
    (b"https://example.com", "string"),
    (42, "string"),
    ("", "empty"),
    (LONG + "a", "2048"),
    ("ftp://example.com/hook", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("example.com/hook", "scheme"),
    ("https:///hook", "host"),
    ("https:example.com", "host"),
    ("https://", "host"),
    ("https://user:pass@example.com/", "userinfo"),
    ("https://user@example.com/", "userinfo"),
    ("https://example.com\\@10.0.0.1/", "ASCII"),
    ("https://example.com/hook#frag", "fragment"),
    ("https://example.com/#", "fragment"),
    ("https://exa mple.com/", "ASCII"),
    ("https://example.com/\r\nX-Evil: 1", "ASCII"),
    ("https://café.example/", "ASCII"),
    ("https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "ASCII"),  # IDNA: 127.0.0.1
    ("https://example.com:99999/", "malformed"),
    ("https://example.com:0/", "port"),
    ("https://example.com:http/", "malformed"),
    ("https://exa_mple..com/", "host name"),
    ("https://-example.com/", "host name"),
    ("https://%31%32%37.0.0.1/", "host name"),
    ("https://[not-ipv6]/", "malformed"),
    ("https://[1.2.3.4]/", "malformed"),
    ("https://[v1.fe]/", "IPv6"),
    ("https://[::1/", "malformed"),
    ("https://999.1.1.1/", "host name"),
    ("https://1.1.1.1.1/", "host name"),
    ("https://example.123/", "host name"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_check_url_refuses(url: object, reason: str, allow_private: bool) -> None:
    with pytest.raises(ValidationFailed, match=re.escape(reason)):
        check_url(url, allow_private=allow_private)


def test_check_url_allows_http_only_with_allow_private() -> None:
    assert check_url("HTTP://Receiver.Internal:80/x", allow_private=True) == (
        "http://receiver.internal:80/x"
    )
    with pytest.raises(ValidationFailed, match="scheme must be https"):
        check_url("http://receiver.example/x")


# -- check_event_types -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["token.revoked"], ("token.revoked",)),
        (
            ["token.revoked", "token.created", "token.revoked"],
            ("token.created", "token.revoked"),
        ),
        (("webhook.test",), ("webhook.test",)),
        (["*"], ("*",)),
        (["token.created", "*"], ("*",)),
        (list(EVENT_TYPES), tuple(sorted(EVENT_TYPES))),
    ],
)
def test_check_event_types_accepts(value: object, expected: tuple[str, ...]) -> None:
    assert check_event_types(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "list"),
        ("token.created", "list"),  # a string is not a list of one
        ({"token.created": True}, "list"),
        ([], "empty"),
        (["token.created", "token.exploded"], "'token.exploded'"),
        (["Token.Created"], "'Token.Created'"),
        (["token.*"], "'token.*'"),
        ([""], "''"),
        (["token.created", 3], "int"),
        ([None], "NoneType"),
    ],
)
def test_check_event_types_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValidationFailed, match=re.escape(reason)) as caught:
        check_event_types(value)
    assert caught.value.status_code == 400


def test_check_event_types_does_not_echo_a_huge_entry() -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_event_types(["x" * 10_000])
    assert len(str(caught.value)) < 200


# -- deliveries against a real receiver --------------------------------------------------


async def test_a_delivery_is_signed_and_verifies_in_the_receiver(sender: WebhookSender) -> None:
    secret = new_secret()
    async with receiver(secret) as rx:
        before = time.time()
        attempt = await sender.deliver(rx.url, secret, MSG_ID, BODY)
        (got,) = await rx.wait_for(1)
    assert attempt.ok
    assert attempt.status == 200
    assert attempt.error is None
    assert attempt.retryable is False
    assert before <= attempt.at <= time.time()
    assert got.method == "POST"
    assert got.target == "/hook"
    assert got.body == BODY
    assert got.verified is True
    assert got.verifies(new_secret()) is False  # a wrong secret does not verify
    assert got.header("webhook-id") == MSG_ID
    assert got.header("webhook-timestamp") == str(int(attempt.at))
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", got.header("webhook-signature") or "")
    assert got.header("content-type") == "application/json"
    assert got.header("user-agent") == "patgate-webhooks"
    assert Webhook(secret).verify(got.body, got.header_map) == json.loads(BODY)


async def test_500_then_200_keeps_the_webhook_id(sender: WebhookSender) -> None:
    secret = new_secret()
    async with receiver(secret) as rx:
        rx.fail_next(1, status=500)
        first = await sender.deliver(rx.url, secret, MSG_ID, BODY)
        second = await sender.deliver(rx.url, secret, MSG_ID, BODY, now=time.time() + 1)
        one, two = await rx.wait_for(2)
    assert (first.ok, first.status, first.error, first.retryable) == (False, 500, "HTTP 500", True)
    assert (second.ok, second.status, second.error) == (True, 200, None)
    # The same msg_id is the same webhook-id: the receiver's idempotency key (spec).
    assert one.header("webhook-id") == two.header("webhook-id") == MSG_ID
    assert one.body == two.body
    assert (
        int(two.header("webhook-timestamp") or 0) == int(one.header("webhook-timestamp") or 0) + 1
    )
    assert one.verified
    assert two.verified


async def test_a_redirect_is_not_followed(sender: WebhookSender) -> None:
    secret = new_secret()
    async with receiver(secret) as target, receiver(secret) as rx:
        rx.redirect_next(target.url)
        attempt = await sender.deliver(rx.url, secret, MSG_ID, BODY)
        await rx.wait_for(1)
        await target.expect_no_more(0.2)
    assert target.deliveries == []
    assert attempt.ok is False
    assert attempt.status == 302
    assert attempt.error == "redirect not followed (302)"
    assert attempt.retryable is True


@pytest.mark.parametrize("status", [301, 307, 308])
async def test_every_redirect_status_is_a_failed_attempt(
    sender: WebhookSender, status: int
) -> None:
    async with receiver() as target, receiver() as rx:
        rx.redirect_next(target.url, status=status)
        attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
    assert target.deliveries == []
    assert (attempt.ok, attempt.status) == (False, status)
    assert "redirect" in (attempt.error or "")


async def test_a_slow_receiver_times_out_within_the_timeout() -> None:
    sender = WebhookSender(timeout=0.5, connect_timeout=0.5)
    try:
        async with receiver() as rx:
            rx.delay_next(1, 10.0)
            started = time.perf_counter()
            attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
            elapsed = time.perf_counter() - started
            await rx.wait_for(1)  # it did arrive; only the answer was late
    finally:
        await sender.aclose()
    assert (attempt.ok, attempt.status, attempt.error) == (False, None, "timeout")
    assert attempt.retryable is True
    assert 0.4 <= elapsed < 2.5
    assert 400 <= attempt.duration_ms < 2500


async def test_the_timeout_bounds_a_body_that_trickles_but_keeps_the_status() -> None:
    # The answer's status arrived; a body slower than the deadline does not turn a 200
    # into a failure, and does not hold the attempt past the timeout.
    sender = WebhookSender(timeout=0.5, connect_timeout=0.5)
    try:
        async with receiver() as rx:
            rx.stall_next(1, 10.0)
            started = time.perf_counter()
            attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
            elapsed = time.perf_counter() - started
    finally:
        await sender.aclose()
    assert attempt.status == 200
    assert elapsed < 2.5


async def test_nothing_listening_is_connection_refused(sender: WebhookSender) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    started = time.perf_counter()
    attempt = await sender.deliver(url, new_secret(), MSG_ID, BODY)
    assert time.perf_counter() - started < 2.0
    assert (attempt.ok, attempt.status, attempt.error) == (False, None, "connection refused")
    assert attempt.retryable is True


@pytest.mark.parametrize(
    ("answer", "error"),
    [(Answer(drop=True), "protocol error"), (Answer(reset=True), None)],
)
async def test_a_connection_closed_without_an_answer_is_a_retryable_failure(
    sender: WebhookSender, answer: Answer, error: str | None
) -> None:
    async with receiver() as rx:
        rx.answer_next(1, answer)
        attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
        await rx.wait_for(1)
    assert (attempt.ok, attempt.status, attempt.retryable) == (False, None, True)
    assert attempt.error
    if error is not None:
        assert attempt.error == error


@pytest.mark.parametrize(
    ("status", "ok", "retryable"),
    [
        (200, True, False),
        (202, True, False),
        (204, True, False),
        (400, False, True),
        (404, False, True),
        (410, False, False),  # Gone: the receiver wants no more; disable the endpoint (spec)
        (429, False, True),
        (502, False, True),
        (503, False, True),
    ],
)
async def test_status_rules(sender: WebhookSender, status: int, ok: bool, retryable: bool) -> None:
    async with receiver() as rx:
        rx.fail_next(1, status=status)
        attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
    assert (attempt.ok, attempt.status, attempt.retryable) == (ok, status, retryable)
    assert attempt.error == (None if ok else f"HTTP {status}")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://127.0.0.1/hook", "unsupported URL scheme"),
        ("not a url", "unsupported URL scheme"),
        ("http://[::1/hook", "invalid URL"),
    ],
)
async def test_a_bad_url_is_a_failed_attempt_not_an_exception(
    sender: WebhookSender, url: str, error: str
) -> None:
    attempt = await sender.deliver(url, new_secret(), MSG_ID, BODY)
    assert (attempt.ok, attempt.status, attempt.error) == (False, None, error)


async def test_a_huge_answer_is_read_only_in_part(sender: WebhookSender) -> None:
    async with receiver() as rx:
        rx.answer_next(1, Answer(body=b"x" * (4 * 1024 * 1024)))
        attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
    assert attempt.ok
    assert attempt.status == 200


async def test_an_injected_client_is_used_and_not_closed() -> None:
    # Redirects stay unfollowed even on a client configured to follow them.
    async with httpx.AsyncClient(follow_redirects=True) as client:
        sender = WebhookSender(client=client)
        async with receiver() as target, receiver() as rx:
            rx.redirect_next(target.url)
            attempt = await sender.deliver(rx.url, new_secret(), MSG_ID, BODY)
        await sender.aclose()
        assert not client.is_closed
    assert target.deliveries == []
    assert attempt.status == 302
    assert not attempt.ok


async def test_the_secret_never_leaks(sender: WebhookSender) -> None:
    secret = new_secret()
    raw = secret.removeprefix("whsec_")
    async with receiver(secret) as rx:
        rx.fail_next(1, status=500)
        failed = await sender.deliver(rx.url, secret, MSG_ID, BODY)
        ok = await sender.deliver(rx.url, secret, MSG_ID, BODY)
        refused = await sender.deliver(f"http://127.0.0.1:{free_port()}/", secret, MSG_ID, BODY)
        deliveries = await rx.wait_for(2)
    for attempt in (failed, ok, refused):
        shown = json.dumps(attempt.to_json()) + repr(attempt) + str(attempt)
        assert raw not in shown
        assert secret not in shown
    for got in deliveries:
        wire = got.body.decode() + repr(got.headers) + got.target
        assert raw not in wire
        assert secret not in wire


def test_attempt_to_json() -> None:
    attempt = Attempt(
        at=1.5, ok=False, status=500, error="HTTP 500", duration_ms=3.25, retryable=True
    )
    data: dict[str, Any] = attempt.to_json()
    assert data == {
        "at": 1.5,
        "ok": False,
        "status": 500,
        "error": "HTTP 500",
        "duration_ms": 3.25,
        "retryable": True,
    }
    assert json.loads(json.dumps(data)) == data


# -- the receiver itself (tests/gateway/notify/_receiver.py) -----------------------------


async def test_the_receiver_reads_chunked_bodies_and_bounds_its_waits() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async with receiver() as rx, httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(rx.url_for("/other?x=1"), content=chunks())
        assert response.status_code == 200
        (got,) = await rx.wait_for(1)
        assert got.target == "/other?x=1"
        assert got.header("Transfer-Encoding") == "chunked"
        assert got.json() == {"a": 1}
        assert got.verified is None  # no secret given
        started = time.perf_counter()
        with pytest.raises(AssertionError, match=r"expected 2 deliveries within 0\.2s, got 1"):
            await rx.wait_for(2, within=0.2)
        assert time.perf_counter() - started < 2.0
        await rx.expect_no_more(0.05)
