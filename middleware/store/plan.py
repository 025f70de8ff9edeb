"""What one atomic change does: a :class:`Plan`, built in Python and applied by the
``COMMIT`` script (:mod:`.scripts`) in one round trip.

The plan's named operations are the only writers of key names and of the pub/sub wire
format (issue 10: a store owns its wire formats). Invalidation messages on the channel:

==============  ==========================================  ================================
message         written by                                  every process drops
==============  ==========================================  ================================
``t <hex>``     :meth:`Plan.invalidate_token`               the cached answer for the digest
``u <org/id>``  :meth:`Plan.invalidate_user`                the cached tokens of that user
``o <org>``     :meth:`Plan.invalidate_org`                 everything (a full flush)
``b <c> <ms>``  the ``COUNT`` script (failed-auth limit)     nothing; blocks client ``c``
                                                            until ``ms`` (epoch millis)
==============  ==========================================  ================================

Each goes out on the channel of the partition the plan writes (``Keys.channel``).
The ``COMMIT`` script stamps each one as it publishes it: ``<message> <position> <us>``,
e.g. ``t 9f86…08 1042 1764626051123456``. The position counts the partition's
invalidations (an INCR of ``Keys.position`` per message, so it increases by one each);
``us`` is the commit time, the server's ``TIME`` in microseconds since the epoch. Every
process reads them with :func:`parse_message`, which also accepts an unstamped message
(the format before issue 11) and treats anything it does not recognise as a full flush.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import msgpack

from patgate.middleware.keys import (
    PARTITIONS,
    PREVIOUS_SUFFIX,
    Keys,
    expiry_entry,
    partition_of_org,
)
from patgate.middleware.records import Org, Token, Tombstone, User

__all__ = [
    "BLOCK_PREFIX",
    "TOKEN_PREFIX",
    "USER_PREFIX",
    "Invalidation",
    "Plan",
    "audit_event",
    "forward_target",
    "forward_value",
    "forwarded",
    "org_message",
    "parse_message",
    "stamp",
    "token_message",
    "user_message",
]

#: the wire prefixes of the invalidation messages this module writes and
#: :mod:`patgate.middleware.invalidation` reads; any other message is a full flush.
TOKEN_PREFIX = "t "
USER_PREFIX = "u "
BLOCK_PREFIX = "b "


def token_message(digest: bytes) -> str:
    """The invalidation message for one token digest."""
    return TOKEN_PREFIX + digest.hex()


def user_message(user_key: str) -> str:
    """The invalidation message for every token of one user (``<org>/<id>``)."""
    return USER_PREFIX + user_key


def org_message(org_id: str) -> str:
    """The invalidation message for an org's grant catalogue: a full flush."""
    return "o " + org_id


def stamp(message: str, position: int, committed_us: int) -> str:
    """``message`` as the ``COMMIT`` script publishes it (the script does this in Lua;
    this is its reference, for tests and tools)."""
    return f"{message} {position} {committed_us}"


class Invalidation(NamedTuple):
    """One parsed invalidation message."""

    kind: Literal["token", "owner", "flush", "block"]
    #: the token digest (``token``), else empty.
    digest: bytes = b""
    #: the user key ``<org>/<id>`` (``owner``), or the blocked client (``block``).
    owner: str = ""
    #: the stamp, None on an unstamped message.
    position: int | None = None
    committed_us: int | None = None
    #: ``block``: until when, in milliseconds since the epoch (server clock).
    until_ms: int = 0


_TOKEN = TOKEN_PREFIX.encode()
_USER = USER_PREFIX.encode()
_BLOCK = BLOCK_PREFIX.encode()


def _split_stamp(data: bytes) -> tuple[bytes, int | None, int | None]:
    # Ids never hold a space (gateway.lifecycle.inputs), so two trailing all-digit words
    # can only be a stamp; an unstamped message keeps its body whole.
    parts = data.rsplit(b" ", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1]), int(parts[2])
    return data, None, None


def parse_message(data: bytes) -> Invalidation:
    """Read one message from the channel: stamped or not; malformed ones are a flush."""
    if data.startswith(_BLOCK):
        # Never stamped (the COUNT script publishes it, not COMMIT): not an invalidation.
        parts = data.split(b" ")
        if len(parts) == 3 and parts[1] and parts[2].isdigit():
            client = parts[1].decode("ascii", "replace")
            return Invalidation("block", b"", client, None, None, int(parts[2]))
        return Invalidation("flush")
    body, position, committed_us = _split_stamp(data)
    if body.startswith(_TOKEN):
        try:
            digest = bytes.fromhex(body[len(_TOKEN) :].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            digest = b""
        if len(digest) == 32:
            return Invalidation("token", digest, "", position, committed_us)
    elif body.startswith(_USER) and len(body) > len(_USER):
        owner = body[len(_USER) :].decode("utf-8", "replace")
        return Invalidation("owner", b"", owner, position, committed_us)
    # When in doubt, forget everything (o <org>, *, or anything malformed).
    return Invalidation("flush", b"", "", position, committed_us)


def audit_event(
    kind: str,
    now: float,
    *,
    org_id: str | None,
    actor: dict[str, Any],
    ip: str | None,
    user_agent: str | None,
    token_id: str | None = None,
    user_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> str:
    """One audit event as the stream holds it (compact JSON, sorted keys): the one writer
    of the format, for the lifecycle (``gateway.lifecycle.audit.event_json``) and the
    data plane's reuse tripwire alike. Never a secret or a digest."""
    return json.dumps(
        {
            "type": kind,
            "at": now,
            "org_id": org_id,
            "actor": actor,
            "ip": ip,
            "user_agent": user_agent,
            "token_id": token_id,
            "user_id": user_id,
            "data": data or {},
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def _ms(t: float) -> int:
    return int(t * 1000)


#: how long an expiry index bucket outlives its hour: the reminders of that hour (the
#: expiry mail last) are found even by a worker that was down that long.
EXPIRY_BUCKET_SLACK_MS = 3 * 86_400_000


def _hour(token: Token | None) -> int | None:
    """The expiry index bucket of ``token``: the hour it expires in (None: never)."""
    if token is None or token.expires_at is None:
        return None
    return int(token.expires_at // 3600)


def forward_value(partition: int) -> str:
    """An index entry that sends the lookup on to ``partition`` (the LOOKUP script's
    ``{'>', partition}``; ``patgate migrate`` writes the same)."""
    return f"> {partition}"


def forward_target(entry: bytes | str) -> int | None:
    """The partition an index entry written by :func:`forward_value` names; None for any
    other entry (a token id)."""
    text = entry.decode("ascii", "replace") if isinstance(entry, bytes) else entry
    return forwarded(text[2:]) if text.startswith("> ") else None


def forwarded(raw: bytes | str) -> int | None:
    """The partition number after a forward's ``> ``, or None for a malformed one."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if not text.isdigit() or int(text) >= PARTITIONS:
        return None
    return int(text)


def _index_value(token: Token) -> str:
    # Only the id: LOOKUP reads the owner and the org from the record (scripts.py).
    return token.id


@dataclass(slots=True)
class Plan:
    """Everything one atomic change does; built in Python, applied by ``COMMIT``.

    A plan writes one partition, ``keys`` (one org's: :meth:`TokenStore.plan`), so
    ``COMMIT`` touches one slot; a record of an org in another partition is refused
    with ValueError before anything is sent."""

    keys: Keys
    checks: list[list[Any]] = field(default_factory=list)
    unique: list[list[Any]] = field(default_factory=list)
    hset: list[list[Any]] = field(default_factory=list)
    hdel: list[list[Any]] = field(default_factory=list)
    zadd: list[list[Any]] = field(default_factory=list)
    zrem: list[list[Any]] = field(default_factory=list)
    sadd: list[list[Any]] = field(default_factory=list)
    srem: list[list[Any]] = field(default_factory=list)
    #: ``[set, member, key]``: SREM once ``key`` is gone (checked after every other write).
    prune: list[list[Any]] = field(default_factory=list)
    #: ``[key, value, ttl ms]``: SET with a TTL (tombstones).
    setex: list[list[Any]] = field(default_factory=list)
    #: ``[key, bytes]``: APPEND (expiry index buckets).
    append: list[list[Any]] = field(default_factory=list)
    #: ``[key, unix ms]``: PEXPIREAT after the other writes (expiry index buckets).
    expire_at: list[list[Any]] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    #: audit events (JSON), appended to the stream in order.
    events: list[str] = field(default_factory=list)

    # -- named operations: invalidations and audit events ---------------------------------

    def invalidate_token(self, digest: bytes) -> None:
        """Every process drops its cached answer for this digest."""
        self.publish.append(token_message(digest))

    def invalidate_user(self, user_key: str) -> None:
        """Every process drops the cached tokens of this user (``<org>/<id>``)."""
        self.publish.append(user_message(user_key))

    def invalidate_org(self, org_id: str) -> None:
        """An org's grant catalogue changed: every process flushes its cache (rare; any
        message other than ``t``/``u`` is a full flush in :mod:`middleware.invalidation`)."""
        self.publish.append(org_message(org_id))

    def audit(self, event: str) -> None:
        """Append one audit event (JSON, ``gateway.lifecycle.audit.event_json``) to the
        stream, in order, in the same atomic commit as the change it records."""
        self.events.append(event)

    def expect(self, key: str, fld: str | bytes, value: bytes | None) -> None:
        """Abort with :class:`StaleWrite` unless ``key[fld]`` is still ``value`` (None: absent)."""
        self.checks.append([key, fld, b"" if value is None else value])

    def _here(self, org_id: str) -> Keys:
        if partition_of_org(org_id) != self.keys.partition:
            raise ValueError(f"org {org_id!r} does not live in partition {self.keys.partition}")
        return self.keys

    # -- tokens --------------------------------------------------------------------------

    def put_token(self, old: Token | None, new: Token) -> None:
        k = self._here(new.org_id)
        self.expect(k.tokens, new.id, None if old is None else old.encode())
        new_name = [k.owner_names(new.owner_key), k.name_member(new.name)]
        old_name = None if old is None else [k.owner_names(old.owner_key), k.name_member(old.name)]
        if new_name != old_name:
            self.unique.append(new_name)
            if old_name is not None:
                self.srem.append(old_name)
            self.sadd.append(new_name)
        # Index entries: one per digest the token answers to (its current secret, and its
        # previous one during a grace period), moved when a regeneration or a pepper
        # re-index changes them.
        before = () if old is None else old.secret_digests()
        after = new.secret_digests()
        for digest in before:
            if digest not in after:
                self.hdel.append([k.index, digest])
        for digest in after:
            if digest not in before:
                self.hset.append([k.index, digest, _index_value(new)])
        if old is not None and old.previous is not None and new.previous is None:
            self.hdel.append([k.last_used, old.id + PREVIOUS_SUFFIX])
        if old is None:
            self.zadd.append([k.owner_tokens(new.owner_key), _ms(new.created_at), new.id])
            self.sadd.append([k.org_owners(new.org_id), new.owner_key])
        self._index_expiry(old, new)
        self.hset.append([k.tokens, new.id, new.encode()])

    def _index_expiry(self, old: Token | None, new: Token) -> None:
        """Keep the expiry index (:meth:`Keys.expiring`): a token whose write gives it a
        new hour of expiry is appended to that hour's bucket (the old one keeps a stale
        entry the reader skips). A bucket outlives its hour by
        :data:`EXPIRY_BUCKET_SLACK_MS` (the reminders of that hour, even late)."""
        hour = _hour(new)
        entry = expiry_entry(new.id)
        if hour is None or hour == _hour(old) or entry is None:
            return
        k = self.keys
        key = k.expiring(hour)
        self.append.append([key, entry])
        self.zadd.append([k.expiry_hours, hour, str(hour)])
        self.expire_at.append([key, (hour + 1) * 3_600_000 + EXPIRY_BUCKET_SLACK_MS])

    def delete_token(self, old: Token) -> None:
        k = self._here(old.org_id)
        self.expect(k.tokens, old.id, old.encode())
        self.hdel.append([k.tokens, old.id])
        for digest in old.secret_digests():
            self.hdel.append([k.index, digest])
        self.hdel.append([k.last_used, old.id])
        # Always: a late last-used flush may have left one after the grace was ended.
        self.hdel.append([k.last_used, old.id + PREVIOUS_SUFFIX])
        self.srem.append([k.owner_names(old.owner_key), k.name_member(old.name)])
        own = k.owner_tokens(old.owner_key)
        self.zrem.append([own, old.id])
        # The owner stays listed in the org's admin view while it holds any token.
        self.prune.append([k.org_owners(old.org_id), old.owner_key, own])

    def forward_digest(self, digest: bytes, home: int, current: bytes | None) -> None:
        """In this plan's partition: point ``digest`` at partition ``home`` (an external
        token's forward, middleware.external), unless its entry is no longer ``current``."""
        k = self.keys
        self.expect(k.index, digest, current)
        self.hset.append([k.index, digest, forward_value(home)])

    def unforward_digest(self, digest: bytes, home: int) -> None:
        """Drop the forward :meth:`forward_digest` wrote, if it still names ``home``."""
        k = self.keys
        self.expect(k.index, digest, forward_value(home).encode())
        self.hdel.append([k.index, digest])

    def hold_active_count(self, org_id: str, version: bytes | None) -> None:
        """The org's token limits were checked against its tokens as of ``version``
        (:meth:`TokenStore.roster`): abort with :class:`StaleWrite` if another active
        token appeared since, and bump the version for the next writer (issue 13)."""
        k = self._here(org_id)
        self.expect(k.active_versions, org_id, version)
        self.hset.append([k.active_versions, org_id, b"%d" % (int(version or 0) + 1)])

    def tombstone(
        self, digest: bytes, stone: Tombstone, ttl: float, *, forwarded: bool = False
    ) -> None:
        """Remember for ``ttl`` seconds what the secret with ``digest`` was, once the
        index no longer holds it (a delete, a rotation out): the reuse tripwire.
        ``forwarded``: in the partition of a deleted external token's forward, where
        the data plane's lookup of its value starts (middleware.external)."""
        if ttl > 0:
            if not forwarded:
                self._here(stone.org_id)
            self.setex.append([self.keys.tombstone(digest), stone.encode(), int(ttl * 1000)])

    def move_last_used(self, token_id: str, used: bytes | None) -> None:
        """A regeneration with a grace period: the token's last use so far becomes its
        previous secret's, and the new secret starts unused."""
        k = self.keys
        self.hdel.append([k.last_used, token_id])
        # HDELs run before HSETs in COMMIT: an older previous secret's entry goes either way.
        self.hdel.append([k.last_used, token_id + PREVIOUS_SUFFIX])
        if used is not None:
            self.hset.append([k.last_used, token_id + PREVIOUS_SUFFIX, used])

    # -- users and orgs ------------------------------------------------------------------

    def put_user(self, old: User | None, new: User) -> None:
        k = self._here(new.org_id)
        self.expect(k.users, new.key, None if old is None else old.encode())
        self.hset.append([k.users, new.key, new.encode()])
        if old is None:
            self.zadd.append([k.org_users(new.org_id), _ms(new.created_at), new.id])

    def delete_user(self, old: User) -> None:
        k = self._here(old.org_id)
        self.expect(k.users, old.key, old.encode())
        self.hdel.append([k.users, old.key])
        self.zrem.append([k.org_users(old.org_id), old.id])

    def put_org(self, old: Org | None, new: Org) -> None:
        self.expect(self._here(new.id).orgs, new.id, None if old is None else old.encode())
        self.hset.append([self.keys.orgs, new.id, new.encode()])

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            name: value
            for name, value in (
                ("c", self.checks),
                ("u", self.unique),
                ("hs", self.hset),
                ("hd", self.hdel),
                ("za", self.zadd),
                ("zr", self.zrem),
                ("sa", self.sadd),
                ("sr", self.srem),
                ("sp", self.prune),
                ("sx", self.setex),
                ("ap", self.append),
                ("ea", self.expire_at),
                ("p", self.publish),
                ("e", self.events),
            )
            if value
        }
        if self.publish:
            body["q"] = self.keys.position  # the counter COMMIT stamps each message from
        return msgpack.packb(body, use_bin_type=False)  # type: ignore[no-any-return]
