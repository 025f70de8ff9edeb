"""The authenticator: the data plane's decision, as named steps read top to bottom.

::

    blocked     only while a client is blocked: is this one?      → 429 (middleware.limits)
    route       policy.route(method, path): public or allowed CORS preflight → allow,
                bad path → 400, TRACE/CONNECT no rule names → 405 (no lookup)
    credentials the one Bearer token (RFC 6750 §2.1)             → 401 bare / 400
    well_formed prefix, length, alphabet, CRC32: no Redis call    → 401 invalid_token
                (a credential of another shape: an external token's plausibility,
                middleware.external; or 401 with external tokens off)
    digest      SHA-256 / HMAC of the secret (of its SHA-256 for an external token)
    lookup      local cache → one EVALSHA on a miss (index, tombstone, previous
                pepper: all in that one call)                    → 401 / 503
    decide      revoked, expired (every hit), owner enabled, a previous secret's grace
                period, then the policy                          → 401 / 403
    allowlist   only for a token with allowed_ips: the client address → 403
    record      last-used (coalesced, flushed in the background)

A refused token (:class:`InvalidToken`) is counted against its client for the failure
limit and, when it is a dead secret (revoked, rotated, expired, deleted), trips the reuse
tripwire (:mod:`middleware.tripwire`); both only in the refusal branch (issue 12).

One lookup path serves every front door. :meth:`Authenticator.authenticate` (the
middleware, forward-auth, ``POST /v1/verify``) and :meth:`Authenticator.identify` (the
management API's caller: credentials → lookup → status, no route) both run
:meth:`~Authenticator.resolve`'s steps — cache probe, checksum, one Redis read, decode —
whose miss half is the only code that reads the store or decodes its records. The
management API reads *fresh* (``fresh=True``: past the cache, and nothing cached), so a
just-revoked admin token can do nothing more; it is not a hot path. ``authenticate``
inlines the cache probe (three lines), and its synchronous half
:meth:`~Authenticator.authenticate_now` decides a hit with no coroutine at all: only a
token the cache does not hold goes on to :meth:`~Authenticator.finish` and the store.

Unknown and malformed tokens get one identical answer, so a caller cannot tell a good
checksum from a stored token; revoked/expired/disabled may say so because the secret's
hash matched (RFC 6750 §3; SPEC). A store error is never cached and never turns into a
200: it surfaces as :class:`StoreUnavailable` (503).

Route-level refusals are decided as follows (docs/data-plane.md): a bad or ambiguous path
is refused with 400 before authentication — it is a malformed request whoever sends it;
a path no rule matches under ``default = "deny"`` is refused with 403 *after*
authentication, so an anonymous caller sees 401 everywhere and cannot map the policy.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from patgate.policies.engine import Policy, RouteMatch, default_policy
from patgate.policies.schema import RuleSpec
from patgate.policies.scopes import ScopeSet
from patgate.policies.verdicts import PolicyDecision

from .allowlist import IpAllowlist
from .cache import Slot, TokenCache
from .credentials import TOKEN_CHARS, bearer_bytes, bearer_token
from .errors import (
    AuthError,
    ClientNotAllowed,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MethodNotAllowed,
    PatgateError,
    StoreUnavailable,
    TooManyFailures,
)
from .external import partition_of_sha256, plausible, sha256_of
from .keys import PREVIOUS_SUFFIX, partition_of_org
from .lastused import LastUsedRecorder
from .limits import FailureLimiter
from .metrics import DECISION_REASONS, Metrics
from .records import Identity, LastUsed, Org, Previous, Token, Tombstone, User
from .responses import ErrorResponses
from .store import Buried, StaleWrite, TokenStore
from .store.plan import forward_value
from .tokenformat import TokenFormat
from .tripwire import REUSE_EVENTS, Tripwire
from .user import PatgateCredentials, PatgateUser
from .validate import check_usable, identity_of

__all__ = ["Authenticator", "Lookup", "PolicySource", "Resolved"]

Headers = list[tuple[bytes, bytes]]
#: unknown and malformed tokens: one description for both (RFC 6750 §3, SPEC).
_UNKNOWN = "invalid or unknown token"
_ROTATED = "token rotated"
_UA = b"user-agent"
#: pepper re-index writes in flight at once (issue 12); more wait for a later request.
_MAX_REINDEX = 32
#: verdicts kept per cached token (one per rule it was used on).
_MAX_VERDICTS = 64


class _Dead(InvalidToken):
    """A tombstoned digest: a deleted or rotated-out secret (the reuse tripwire's)."""

    def __init__(self, stone: Tombstone) -> None:
        deleted = stone.reason == "deleted"
        # A deleted token answers exactly as an unknown one: it no longer exists.
        super().__init__(_UNKNOWN if deleted else _ROTATED, reason=stone.reason)
        self.stone = stone


class PolicySource(Protocol):
    """Anything with a ``current`` policy (``policies.reload.PolicyHolder``)."""

    @property
    def current(self) -> Policy: ...


class _Fixed:
    __slots__ = ("current",)

    def __init__(self, policy: Policy) -> None:
        self.current = policy


class Resolved:
    """What a digest resolves to; the cache's value, built once per Redis read.

    ``identity`` carries the *effective* scopes and workspaces (the token's, bounded by
    what its owner may grant now: :mod:`middleware.grants`), and ``scopes`` is their
    compiled form — so ``@requires``, the policy and the identity headers all see the
    bounded set, computed once per cache fill rather than per request."""

    __slots__ = ("allowed", "allowlist", "credentials", "derived", "expires_at",
                 "grace_until", "identity", "live_until", "org", "owner", "partition",
                 "scopes", "token", "usable", "used_key", "user", "verdicts")  # fmt: skip

    def __init__(
        self,
        token: Token,
        owner: User | None,
        now: float,
        org: Org | None = None,
        *,
        previous: bool = False,
        errors: ErrorResponses | None = None,
    ) -> None:
        self.token = token
        self.owner = owner
        self.org = org
        #: where the token's record lives (its org's partition): last-used goes there.
        self.partition = partition_of_org(token.org_id)
        #: set when the secret presented is the token's previous one (issue 12, rotation
        #: with overlap): it works until then, and is refused as rotated after.
        self.grace_until: float | None = None
        #: the last-used field this secret's uses go to (the previous secret has its own).
        self.used_key = token.id
        expires_at = token.expires_at
        if previous and token.previous is not None:
            self.grace_until = token.previous.until
            self.used_key = token.id + PREVIOUS_SUFFIX
            if expires_at is None or self.grace_until < expires_at:
                expires_at = self.grace_until
        self.expires_at = expires_at
        self.allowlist = None if token.allowed_ips is None else IpAllowlist(token.allowed_ips)
        self.identity = identity_of(token, org, owner)
        try:
            self.check(now)
            self.usable = True
        except InvalidToken:
            # Cached too: a revoked token's next request is answered without Redis; the
            # reason is recomputed by check() on each hit.
            self.usable = False
        #: before this instant (wall clock) the token needs no status check: its expiry
        #: or grace end, +inf without one, -inf when it is unusable anyway (check()
        #: then says why, on every hit).
        self.live_until = (
            (math.inf if expires_at is None else expires_at) if self.usable else -math.inf
        )
        self.scopes = ScopeSet.from_scopes(self.identity.scopes)
        self.credentials = PatgateCredentials(self.scopes, self.identity, errors)
        self.user = PatgateUser(self.identity)
        #: rule → the policy's verdict for this token, for rules no request binds
        #: (:meth:`Authenticator.decide`).
        self.verdicts: dict[RuleSpec, PolicyDecision] = {}
        #: the rules of ``verdicts`` that allow: a hit on one needs no policy call at all.
        self.allowed: set[RuleSpec] = set()
        #: what a layer above derives from this token once per cache fill rather than
        #: per request, by that layer's key (the gateway's identity headers).
        self.derived: dict[str, object] = {}

    def check(self, now: float) -> None:
        """:func:`check_usable`, then the grace period of a previous secret."""
        check_usable(self.token, self.owner, now)
        if self.grace_until is not None and now >= self.grace_until:
            raise InvalidToken(_ROTATED, reason="rotated")


class _HeaderView(Mapping[str, str]):
    """Lower-case header name → value over raw ASGI headers, scanned only on access
    (the policy reads a header only for workspace-by-header rules). Repeated headers
    are joined with ", " — which the policy refuses to bind."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Headers) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> str:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for n, v in self._raw if n == name]
        if not values:
            raise KeyError(key)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(n.decode("latin-1") for n, _ in self._raw))

    def __len__(self) -> int:
        return len({n for n, _ in self._raw})


def _peer(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _ua(headers: Headers) -> str | None:
    for name, value in headers:
        if name == _UA:
            return value.decode("latin-1")
    return None


class Lookup:
    """A decision :meth:`Authenticator.authenticate_now` could not finish without the
    store: what :meth:`Authenticator.finish` needs to complete it."""

    __slots__ = ("digest", "match", "raw_path", "secret", "started")

    def __init__(
        self, match: RouteMatch, secret: str, digest: bytes, raw_path: str, started: float
    ) -> None:
        self.match = match
        self.secret = secret
        self.digest = digest
        self.raw_path = raw_path
        self.started = started


class Authenticator:
    """Decides requests for one process; shared by every front door (module docstring)."""

    def __init__(
        self,
        store: TokenStore,
        cache: TokenCache[Resolved],
        token_format: TokenFormat,
        policy: Policy | PolicySource,
        metrics: Metrics,
        recorder: LastUsedRecorder | None = None,
        *,
        realm: str = "patgate",
        client_ip: Callable[[Mapping[str, Any]], str | None] = _peer,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        lookup_deadline: float | None = None,
        limiter: FailureLimiter | None = None,
        tripwire: Tripwire | None = None,
        external_tokens: bool = True,
    ) -> None:
        self.store = store
        self.cache = cache
        self.token_format = token_format
        #: whether credentials not shaped like patgate's are looked up (issue 13).
        self.external_tokens = external_tokens
        # The digest step, chosen once: with external tokens on it also hashes a value
        # of any other shape (TokenFormat.any_digest_of), at the cost of one prefix check.
        # It takes bytes: the hot path hashes the header's bytes as they are.
        self._digest_of = token_format.any_digest_of if external_tokens else token_format.digest_of
        # Without a pepper a patgate secret's digest is its SHA-256: the hot path takes it
        # with no call of its own (authenticate_now); anything else goes by _digest_of.
        self._sha256 = token_format.plain_sha256
        self._head = token_format.head_bytes
        #: the cache's positive table, probed in place on the hot path.
        self._positive = cache.positive
        self.policies: PolicySource = _Fixed(policy) if isinstance(policy, Policy) else policy
        self.metrics = metrics
        self.recorder = recorder
        self.limiter = limiter
        #: the limiter's block table (empty: nobody blocked, the pre-check is skipped).
        self._blocked = None if limiter is None else limiter.blocked_table
        self.tripwire = tripwire
        self.responses = ErrorResponses(realm)
        self._client_ip = client_ip
        #: seconds for one whole store lookup (``DataPlaneConfig.redis_timeout``).
        self._deadline = lookup_deadline
        self._clock = clock
        self._monotonic = monotonic
        #: pepper re-index writes in flight, by token id (issue 12).
        self._reindexing: dict[str, asyncio.Task[None]] = {}
        # Labelled children resolved once: .labels() takes a lock and a dict lookup. In a
        # single process these are plain-number counters (middleware.metrics.LocalCounters).
        hot = metrics.hot
        self._decisions = {
            reason: hot.decision(_outcome(reason), reason) for reason in DECISION_REASONS
        }
        self._seconds = hot.seconds
        self._hits = metrics.cache_hits
        self._cached_allow = metrics.cached_allow
        self._misses = metrics.cache_misses
        self._lookup_errors = metrics.redis_errors.labels("lookup")
        self._reindexed = metrics.pepper_reindexed

    @classmethod
    def uncached(
        cls,
        store: TokenStore,
        token_format: TokenFormat,
        *,
        realm: str = "patgate",
        clock: Callable[[], float] = time.time,
    ) -> Authenticator:
        """An authenticator for fresh lookups (:meth:`identify` with ``fresh=True``)
        with no cache, the default policy and metrics of its own: what the management
        API runs on when it is built without the runtime's authenticator (tests)."""
        return cls(
            store,
            TokenCache(0, 0.0, 0.0),
            token_format,
            default_policy(),
            Metrics(),
            realm=realm,
            clock=clock,
        )

    async def authenticate(
        self, method: str, raw_path: str, headers: Headers, scope: Mapping[str, Any]
    ) -> Resolved | None:
        """Allow (the token's :class:`Resolved`, or ``None`` on a public route) or raise
        :class:`AuthError` / :class:`StoreUnavailable`. ``scope`` gives the client IP."""
        decided = self.authenticate_now(method, raw_path, headers, scope)
        if isinstance(decided, Lookup):
            return await self.finish(decided, method, headers, scope)
        return decided

    def authenticate_now(
        self, method: str, raw_path: str, headers: Headers, scope: Mapping[str, Any]
    ) -> Resolved | Lookup | None:
        """:meth:`authenticate` without awaiting: its answer, or a :class:`Lookup` when
        the token is not cached, which :meth:`finish` completes with one Redis round trip.

        A hit — almost every request — is then decided with no coroutine at all: the
        middleware saves one, and the gateway's fast path serves the request from its
        protocol callbacks (issue 16). A Lookup is counted by ``finish``, not here."""
        # One clock reading serves the cache's TTL check and the histogram; a separate
        # perf_counter_ns() pair would only add a third read per request.
        started = self._monotonic()
        reason: str | None = "ok"
        resolved: Resolved | None = None
        try:
            if self._blocked:
                # Only while some client is blocked does a request look up its own.
                self._refuse_blocked(self._client_ip(scope))
            # route() and credentials(), inlined: a call apiece less on every request.
            policy = self.policies.current
            match = policy.routed.get((method, raw_path)) or policy.route(method, raw_path)
            if match.denied is not None:
                _refuse_early(match)
            # A CORS preflight under ``preflight = "allow"`` is treated as public.
            if match.public or (method == "OPTIONS" and policy.allows_preflight(headers)):
                reason = "public"
                return None
            # The header's bytes are hashed as they are; only a miss decodes them. The
            # usual header — one, "Bearer " and b64token characters — is read here;
            # bearer_bytes() takes every other spelling and the refusals (RFC 6750 §2.1).
            value: bytes | None = None
            for name, raw in headers:
                if name == b"authorization":
                    if value is not None:
                        value = None  # two: bearer_bytes() refuses them
                        break
                    value = raw
            if value is not None and value[:7] == b"Bearer ":
                secret = value[7:]
                if not secret or secret.translate(None, TOKEN_CHARS):
                    secret = bearer_bytes(headers)
            else:
                secret = bearer_bytes(headers)
            sha256 = self._sha256
            if sha256 is not None and secret.startswith(self._head):
                digest: bytes = sha256(secret).digest()
            else:
                digest = self._digest_of(secret)
            # The cache's get(), its positive probe inlined; the negative table (unknown
            # tokens) and expiry go by get().
            slot = self._positive.get(digest)
            if slot is None or started >= slot.deadline:
                slot = self.cache.get(digest, started)
                if slot is None:
                    reason = None  # finish() counts it
                    return Lookup(match, secret.decode("ascii"), digest, raw_path, started)
            resolved = slot.value
            if (
                resolved is not None
                and match.spec in resolved.allowed
                and match.denied is None
                and match.also is None
                and resolved.allowlist is None
            ):
                # The usual request: a token whose allowing verdict on this rule is
                # already held (no binding reads the request), no IP allowlist. Decided
                # here, not in _admit/decide, and counted in one call: on a loaded
                # server every other function's code is one more set of cache lines to
                # fetch per request (issue 16: CPU per request, not instructions, kept
                # this path behind the floor's).
                now = self._clock()
                if now < resolved.live_until:
                    recorder = self.recorder
                    if recorder is not None and recorder.due(resolved.used_key, now):
                        self._note_use(recorder, resolved, match, method, headers, scope, now)
                    reason = None
                    self._cached_allow(self._monotonic() - started)
                    return resolved
            self._hits.inc()
            if resolved is None:  # "no token has this digest", cached
                raise InvalidToken(_UNKNOWN)
            return self._admit(resolved, match, method, headers, scope)
        except AuthError as exc:
            reason = self._refused(exc, resolved, method, raw_path, headers, scope)
            raise
        except StoreUnavailable:
            reason = "store_unavailable"
            raise
        finally:
            if reason is not None:
                self._decisions[reason].inc()
                self._seconds.observe(self._monotonic() - started)

    async def finish(
        self, lookup: Lookup, method: str, headers: Headers, scope: Mapping[str, Any]
    ) -> Resolved:
        """The rest of :meth:`authenticate` for a token the cache did not hold: the
        checksum, one Redis round trip, then the same decision as a hit."""
        reason = "ok"
        resolved: Resolved | None = None
        try:
            resolved = await self._miss(lookup.secret, lookup.digest, None)
            return self._admit(resolved, lookup.match, method, headers, scope)
        except AuthError as exc:
            reason = self._refused(exc, resolved, method, lookup.raw_path, headers, scope)
            raise
        except StoreUnavailable:
            reason = "store_unavailable"
            raise
        finally:
            self._decisions[reason].inc()
            self._seconds.observe(self._monotonic() - lookup.started)

    def _admit(
        self,
        resolved: Resolved,
        match: RouteMatch,
        method: str,
        headers: Headers,
        scope: Mapping[str, Any],
    ) -> Resolved:
        """Status, policy and allowlist for a resolved token; its last use noted."""
        now = self._clock()
        # The usual request: a live token on a rule whose allowing verdict it already
        # holds (no binding reads the request) — decide() would only confirm it.
        if (
            match.spec not in resolved.allowed
            or now >= resolved.live_until
            or match.denied is not None
            or match.also is not None
        ):
            self.decide(resolved, match, headers, now)
        allowlist = resolved.allowlist
        if allowlist is not None and not allowlist.permits(self._client_ip(scope)):
            raise ClientNotAllowed()
        recorder = self.recorder
        if recorder is not None and recorder.due(resolved.used_key, now):
            self._note_use(recorder, resolved, match, method, headers, scope, now)
        return resolved

    def _note_use(
        self,
        recorder: LastUsedRecorder,
        resolved: Resolved,
        match: RouteMatch,
        method: str,
        headers: Headers,
        scope: Mapping[str, Any],
        now: float,
    ) -> None:
        """Hand the recorder this use of the token (when :meth:`LastUsedRecorder.due`)."""
        used = LastUsed(now, method, match.path, self._client_ip(scope), _ua(headers))
        recorder.record(resolved.partition, resolved.used_key, used)

    def _refused(
        self,
        exc: AuthError,
        resolved: Resolved | None,
        method: str,
        raw_path: str,
        headers: Headers,
        scope: Mapping[str, Any],
    ) -> str:
        """The decision metric's reason for a refusal; a refused token is counted
        against its client and may trip the reuse tripwire."""
        if isinstance(exc, InvalidToken):
            self._failed(exc, resolved, method, raw_path, headers, self._client_ip(scope))
        return exc.reason if exc.reason in self._decisions else "invalid_token"

    def _refuse_blocked(self, client: str | None) -> None:
        """:class:`TooManyFailures` if ``client`` is blocked (the failure limit)."""
        assert self.limiter is not None  # a block table only comes with a limiter
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise TooManyFailures(wait)

    def _failed(
        self,
        exc: InvalidToken,
        resolved: Resolved | None,
        method: str,
        path: str,
        headers: Headers,
        client: str | None,
    ) -> None:
        """A presented token did not authenticate: count it against the client (the
        failure limit) and, for a dead secret, trip the reuse tripwire."""
        if self.limiter is not None:
            self.limiter.failed(client)
        tripwire = self.tripwire
        if tripwire is None or exc.reason not in REUSE_EVENTS:
            return
        if isinstance(exc, _Dead):
            stone = exc.stone
            token_id, org_id, user_id = stone.token_id, stone.org_id, stone.user_id
        elif resolved is not None:
            token = resolved.token
            token_id, org_id, user_id = token.id, token.org_id, token.user_key and token.owner_id
        else:
            return
        tripwire.presented(
            exc.reason,
            token_id=token_id,
            org_id=org_id,
            user_id=user_id,
            method=method,
            path=path.split("?", 1)[0],
            ip=client,
            user_agent=_ua(headers),
        )

    # -- the steps, each usable on its own --------------------------------------------

    def route(self, method: str, raw_path: str) -> RouteMatch:
        match = self.policies.current.route(method, raw_path)
        if match.denied is not None:
            _refuse_early(match)
        return match

    @staticmethod
    def credentials(headers: Headers) -> str:
        return bearer_token(headers)

    def well_formed(self, secret: str) -> str:
        if not self.token_format.is_well_formed(secret):
            raise InvalidToken(_UNKNOWN)
        return secret

    def digest(self, secret: str) -> bytes:
        return self._digest_of(secret.encode("ascii", "surrogateescape"))

    async def resolve(self, secret: str, *, fresh: bool = False) -> Resolved:
        """The lookup step: the token ``secret`` names, or :class:`InvalidToken` (one
        answer for unknown and malformed) / :class:`StoreUnavailable`.

        The cache is probed before the checksum: a digest in the positive cache proves
        the secret is a real token, so the CRC can only pass. Anything else is checked
        before Redis is asked (no Redis call for typos and guesses). ``fresh`` reads past
        the cache and caches nothing."""
        digest = self.digest(secret)
        slot = None if fresh else self.cache.get(digest, self._monotonic())
        if slot is not None and slot.value is not None:
            self._hits.inc()
            return slot.value
        return await self._miss(secret, digest, slot, fresh=fresh)

    async def identify(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        *,
        now: float | None = None,
        fresh: bool = False,
        client: str | None = None,
        method: str = "GET",
        path: str = "/",
    ) -> Resolved:
        """Who is calling, with no route to decide: credentials → lookup → status
        (revoked, expired, owner disabled: :class:`InvalidToken` with its reason) → the
        token's IP allowlist against ``client``. The management API's caller resolution
        (``fresh=True``), under the same failure limit and tripwire as the data plane."""
        raw = list(headers)
        if self._blocked:
            self._refuse_blocked(client)
        resolved: Resolved | None = None
        try:
            resolved = await self.resolve(bearer_token(raw), fresh=fresh)
            resolved.check(self._clock() if now is None else now)
        except InvalidToken as exc:
            self._failed(exc, resolved, method, path, raw, client)
            raise
        if resolved.allowlist is not None and not resolved.allowlist.permits(client):
            raise ClientNotAllowed()
        return resolved

    async def _miss(
        self, secret: str, digest: bytes, slot: Slot[Resolved] | None, *, fresh: bool = False
    ) -> Resolved:
        """The lookup past a positive hit: a negative entry, or the checksum and then
        one Redis round trip — the only read of the store and decode of its records."""
        if slot is not None:  # "no token has this digest", cached
            self._hits.inc()
            raise InvalidToken(_UNKNOWN)
        token_format = self.token_format
        if not self.external_tokens or token_format.owns(secret):
            self.well_formed(secret)
            previous = token_format.previous_digest(secret)
            partition = token_format.partition(secret)
        elif plausible(secret):
            # A token issued elsewhere: no checksum to test, and the partition its
            # SHA-256 names forwards to its org's (middleware.external).
            sha256 = sha256_of(secret)
            previous = token_format.previous_external_digest(sha256)
            partition = partition_of_sha256(sha256)
        else:
            raise InvalidToken(_UNKNOWN)
        if not fresh:
            self._misses.inc()
        return await self._fetch(digest, partition, previous, fresh=fresh)

    def locate(self, secret: str) -> tuple[bytes, int]:
        """Where ``secret``'s record is looked up: its digest and the partition the lookup
        starts in. For a caller that keeps a handle on a token without its secret — the
        console's server-side session (issue 15) — and reads it later with :meth:`recall`."""
        if not self.external_tokens or self.token_format.owns(secret):
            self.well_formed(secret)
            return self.digest(secret), self.token_format.partition(secret)
        if not plausible(secret):
            raise InvalidToken(_UNKNOWN)
        return self.digest(secret), partition_of_sha256(sha256_of(secret))

    async def recall(self, digest: bytes, partition: int, *, client: str | None = None) -> Resolved:
        """The token that a digest from :meth:`locate` names now, read fresh, with the checks of
        :meth:`identify` (status, grace, IP allowlist) but not its failure limit: nobody
        guesses a digest that the server keeps itself. A deleted token is unknown."""
        resolved = await self._fetch(digest, partition, None, fresh=True)
        resolved.check(self._clock())
        if resolved.allowlist is not None and not resolved.allowlist.permits(client):
            raise ClientNotAllowed()
        return resolved

    async def _fetch(
        self, digest: bytes, partition: int, previous: bytes | None, *, fresh: bool
    ) -> Resolved:
        """The one Redis round trip of a miss and the decode of what it found."""
        cache = self.cache
        epoch = cache.epoch
        try:
            if self._deadline is None:
                found = await self.store.lookup(digest, partition, previous)
            else:
                # One deadline for the whole lookup: redis-py's socket timeout applies per
                # read, and a reconnect's handshake waits it out again, so a stopped or
                # black-holed store would cost two timeouts (issue 9: ~1 s, not ~2 s).
                async with asyncio.timeout(self._deadline):
                    found = await self.store.lookup(digest, partition, previous)
        except StoreUnavailable:
            self._lookup_errors.inc()
            raise
        except Exception as exc:  # any other Redis failure: 503 too, never a 200
            self._lookup_errors.inc()
            raise StoreUnavailable(f"token lookup failed: {exc.__class__.__name__}") from exc
        if found is None:
            if not fresh:
                cache.put_negative(digest, epoch, self._monotonic())
            raise InvalidToken(_UNKNOWN)
        if isinstance(found, Buried):
            # Not cached: each presentation is reported (the tripwire limits the events).
            raise _Dead(Tombstone.decode(found.tombstone))
        token = Token.decode(found.record)
        matched = previous if found.previous_pepper and previous is not None else digest
        if matched == token.digest:
            via_previous = False
        elif token.previous is not None and matched == token.previous.digest:
            via_previous = True
        else:  # an index entry the record does not name: never written together
            raise InvalidToken(_UNKNOWN)
        owner = User.decode(found.user) if found.user is not None else None
        org = Org.decode(found.org) if found.org is not None else None
        resolved = Resolved(
            token, owner, self._clock(), org, previous=via_previous, errors=self.responses
        )
        if found.previous_pepper:
            # Found under the previous pepper: move it to the current one, atomically and
            # off the request's path. Not cached meanwhile — invalidations name the
            # record's digests, and this one is not among them yet.
            self._reindex(token, matched, digest)
        elif not fresh:
            cache.put(digest, resolved, token.user_key, epoch, self._monotonic())
        return resolved

    def _reindex(self, token: Token, old: bytes, new: bytes) -> None:
        if token.id in self._reindexing or len(self._reindexing) >= _MAX_REINDEX:
            return
        task = asyncio.create_task(self._reindex_one(token, old, new), name="patgate-reindex")
        self._reindexing[token.id] = task
        task.add_done_callback(lambda _t: self._reindexing.pop(token.id, None))

    async def _reindex_one(self, token: Token, old: bytes, new: bytes) -> None:
        """Re-index ``token`` from the previous pepper's digest ``old`` to the current
        one's: one compare-and-set commit (a concurrent revoke or regenerate wins, and
        the next presentation tries again)."""
        pepper_id = self.token_format.pepper_id
        if token.digest == old:
            updated = token.evolve(digest=new, pepper_id=pepper_id)
        else:
            assert token.previous is not None
            moved = Previous(new, token.previous.prefix, token.previous.until, pepper_id)
            updated = token.evolve(previous=moved)
        plan = self.store.plan(token.org_id)
        plan.put_token(token, updated)
        plan.invalidate_token(old)
        plan.invalidate_token(new)
        try:
            if token.forward_from is not None and token.digest == old:
                await self._move_forward(token.forward_from, token.org_id, old, new)
            await self.store.commit(plan)
        except (StaleWrite, PatgateError, Exception):  # advisory: tried again next time
            self._lookup_errors.inc()
            return
        self._reindexed.inc()

    async def _move_forward(self, at: int, org_id: str, old: bytes, new: bytes) -> None:
        """An external token's forward follows its digest to the current pepper
        (middleware.external). First, so a failure in between heals itself: the new
        forward leads to the record still under the old digest, found as previous, and
        the next presentation re-indexes it."""
        home = partition_of_org(org_id)
        wanted = forward_value(home).encode()
        if await self.store.index_entry(at, new) == wanted:
            return
        plan = self.store.plan_partition(at)
        if await self.store.index_entry(at, old) == wanted:
            plan.unforward_digest(old, home)
        plan.forward_digest(new, home, None)
        await self.store.commit(plan)

    async def aclose(self) -> None:
        """Let re-index writes in flight finish (tasks of :meth:`_reindex`)."""
        tasks = list(self._reindexing.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.tripwire is not None:
            await self.tripwire.aclose()

    def decide(
        self, resolved: Resolved, match: RouteMatch, headers: Headers, now: float
    ) -> Identity:
        """Token status on every call (expiry too), then the policy for this route."""
        identity = resolved.identity
        if now >= resolved.live_until:
            resolved.check(now)
        if match.denied == "no_rule":
            raise InsufficientScope("no policy rule allows this request", reason="no_rule")
        spec = match.spec
        if (
            spec is not None
            and match.denied is None
            and match.also is None
            and spec.own is None
            and spec.workspace_param is None
            and spec.workspace_header is None
        ):
            # No binding reads the request: the verdict is the token's and the rule's
            # alone, kept on the cached token (issue 16). A reloaded policy has new rule
            # objects, which simply miss; the dict is bounded.
            verdicts = resolved.verdicts
            decision = verdicts.get(spec)
            if decision is None:
                decision = self.policies.current.authorize(
                    match, identity, None, scopes=resolved.scopes
                )
                if len(verdicts) < _MAX_VERDICTS:
                    verdicts[spec] = decision
                    if decision.allowed:
                        resolved.allowed.add(spec)
        else:
            decision = self.policies.current.authorize(
                match, identity, _HeaderView(headers), scopes=resolved.scopes
            )
        if not decision.allowed:
            raise _policy_error(decision.reason, decision.missing_scope)
        return identity


def _refuse_early(match: RouteMatch) -> None:
    """Refuse a request its route denies before any credential is read; a ``no_rule``
    denial waits for the token (``decide``: a 401 beats a 403)."""
    if match.denied == "bad_path":
        raise InvalidRequest(match.detail or "malformed or ambiguous path", reason="bad_path")
    if match.denied == "method_not_allowed":
        # TRACE/CONNECT no rule names: 405 before authentication (policies/engine.py).
        raise MethodNotAllowed(match.detail or "method not allowed")


def _outcome(reason: str) -> str:
    if reason in ("ok", "public"):
        return "allow"
    return "error" if reason == "store_unavailable" else "deny"


def _policy_error(reason: str, missing_scope: str | None) -> AuthError:
    # Finer policy reasons (own, workspace) count as insufficient_scope unless the metric
    # knows them.
    metric = reason if reason in DECISION_REASONS else "insufficient_scope"
    if reason == "workspace":
        return InsufficientScope("the token is not valid for this workspace", reason=metric)
    if reason == "no_rule":
        return InsufficientScope("no policy rule allows this request", reason=metric)
    return InsufficientScope(
        "the token lacks a scope this route requires", scope=missing_scope, reason=metric
    )
