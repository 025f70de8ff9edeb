"""Header rules at the trust boundary: tables in the style of uvicorn's proxy-header tests."""

from __future__ import annotations

from typing import Any

import pytest

from patgate.gateway.headers import (
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    identity_headers,
    is_forwarding_header,
    is_identity_lookalike,
    response_headers,
    upstream_request_headers,
)
from patgate.middleware.errors import ConfigError, UpstreamProtocolError
from patgate.middleware.records import Identity
from patgate.middleware.trust import TrustedProxies

IDENTITY = Identity(
    token_id="tok_123",
    token_name="ci",
    token_type="personal",
    owner_kind="user",
    owner_id="usr_9",
    org_id="org_1",
    scopes=frozenset({"repos:write", "repos:read"}),
    workspaces=None,
    expires_at=None,
)


def _names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for n, value in headers if n == name]


def _up(
    headers: list[tuple[bytes, bytes]],
    *,
    identity: Identity | None = None,
    peer: str | None = "203.0.113.7",
    trusted: bool = False,
    scheme: str = "http",
) -> list[tuple[bytes, bytes]]:
    return upstream_request_headers(
        headers, identity=identity, peer=peer, trusted=trusted, scheme=scheme
    )


# --- hop-by-hop ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_never_forwarded_either_way(name: bytes) -> None:
    # The one Transfer-Encoding a response may carry through us is chunked (below).
    value = b"chunked" if name == b"transfer-encoding" else b"x"
    headers = [(name, value), (b"accept", b"*/*")]
    assert name not in _names(_up(headers))
    assert _names(response_headers(headers)) == [b"accept"]


@pytest.mark.parametrize("value", [b"gzip", b"gzip, chunked", b"x", b"chunked, gzip", b""])
def test_a_response_transfer_coding_other_than_chunked_is_refused(value: bytes) -> None:
    # Relayed without its hop-by-hop field, a coded body would reach the client as if
    # it were plain; we decode no transfer coding but chunked (proxy: 502).
    with pytest.raises(UpstreamProtocolError):
        response_headers([(b"Transfer-Encoding", value), (b"accept", b"*/*")])
    assert response_headers([(b"Transfer-Encoding", b" Chunked ")]) == []
    # No body (HEAD, 204, 304): nothing coded can reach the client.
    assert response_headers([(b"Transfer-Encoding", value)], body=False) == []


@pytest.mark.parametrize(
    ("connection", "dropped"),
    [
        (b"close, X-Secret", [b"x-secret"]),
        (b"keep-alive,x-a , X-B", [b"x-a", b"x-b"]),
        (b"Upgrade", []),
        (b",,", []),
    ],
)
def test_headers_named_in_connection_are_hop_by_hop(
    connection: bytes, dropped: list[bytes]
) -> None:
    headers = [(b"connection", connection), (b"x-a", b"1"), (b"x-b", b"2"), (b"x-secret", b"3")]
    kept_up = set(_names(_up(headers)))
    kept_down = set(_names(response_headers(headers)))
    for name in (b"x-a", b"x-b", b"x-secret"):
        assert (name in kept_up) is (name not in dropped)
        assert (name in kept_down) is (name not in dropped)
    assert b"connection" not in kept_up | kept_down


def test_response_headers_keep_order_duplicates_and_lowercase_names() -> None:
    headers = [
        (b"Set-Cookie", b"a=1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"set-cookie", b"b=2"),
        (b"Content-Type", b"text/plain"),
    ]
    assert response_headers(headers) == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-type", b"text/plain"),
    ]


# --- credentials and identity look-alikes ----------------------------------------------------


@pytest.mark.parametrize("value", [b"Bearer pat_secret", b"Basic dXNlcjpwYXNz", b""])
@pytest.mark.parametrize("trusted", [True, False])
def test_authorization_is_never_forwarded(value: bytes, trusted: bool) -> None:
    out = _up([(b"authorization", value), (b"Authorization", value)], trusted=trusted)
    assert not [n for n in _names(out) if n.lower() == b"authorization"]
    assert value not in [v for _, v in out if v]


@pytest.mark.parametrize(
    ("name", "lookalike"),
    [
        (b"x-patgate-owner-id", True),
        (b"X-Patgate-Owner-Id", True),
        (b"X-PATGATE-SCOPES", True),
        (b"x_patgate_owner_id", True),
        (b"X_Patgate_User", True),
        (b"x-patgate_token-id", True),
        (b"x.patgate.org.id", True),
        (b"x-patgate-anything-new", True),
        # The bare name in every spelling (issue 9).
        (b"x-patgate", True),
        (b"X-Patgate", True),
        (b"X_PATGATE", True),
        (b"X.Patgate", True),
        (b"x-patgate-", True),
        (b"x-patgateway", False),
        (b"patgate-owner", False),
        (b"x-request-id", False),
        (b"content-type", False),
    ],
)
def test_identity_lookalikes(name: bytes, lookalike: bool) -> None:
    assert is_identity_lookalike(name) is lookalike
    # No peer is trusted enough to send identity headers.
    assert is_identity_lookalike(name, trusted_peer=True) is lookalike


@pytest.mark.parametrize("trusted", [True, False])
def test_bare_x_patgate_never_reaches_the_upstream(trusted: bool) -> None:
    """Issue 9: the bare name, in every spelling, was forwarded."""
    sent = [(b"x-patgate", b"forged"), (b"X_PATGATE", b"forged"), (b"x.patgate", b"forged")]
    out = _up([*sent, (b"x-request-id", b"1")], trusted=trusted)
    assert b"forged" not in [v for _, v in out]
    assert _get(out, b"x-request-id") == [b"1"]


@pytest.mark.parametrize(
    ("name", "from_untrusted", "from_trusted"),
    [
        (b"x-forwarded-for", True, False),
        (b"x-forwarded-proto", True, False),
        (b"x-forwarded-host", True, False),
        (b"x-forwarded-port", True, False),
        (b"forwarded", True, False),
        (b"x-real-ip", True, False),
        # Non-canonical spellings: no proxy sends these, so they are never believed.
        (b"x_forwarded_for", True, True),
        (b"X_Real_IP", True, True),
        (b"x-forwarded", False, False),
        (b"x-forwardedfor", False, False),
    ],
)
def test_forwarding_headers_are_lookalikes_unless_from_trusted_peer(
    name: bytes, from_untrusted: bool, from_trusted: bool
) -> None:
    assert is_identity_lookalike(name) is from_untrusted
    assert is_identity_lookalike(name, trusted_peer=True) is from_trusted


@pytest.mark.parametrize(
    ("name", "forwarding"),
    [(b"X-Forwarded-Proto", True), (b"forwarded", True), (b"x_real_ip", True), (b"via", False)],
)
def test_is_forwarding_header(name: bytes, forwarding: bool) -> None:
    assert is_forwarding_header(name) is forwarding


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize("identity", [IDENTITY, None])
def test_client_identity_headers_replaced_by_patgates(
    trusted: bool, identity: Identity | None
) -> None:
    sent = [
        (b"x-patgate-owner-id", b"admin"),
        (b"X_Patgate_Owner_Id", b"admin"),
        (b"X-PATGATE-SCOPES", b"*"),
        (b"x-patgate-token-id", b"forged"),
        (b"accept", b"application/json"),
    ]
    out = _up(sent, identity=identity, trusted=trusted)
    patgate = [(n, v) for n, v in out if n.replace(b"_", b"-").lower().startswith(b"x-patgate")]
    assert patgate == identity_headers(identity)
    assert _get(out, b"accept") == [b"application/json"]


def test_identity_headers_values() -> None:
    assert identity_headers(IDENTITY) == [
        (b"x-patgate-token-id", b"tok_123"),
        (b"x-patgate-token-type", b"personal"),
        (b"x-patgate-owner-type", b"user"),
        (b"x-patgate-owner-id", b"usr_9"),
        (b"x-patgate-org-id", b"org_1"),
        (b"x-patgate-scopes", b"repos:read repos:write"),
    ]
    assert _names(identity_headers(IDENTITY)) == list(IDENTITY_HEADERS)
    assert identity_headers(None) == []


def test_end_to_end_headers_pass_through_unchanged() -> None:
    sent = [
        (b"accept", b"*/*"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"cookie", b"a=1"),
        (b"x-request-id", b"abc"),
        (b"user-agent", b"curl/8"),
    ]
    out = _up(sent)
    assert [h for h in out if h[0] in {n for n, _ in sent}] == sent


# --- X-Forwarded-* ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "peer", "trusted", "scheme", "expected"),
    [
        # Untrusted peer: whatever it claims is replaced by what patgate saw.
        (
            [(b"host", b"api.example"), (b"x-forwarded-for", b"1.1.1.1"),
             (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"evil"),
             (b"forwarded", b"for=1.1.1.1"), (b"x-real-ip", b"1.1.1.1")],
            "203.0.113.7", False, "http",
            {b"x-forwarded-for": [b"203.0.113.7"], b"x-forwarded-proto": [b"http"],
             b"x-forwarded-host": [b"api.example"], b"forwarded": [], b"x-real-ip": []},
        ),
        # Trusted peer: the chain is extended, its proto/host view kept.
        (
            [(b"host", b"internal:8080"), (b"x-forwarded-for", b"198.51.100.1, 10.0.0.2"),
             (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"api.example"),
             (b"x-real-ip", b"198.51.100.1")],
            "10.0.0.1", True, "http",
            {b"x-forwarded-for": [b"198.51.100.1, 10.0.0.2, 10.0.0.1"],
             b"x-forwarded-proto": [b"https"], b"x-forwarded-host": [b"api.example"],
             b"x-real-ip": [b"198.51.100.1"]},
        ),
        # Two X-Forwarded-For lines from a trusted proxy are one list (RFC 9110 §5.3).
        (
            [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")],
            "127.0.0.1", True, "https",
            {b"x-forwarded-for": [b"1.1.1.1, 2.2.2.2, 127.0.0.1"],
             b"x-forwarded-proto": [b"https"], b"x-forwarded-host": []},
        ),
        # Trusted peer without forwarding headers: patgate's own values.
        (
            [(b"host", b"h")], "::1", True, "https",
            {b"x-forwarded-for": [b"::1"], b"x-forwarded-proto": [b"https"],
             b"x-forwarded-host": [b"h"]},
        ),
        # Underscore spellings are dropped even from a trusted proxy.
        (
            [(b"x_forwarded_for", b"6.6.6.6")], "127.0.0.1", True, "http",
            {b"x-forwarded-for": [b"127.0.0.1"], b"x_forwarded_for": []},
        ),
        # No peer (e.g. a unix socket): no X-Forwarded-For is invented.
        (
            [(b"x-forwarded-for", b"6.6.6.6")], None, False, "http",
            {b"x-forwarded-for": [], b"x-forwarded-proto": [b"http"]},
        ),
    ],
)  # fmt: skip
def test_forwarding_headers(
    sent: list[tuple[bytes, bytes]],
    peer: str | None,
    trusted: bool,
    scheme: str,
    expected: dict[bytes, list[bytes]],
) -> None:
    out = _up(sent, peer=peer, trusted=trusted, scheme=scheme)
    for name, values in expected.items():
        assert _get(out, name) == values, name
    assert b"host" not in _names(out)


# --- TrustedProxies ----------------------------------------------------------------------------


def _scope(peer: str | None, xff: list[bytes] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 1234) if peer is not None else None,
        "headers": [(b"x-forwarded-for", v) for v in xff or []],
    }


@pytest.mark.parametrize(
    ("trusted", "host", "expected"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "127.0.0.2", False),
        (["10.0.0.0/8"], "10.200.3.4", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["::1"], "::1", True),
        (["::1"], "0:0:0:0:0:0:0:1", True),
        (["fd00::/8"], "fd12:3456::1", True),
        (["fd00::/8"], "fe80::1", False),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),
        (["*"], "198.51.100.9", True),
        (["*"], "not-an-ip", True),
        (["127.0.0.1"], "not-an-ip", False),
        (["127.0.0.1"], "", False),
        ([], "127.0.0.1", False),
    ],
)
def test_trusted_membership(trusted: list[str], host: str, expected: bool) -> None:
    assert (host in TrustedProxies(trusted)) is expected


def test_none_is_never_trusted() -> None:
    assert None not in TrustedProxies(["*"])


@pytest.mark.parametrize("entry", ["nonsense", "10.0.0.0/99", "1.2.3"])
def test_bad_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError, match="trusted proxy"):
        TrustedProxies([entry])


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "expected"),
    [
        # Untrusted peer: X-Forwarded-For is ignored.
        (["127.0.0.1"], "203.0.113.7", [b"1.2.3.4"], "203.0.113.7"),
        # Trusted peer, no header: the peer.
        (["127.0.0.1"], "127.0.0.1", [], "127.0.0.1"),
        # Trusted peer: the right-most untrusted hop.
        (["127.0.0.1"], "127.0.0.1", [b"1.2.3.4"], "1.2.3.4"),
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", [b"6.6.6.6, 1.2.3.4, 10.0.0.5"], "1.2.3.4"),
        # A forged left part cannot win: the client appended it before the proxies did.
        (["127.0.0.1"], "127.0.0.1", [b"127.0.0.1, 9.9.9.9"], "9.9.9.9"),
        # Several header lines are one list.
        (["127.0.0.1", "10.0.0.2"], "127.0.0.1", [b"5.5.5.5", b"10.0.0.2"], "5.5.5.5"),
        # Every hop trusted: the left-most.
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", [b"10.0.0.9, 10.0.0.8"], "10.0.0.9"),
        # Ports and brackets are stripped.
        (["127.0.0.1"], "127.0.0.1", [b"1.2.3.4:5678"], "1.2.3.4"),
        (["127.0.0.1"], "127.0.0.1", [b"[2001:db8::1]:443"], "2001:db8::1"),
        (["::1"], "::1", [b"2001:db8::2"], "2001:db8::2"),
        # "*": the left-most entry (every hop is trusted by definition).
        (["*"], "198.51.100.9", [b"1.2.3.4, 5.6.7.8"], "1.2.3.4"),
        # Empty entries are ignored.
        (["127.0.0.1"], "127.0.0.1", [b" , "], "127.0.0.1"),
        # No peer at all.
        (["*"], None, [b"1.2.3.4"], None),
    ],
)
def test_client_ip(
    trusted: list[str], peer: str | None, xff: list[bytes], expected: str | None
) -> None:
    assert TrustedProxies(trusted).client_ip(_scope(peer, xff)) == expected
