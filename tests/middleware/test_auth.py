"""The Authenticator, step by step and end to end, against a real Valkey.

The RFC 6750 table runs every case through ``authenticate`` and the precomputed
responses, then checks status, challenge, body and the decision metric together.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.middleware.auth import Authenticator, Resolved
from patgate.middleware.cache import TokenCache
from patgate.middleware.credentials import bearer_bytes
from patgate.middleware.embedded import EmbeddedValkey
from patgate.middleware.errors import (
    AuthError,
    ClientNotAllowed,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    StoreUnavailable,
)
from patgate.middleware.invalidation import InvalidationSubscriber
from patgate.middleware.keys import Keyspace
from patgate.middleware.lastused import LastUsedRecorder
from patgate.middleware.metrics import Metrics
from patgate.middleware.records import LastUsed
from patgate.middleware.runtime import redis_client as make_client
from patgate.middleware.store import Buried, Found, TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.middleware.user import PatgateUser, ScopeList
from patgate.policies.engine import Policy, parse_policy
from patgate.policies.scopes import ScopeSet
from tests._topologies import ALL_BACKENDS

from ._tokens import Issued, add_user, change, delete, issue, make_policy, revoke, update_user

pytestmark = pytest.mark.anyio
#: the store tests run on standalone, Sentinel and Cluster (tests/conftest.py).
BACKENDS = ALL_BACKENDS

_PEER = {"client": ("198.51.100.9", 40000)}
_UNKNOWN_CHALLENGE = (
    'Bearer realm="patgate", error="invalid_token", error_description="invalid or unknown token"'
)


class CountingStore(TokenStore):
    """The real store, counting lookups; ``during_lookup`` runs mid-round-trip."""

    def __init__(self, client: aioredis.Redis, keys: Keyspace) -> None:
        super().__init__(client, keys)
        self.lookups = 0
        self.during_lookup: Callable[[], None] | None = None

    async def lookup(
        self, digest: bytes, partition: int, previous: bytes | None = None
    ) -> Found | Buried | None:
        self.lookups += 1
        if self.during_lookup is not None:
            self.during_lookup()
        return await super().lookup(digest, partition, previous)


class Rig:
    def __init__(self, client: aioredis.Redis, keys: Keyspace, sub_client: aioredis.Redis) -> None:
        self.store = CountingStore(client, keys)
        self.fmt = TokenFormat()
        self.metrics = Metrics()
        self.now = [time.time()]
        self.cache: TokenCache[Resolved] = TokenCache(100, 30.0, 2.0, self.metrics)
        self.recorder = LastUsedRecorder(self.store, self.metrics, interval=60)
        self.subscriber = InvalidationSubscriber(
            sub_client, keys.channels, self.cache, self.metrics
        )
        self.auth = Authenticator(
            self.store,
            self.cache,
            self.fmt,
            make_policy(),
            self.metrics,
            self.recorder,
            clock=lambda: self.now[0],
        )

    async def token(self, **kw: Any) -> Issued:
        return await issue(self.store, self.fmt, **kw)

    async def call(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> tuple[int, dict[bytes, bytes], Any]:
        """Status, response headers and body (JSON) or the Resolved on success."""
        try:
            resolved = await self.auth.authenticate(method, path, list(headers), _PEER)
        except (AuthError, StoreUnavailable) as exc:
            prepared = self.auth.responses.for_error(exc)
            return prepared.status, dict(prepared.headers), json.loads(prepared.body)
        return 200, {}, resolved

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def rig(redis_client: aioredis.Redis, keys: Keyspace, store_url: str) -> AsyncIterator[Rig]:
    sub_client = make_client(store_url, retries=0)
    rig = Rig(redis_client, keys, sub_client)
    await add_user(rig.store, "u1")
    await rig.subscriber.start(wait=5.0)
    assert rig.subscriber.connected
    try:
        yield rig
    finally:
        await rig.subscriber.aclose()
        await sub_client.aclose()


def _bearer(secret: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + secret.encode())]


def _bad_checksum(secret: str) -> str:
    last = "A" if secret[-1] != "A" else "B"
    return secret[:-1] + last


# -- the RFC 6750 table ----------------------------------------------------------------

Case = Callable[[Rig], Awaitable[list[tuple[bytes, bytes]]]]


async def _none(rig: Rig) -> list[tuple[bytes, bytes]]:
    return []


async def _basic(rig: Rig) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Basic dXNlcjpwYXNz")]


async def _lowercase_scheme(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token()
    return [(b"authorization", b"bearer " + t.secret.encode())]


async def _two_tokens(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token()
    return [(b"authorization", f"Bearer {t.secret} {t.secret}".encode())]


async def _two_headers(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token()
    return _bearer(t.secret) + _bearer(t.secret)


async def _malformed(rig: Rig) -> list[tuple[bytes, bytes]]:
    return _bearer("pat_tooshort")


async def _wrong_prefix(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token()
    return _bearer("ghp" + t.secret[3:])


async def _bad_checksum_case(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token()
    return _bearer(_bad_checksum(t.secret))


async def _unknown(rig: Rig) -> list[tuple[bytes, bytes]]:
    return _bearer(rig.fmt.generate())  # well formed, never stored


async def _revoked(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await revoke(rig.store, await rig.token())
    return _bearer(t.secret)


async def _expired(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token(expires_at=rig.now[0] - 1)
    return _bearer(t.secret)


async def _disabled(rig: Rig) -> list[tuple[bytes, bytes]]:
    user = await add_user(rig.store, "u-off")
    await update_user(rig.store, user, enabled=False)
    t = await rig.token(owner="u-off")
    return _bearer(t.secret)


async def _no_permission(rig: Rig) -> list[tuple[bytes, bytes]]:
    user = await add_user(rig.store, "u-noperm")
    await update_user(rig.store, user, can_manage_tokens=False)
    t = await rig.token(owner="u-noperm")
    return _bearer(t.secret)


async def _owner_removed(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token(owner="u-never-created")
    return _bearer(t.secret)


async def _wrong_scope(rig: Rig) -> list[tuple[bytes, bytes]]:
    t = await rig.token(scopes=("messages:read",))
    return _bearer(t.secret)


_TABLE: list[tuple[str, Case, int, str | None, str, str]] = [
    # id, headers, status, WWW-Authenticate (None: not checked exactly), body error, reason
    ("no-header", _none, 401, 'Bearer realm="patgate"', "missing_credentials",
     "missing_credentials"),
    ("basic-scheme", _basic, 401, 'Bearer realm="patgate"', "missing_credentials",
     "missing_credentials"),
    ("lowercase-bearer", _lowercase_scheme, 200, None, "", "ok"),
    ("two-tokens", _two_tokens, 400,
     'Bearer realm="patgate", error="invalid_request", '
     'error_description="malformed Bearer credentials"', "invalid_request", "invalid_request"),
    ("two-headers", _two_headers, 400,
     'Bearer realm="patgate", error="invalid_request", '
     'error_description="more than one Authorization header"', "invalid_request",
     "invalid_request"),
    ("malformed", _malformed, 401, _UNKNOWN_CHALLENGE, "invalid_token", "invalid_token"),
    ("wrong-prefix", _wrong_prefix, 401, _UNKNOWN_CHALLENGE, "invalid_token", "invalid_token"),
    ("bad-checksum", _bad_checksum_case, 401, _UNKNOWN_CHALLENGE, "invalid_token",
     "invalid_token"),
    ("unknown", _unknown, 401, _UNKNOWN_CHALLENGE, "invalid_token", "invalid_token"),
    ("revoked", _revoked, 401,
     'Bearer realm="patgate", error="invalid_token", error_description="token revoked"',
     "invalid_token", "revoked"),
    ("expired", _expired, 401,
     'Bearer realm="patgate", error="invalid_token", error_description="token expired"',
     "invalid_token", "expired"),
    ("disabled-user", _disabled, 401,
     'Bearer realm="patgate", error="invalid_token", error_description="token owner disabled"',
     "invalid_token", "disabled"),
    # Its own reason and words (issue 9): the permission switch is not "disabled".
    ("no-token-permission", _no_permission, 401,
     'Bearer realm="patgate", error="invalid_token", '
     'error_description="token owner lacks the token permission"',
     "invalid_token", "no_permission"),
    ("owner-removed", _owner_removed, 401,
     'Bearer realm="patgate", error="invalid_token", error_description="token revoked"',
     "invalid_token", "revoked"),
    ("insufficient-scope", _wrong_scope, 403,
     'Bearer realm="patgate", error="insufficient_scope", '
     'error_description="the token lacks a scope this route requires", scope="threads:read"',
     "insufficient_scope", "insufficient_scope"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "status", "challenge", "code", "reason"),
    [case[1:] for case in _TABLE],
    ids=[case[0] for case in _TABLE],
)
async def test_rfc6750_table(
    rig: Rig, headers: Case, status: int, challenge: str | None, code: str, reason: str
) -> None:
    got_status, got_headers, body = await rig.call("GET", "/threads/7", await headers(rig))
    assert got_status == status
    assert rig.count("patgate_decisions_total", outcome=_outcome(reason), reason=reason) == 1
    if status == 200:
        assert isinstance(body, Resolved)
        return
    assert got_headers[b"www-authenticate"].decode() == challenge
    assert got_headers[b"content-type"] == b"application/json"
    assert body["error"] == code
    assert body["detail"]


def _outcome(reason: str) -> str:
    return "allow" if reason in ("ok", "public") else "deny"


async def test_unknown_and_malformed_answers_are_identical(rig: Rig) -> None:
    answers = [
        await rig.call("GET", "/threads/1", _bearer("pat_x")),
        await rig.call("GET", "/threads/1", _bearer(_bad_checksum(rig.fmt.generate()))),
        await rig.call("GET", "/threads/1", _bearer(rig.fmt.generate())),
    ]
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize(
    ("spelling", "status"),
    [
        (b"Bearer %s", 200),
        (b"bearer %s", 200),
        (b"BEARER  %s", 200),
        (b"Bearer %s\t", 200),
        (b"Bearer %s ", 200),
        (b"Bearer %s=", 401),
        (b"Bearer %s,", 400),
        (b"Bearer %s %s", 400),
        (b"Bearer %s\xc3\xa9", 400),
        (b"Bearer ", 400),
    ],
)
async def test_spellings_answer_alike_with_the_token_cached(
    rig: Rig, spelling: bytes, status: int
) -> None:
    """The hot path reads the usual header itself (issue 16); with the token cached,
    every other spelling must still get bearer_bytes()'s answer, the cold one."""
    secret = (await rig.token()).secret.encode()
    assert (await rig.call("GET", "/threads/7", _bearer(secret.decode())))[0] == 200
    value = spelling % ((secret,) * spelling.count(b"%s"))
    headers = [(b"authorization", value)]
    answers = [(await rig.call("GET", "/threads/7", headers))[0] for _ in range(2)]
    assert answers == [status, status]


async def test_a_second_authorization_header_is_refused_with_the_token_cached(rig: Rig) -> None:
    secret = (await rig.token()).secret
    assert (await rig.call("GET", "/threads/7", _bearer(secret)))[0] == 200
    status, _, body = await rig.call("GET", "/threads/7", _bearer(secret) + _bearer(secret))
    assert (status, body["detail"]) == (400, "more than one Authorization header")


async def test_bad_checksum_costs_no_redis_call(rig: Rig) -> None:
    t = await rig.token()
    for _ in range(20):
        status, _, _ = await rig.call("GET", "/threads/1", _bearer(_bad_checksum(t.secret)))
        assert status == 401
    assert rig.store.lookups == 0
    assert rig.count("patgate_cache_misses_total") == 0
    assert rig.count("patgate_cache_hits_total") == 0


async def test_one_round_trip_per_miss_then_cache_hits(rig: Rig) -> None:
    t = await rig.token()
    for _ in range(5):
        assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    assert rig.store.lookups == 1
    assert rig.count("patgate_cache_misses_total") == 1
    assert rig.count("patgate_cache_hits_total") == 4


async def test_unknown_digest_is_negatively_cached(rig: Rig) -> None:
    secret = rig.fmt.generate()
    for _ in range(3):
        assert (await rig.call("GET", "/threads/1", _bearer(secret)))[0] == 401
    assert rig.store.lookups == 1


async def test_expiry_is_checked_on_a_cache_hit(rig: Rig) -> None:
    t = await rig.token(expires_at=rig.now[0] + 60)
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    rig.now[0] += 61  # the token's life ends while it sits in the cache
    status, headers, _body = await rig.call("GET", "/threads/1", _bearer(t.secret))
    assert status == 401
    assert b'error_description="token expired"' in headers[b"www-authenticate"]
    assert rig.store.lookups == 1  # answered from the cache
    assert rig.count("patgate_cache_hits_total") == 1


async def test_revocation_after_caching_is_seen_at_once(rig: Rig) -> None:
    t = await rig.token()
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    await revoke(rig.store, t)
    for _ in range(500):
        if len(rig.cache) == 0:
            break
        await _tick()
    status, headers, _ = await rig.call("GET", "/threads/1", _bearer(t.secret))
    assert status == 401
    assert b"token revoked" in headers[b"www-authenticate"]


async def test_disable_then_reenable_user(rig: Rig) -> None:
    user = await add_user(rig.store, "u-toggle")
    t = await rig.token(owner="u-toggle")
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    user = await update_user(rig.store, user, enabled=False)
    await _until_uncached(rig)
    status, headers, _ = await rig.call("GET", "/threads/1", _bearer(t.secret))
    assert status == 401
    assert b"token owner disabled" in headers[b"www-authenticate"]
    await update_user(rig.store, user, enabled=True)
    await _until_uncached(rig)
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200


async def _tick() -> None:
    await asyncio.sleep(0.002)


async def _until_uncached(rig: Rig) -> None:
    for _ in range(1000):
        if len(rig.cache) == 0:
            return
        await _tick()
    raise AssertionError("invalidation did not arrive")


async def test_lookup_racing_an_invalidation_is_not_cached(rig: Rig) -> None:
    t = await rig.token()
    rig.store.during_lookup = lambda: rig.cache.drop(b"\0" * 32)
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    assert len(rig.cache) == 0  # the answer was used, not stored
    rig.store.during_lookup = None
    await rig.call("GET", "/threads/1", _bearer(t.secret))
    assert len(rig.cache) == 1


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "reason"),
    [
        ("GET", "/public", 200, "", "public"),
        ("GET", "/threads/a%2Fb", 400, "bad_path", "bad_path"),
        ("GET", "/threads/1;x", 400, "bad_path", "bad_path"),
        ("GET", "/a/../threads/1", 400, "bad_path", "bad_path"),
    ],
)
async def test_route_level_answers_without_a_token(
    rig: Rig, method: str, path: str, status: int, code: str, reason: str
) -> None:
    got, _headers, body = await rig.call(method, path)
    assert got == status
    if status != 200:
        assert body["error"] == code
    else:
        assert body is None
    assert rig.store.lookups == 0
    assert rig.count("patgate_decisions_total", outcome=_outcome(reason), reason=reason) == 1


async def test_no_rule_is_403_only_after_authentication(rig: Rig) -> None:
    anonymous = await rig.call("GET", "/not/in/policy")
    assert anonymous[0] == 401  # an anonymous caller cannot map the policy
    t = await rig.token(scopes=("*",))
    status, _headers, body = await rig.call("GET", "/not/in/policy", _bearer(t.secret))
    assert status == 403
    assert body["error"] == "no_rule"
    assert rig.count("patgate_decisions_total", outcome="deny", reason="no_rule") == 1


async def test_wildcard_and_preset_scopes_satisfy_rules(rig: Rig) -> None:
    for scopes in (("threads:*",), ("*",), ("all",), ("read-only",)):
        t = await rig.token(scopes=scopes)
        assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200, scopes
    t = await rig.token(scopes=("read-only",))
    status, headers, _ = await rig.call("POST", "/threads", _bearer(t.secret))
    assert status == 403
    assert b'scope="threads:create"' in headers[b"www-authenticate"]


async def test_success_records_last_used_without_query_or_secret(rig: Rig) -> None:
    t = await rig.token()
    headers = [*_bearer(t.secret), (b"user-agent", b"pytest-client/1")]
    assert (await rig.call("GET", "/threads/1", headers))[0] == 200
    pending = rig.recorder._pending[t.token.id]
    assert pending == LastUsed(rig.now[0], "GET", "/threads/1", "198.51.100.9", "pytest-client/1")
    assert await rig.recorder.flush() == 1
    stored = await rig.store.get_token(t.token.id)
    assert stored is not None
    assert stored.last_used == pending


async def test_decision_latency_is_observed(rig: Rig) -> None:
    await rig.call("GET", "/threads/1")
    assert rig.count("patgate_decision_seconds_count") == 1


# -- the steps on their own -------------------------------------------------------------


async def test_step_credentials(rig: Rig) -> None:
    assert rig.auth.credentials([(b"authorization", b"Bearer abc")]) == "abc"
    with pytest.raises(MissingCredentials):
        rig.auth.credentials([])
    with pytest.raises(InvalidRequest):
        rig.auth.credentials([(b"authorization", b"Bearer ")])


async def test_step_well_formed_and_digest(rig: Rig) -> None:
    secret = rig.fmt.generate()
    assert rig.auth.well_formed(secret) == secret
    assert rig.auth.digest(secret) == rig.fmt.digest(secret)
    with pytest.raises(InvalidToken) as info:
        rig.auth.well_formed(_bad_checksum(secret))
    assert info.value.description == "invalid or unknown token"


async def test_step_lookup_and_decide(rig: Rig) -> None:
    t = await rig.token(scopes=("threads:read",))
    resolved = await rig.auth.resolve(t.secret)
    assert resolved.token.id == t.token.id
    assert resolved.usable
    match = rig.auth.route("GET", "/threads/9")
    identity = rig.auth.decide(resolved, match, [], rig.now[0])
    assert identity.token_id == t.token.id
    with pytest.raises(InvalidToken):
        await rig.auth.resolve(rig.fmt.generate())


async def test_annotations_follow_starlette_conventions(rig: Rig) -> None:
    t = await rig.token(scopes=("threads:*", "messages:read"))
    resolved = await rig.auth.resolve(t.secret)
    assert list(resolved.credentials.scopes) == ["messages:read", "threads:*"]
    assert "threads:read" in resolved.credentials.scopes  # wildcard-aware, like the policy
    assert "messages:read" in resolved.credentials.scopes
    assert "messages:delete" not in resolved.credentials.scopes
    assert "threads" not in resolved.credentials.scopes  # not a scope at all
    user = resolved.user
    assert isinstance(user, PatgateUser)
    assert user.is_authenticated
    assert user.identity == t.token.id
    assert user.display_name == "u1"
    assert user.token.owner_id == "u1"
    with pytest.raises(TypeError):
        resolved.credentials.scopes.append("admin:*")


def test_scope_list_is_read_only() -> None:
    scopes = ScopeList(ScopeSet.from_scopes(["a:read"]))
    mutations: list[Callable[[], object]] = [
        lambda: scopes.append("x"),
        lambda: scopes.extend(["x"]),
        lambda: scopes.clear(),
        lambda: scopes.__setitem__(0, "x"),
        lambda: scopes.__delitem__(0),
    ]
    for mutate in mutations:
        with pytest.raises(TypeError):
            mutate()
    assert scopes == ["a:read"]


# -- the store unreachable ---------------------------------------------------------------


async def test_store_down_is_503_and_never_cached(tmp_path: Path, keys: Keyspace) -> None:
    server = EmbeddedValkey(tmp_path / "own")
    url = server.start()
    client = make_client(url)
    sub_client = make_client(url, retries=0)
    rig = Rig(client, keys, sub_client)
    await rig.subscriber.start(wait=5.0)
    try:
        await add_user(rig.store, "u1")
        t = await rig.token()
        assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
        server.stop()
        for _ in range(1000):  # the subscriber notices and switches the cache off
            if not rig.cache.active:
                break
            await _tick()
        status, headers, body = await rig.call("GET", "/threads/1", _bearer(t.secret))
        assert status == 503
        assert body["error"] == "store_unavailable"
        assert headers[b"retry-after"] == b"1"
        assert b"www-authenticate" not in headers
        unknown = rig.fmt.generate()
        assert (await rig.call("GET", "/threads/1", _bearer(unknown)))[0] == 503
        assert len(rig.cache) == 0
        assert (
            rig.count("patgate_decisions_total", outcome="error", reason="store_unavailable") == 2
        )
        assert rig.count("patgate_redis_errors_total", op="lookup") == 2
        server.start()
        for _ in range(5000):
            if rig.subscriber.connected:
                break
            await _tick()
        assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    finally:
        await rig.subscriber.aclose()
        await client.aclose()
        await sub_client.aclose()
        server.stop()


async def test_closed_port_with_nothing_cached_is_503(keys: Keyspace) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"redis://127.0.0.1:{port}/0")
    sub_client = make_client(f"redis://127.0.0.1:{port}/0", retries=0)
    rig = Rig(client, keys, sub_client)
    try:
        status, _, body = await rig.call("GET", "/threads/1", _bearer(rig.fmt.generate()))
        assert status == 503
        assert body == {
            "error": "store_unavailable",
            "detail": "the token store is unavailable; retry later",
        }
    finally:
        await client.aclose()
        await sub_client.aclose()


# -- the credentials step on its own (RFC 6750 §2.1: exactly one b64token) -------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer abc", "abc"),
        (b"  BEARER   abc \t", "abc"),
        (b"Bearer a-b._~+/c==", "a-b._~+/c=="),
    ],
)
def test_bearer_token_accepts(value: bytes, token: str) -> None:
    assert Authenticator.credentials([(b"host", b"x"), (b"authorization", value)]) == token


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"Bearer a b", InvalidRequest),
        (b"Bearer a,b", InvalidRequest),
        (b"Bearer a\tb", InvalidRequest),
        (b"Bearer ", InvalidRequest),
        (b"Bearer \xc3\xa9", InvalidRequest),
        (b"Basic abc", MissingCredentials),
        (b"Bearer\tabc", MissingCredentials),
    ],
)
def test_bearer_token_refuses(value: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        Authenticator.credentials([(b"authorization", value)])


def _reference_bearer(value: bytes) -> bytes | type[Exception]:
    """The general parse alone (what bearer_bytes did before its common-spelling
    shortcut): the answer, or the error class."""
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return MissingCredentials
    token = rest.strip(b" \t")
    if not token or any(c in token for c in b" ,\t") or not token.isascii():
        return InvalidRequest
    return token


@settings(max_examples=2000, deadline=None)
@given(
    rest=st.binary(max_size=12)
    | st.text(st.sampled_from("ab=-, \t\n\r\x0b\x0c\x1c\xe9"), max_size=12).map(
        lambda t: t.encode("utf-8")
    )
)
def test_property_the_bearer_shortcut_answers_as_the_general_parse(rest: bytes) -> None:
    # "Bearer " + anything: the shortcut takes the usual spelling; whatever it takes, it
    # must answer exactly as the general parse (trailing \v, \f, \r, \n strip there).
    value = b"Bearer " + rest
    expected = _reference_bearer(value)
    try:
        got: bytes | type[Exception] = bearer_bytes([(b"authorization", value)])
    except (InvalidRequest, MissingCredentials) as exc:
        got = type(exc)
    assert got == expected


# -- one lookup path: identify() (the management API's caller) ----------------------------

_Door = Callable[[Rig], Awaitable[list[tuple[bytes, bytes]]]]


async def _door_unknown(rig: Rig) -> list[tuple[bytes, bytes]]:
    return _bearer(rig.fmt.generate())


async def _door_bad_checksum(rig: Rig) -> list[tuple[bytes, bytes]]:
    return _bearer(_bad_checksum((await rig.token()).secret))


async def _door_revoked(rig: Rig) -> list[tuple[bytes, bytes]]:
    return _bearer((await revoke(rig.store, await rig.token())).secret)


async def _door_two_headers(rig: Rig) -> list[tuple[bytes, bytes]]:
    return [*_bearer("a"), *_bearer("b")]


_DOORS: list[tuple[str, _Door]] = [
    ("missing", _none),
    ("basic", _basic),
    ("two-headers", _door_two_headers),
    ("unknown", _door_unknown),
    ("bad-checksum", _door_bad_checksum),
    ("revoked", _door_revoked),
]


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("headers_of", [d for _, d in _DOORS], ids=[n for n, _ in _DOORS])
async def test_identify_refuses_exactly_as_authenticate(
    rig: Rig, headers_of: _Door, fresh: bool
) -> None:
    """Every front door gives one answer: the same error, description and reason."""
    headers = await headers_of(rig)
    with pytest.raises(AuthError) as via_identify:
        await rig.auth.identify(headers, fresh=fresh)
    with pytest.raises(AuthError) as via_authenticate:
        await rig.auth.authenticate("GET", "/threads/1", headers, _PEER)
    a, b = via_identify.value, via_authenticate.value
    assert (type(a), a.description, a.reason) == (type(b), b.description, b.reason)


async def test_identify_fresh_reads_past_the_cache_and_caches_nothing(rig: Rig) -> None:
    t = await rig.token()
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    assert rig.store.lookups == 1
    # Revoked without an invalidation: the data plane's cached answer is (knowingly)
    # stale until its TTL; a fresh read sees the revocation at once.
    plan = rig.store.plan(t.token.org_id)
    plan.put_token(t.token, t.token.evolve(revoked_at=rig.now[0]))
    await rig.store.commit(plan)
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    with pytest.raises(InvalidToken) as info:
        await rig.auth.identify(_bearer(t.secret), fresh=True)
    assert info.value.reason == "revoked"
    assert rig.store.lookups == 2
    # A fresh read is no cache miss, and it stores nothing (nor a negative entry).
    assert rig.count("patgate_cache_misses_total") == 1
    entries = len(rig.cache)
    with pytest.raises(InvalidToken):
        await rig.auth.identify(_bearer(rig.fmt.generate()), fresh=True)
    assert len(rig.cache) == entries


async def test_identify_uses_the_cache_unless_fresh(rig: Rig) -> None:
    t = await rig.token(scopes=("threads:read",))
    resolved = await rig.auth.identify(_bearer(t.secret))
    assert resolved.identity.token_id == t.token.id
    assert resolved is await rig.auth.identify(_bearer(t.secret))
    assert resolved is await rig.auth.resolve(t.secret)
    assert rig.store.lookups == 1
    assert rig.count("patgate_cache_hits_total") == 2
    # identify decides no route: no decision is counted.
    assert rig.count("patgate_decisions_total", outcome="allow", reason="ok") == 0


async def test_identify_checks_expiry_against_the_given_time(rig: Rig) -> None:
    t = await rig.token(expires_at=rig.now[0] + 60)
    await rig.auth.identify(_bearer(t.secret), now=rig.now[0] + 59)
    with pytest.raises(InvalidToken) as info:
        await rig.auth.identify(_bearer(t.secret), now=rig.now[0] + 60)
    assert info.value.reason == "expired"


# -- locate / recall: a handle on a token without its secret (the console, issue 15) ----


async def test_recall_reads_the_located_token_fresh(rig: Rig) -> None:
    t = await rig.token()
    digest, partition = rig.auth.locate(t.secret)
    assert digest == t.digest  # the index's own digest: nothing new to keep secret
    assert partition == rig.fmt.partition(t.secret)
    resolved = await rig.auth.recall(digest, partition)
    assert resolved.identity.token_id == t.token.id
    # Fresh every time: one lookup each, and nothing cached (a recall is no data-plane
    # request, so it is neither a hit nor a miss).
    await rig.auth.recall(digest, partition)
    assert rig.store.lookups == 2
    assert len(rig.cache) == 0
    assert rig.count("patgate_cache_misses_total") == 0


async def test_recall_sees_revocation_expiry_and_deletion_at_once(rig: Rig) -> None:
    t = await rig.token(expires_at=rig.now[0] + 60)
    digest, partition = rig.auth.locate(t.secret)
    rig.now[0] += 61
    with pytest.raises(InvalidToken) as info:
        await rig.auth.recall(digest, partition)
    assert info.value.reason == "expired"
    rig.now[0] -= 61
    await revoke(rig.store, t)
    with pytest.raises(InvalidToken) as info:
        await rig.auth.recall(digest, partition)
    assert info.value.reason == "revoked"
    u = await rig.token(name="second")
    digest, partition = rig.auth.locate(u.secret)
    await delete(rig.store, u)
    with pytest.raises(InvalidToken):
        await rig.auth.recall(digest, partition)


async def test_recall_checks_the_owner_and_the_allowlist(rig: Rig) -> None:
    t = await change(rig.store, await rig.token(), allowed_ips=("10.0.0.0/8",))
    digest, partition = rig.auth.locate(t.secret)
    assert (await rig.auth.recall(digest, partition, client="10.1.2.3")).token.id == t.token.id
    with pytest.raises(ClientNotAllowed):
        await rig.auth.recall(digest, partition, client="192.0.2.1")
    user = await rig.store.get_user("o1", "u1")
    assert user is not None
    await update_user(rig.store, user, enabled=False)
    with pytest.raises(InvalidToken) as info:
        await rig.auth.recall(digest, partition, client="10.1.2.3")
    assert info.value.reason == "disabled"


async def test_locate_refuses_what_is_no_token(rig: Rig) -> None:
    for bad in ("pat_short", _bad_checksum(rig.fmt.generate()), "x" * 8):
        with pytest.raises(InvalidToken):
            rig.auth.locate(bad)


# -- the per-token verdict of request-free rules (issue 16) ---------------------------


async def test_static_rule_verdicts_are_kept_on_the_cached_token(rig: Rig) -> None:
    t = await rig.token(scopes=("threads:read",))
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    assert (await rig.call("POST", "/threads", _bearer(t.secret)))[0] == 403
    resolved = await rig.auth.resolve(t.secret)  # the cached one (a hit)
    names = sorted(rule.name for rule in resolved.verdicts)
    assert names == ["threads-read", "threads-write"]
    # The kept verdicts answer exactly as the policy does, allow and deny alike.
    assert (await rig.call("GET", "/threads/2", _bearer(t.secret)))[0] == 200
    status, _, body = await rig.call("POST", "/threads", _bearer(t.secret))
    assert (status, body["error"]) == (403, "insufficient_scope")
    # Only the allowing rule skips the policy call on a hit.
    assert sorted(rule.name for rule in resolved.allowed) == ["threads-read"]


async def test_a_held_verdict_still_expires(rig: Rig) -> None:
    # The hit that skips the policy (an allowing verdict held) still checks expiry.
    t = await rig.token(scopes=("threads:read",), expires_at=rig.now[0] + 60)
    for _ in range(2):
        assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    resolved = await rig.auth.resolve(t.secret)
    assert resolved.allowed
    assert resolved.live_until == t.token.expires_at
    rig.now[0] += 61
    status, headers, _ = await rig.call("GET", "/threads/1", _bearer(t.secret))
    assert status == 401
    assert b'error_description="token expired"' in headers[b"www-authenticate"]


class _FixedPolicy:
    def __init__(self, policy: Policy) -> None:
        self.current = policy


async def test_a_reloaded_policy_is_decided_afresh(rig: Rig) -> None:
    t = await rig.token(scopes=("threads:read",))
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 200
    stricter = parse_policy(
        'version = 1\ndefault = "deny"\n[[rules]]\nname = "threads-read"\n'
        'methods = ["GET"]\npath = "/threads/{id}"\nscopes = ["threads:admin"]\n',
        "stricter.toml",
    )
    rig.auth.policies = _FixedPolicy(stricter)
    assert (await rig.call("GET", "/threads/1", _bearer(t.secret)))[0] == 403
