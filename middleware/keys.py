"""Redis key names: a namespace split into :data:`PARTITIONS` partitions (issue 11).

Every key of a partition carries the partition's Cluster hash tag, ``{<namespace>:<p>}``
with ``p`` as three hex digits, so each multi-key Lua script touches a single slot and
stays atomic on a Cluster, while the 1,024 partitions spread over every primary.

An org lives in exactly one partition, :func:`partition_of_org` (a hash of its id): its
org record, users, tokens, digest index entries, owner and name sets, last-used entries,
audit stream and invalidation channel. That is what keeps every lifecycle write one
script on one slot, and the data plane's cache miss one script too: the token's record,
its owner's user record and the org's catalogue sit in the same slot as the index entry.
The data plane finds the partition without asking Redis, from a hint the secret carries
(:meth:`patgate.middleware.tokenformat.TokenFormat.partition`); the lifecycle from the
org, or from the token id (:func:`partition_of_id`). docs/scale.md explains the choice
against a digest-partitioned index, and the price: one org's data shares one primary.

Data written before partitions (every key under ``{<namespace>}``) is
:attr:`Keyspace.legacy`; ``patgate migrate`` moves it (gateway.migrate).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

__all__ = [
    "PARTITIONS",
    "PREVIOUS_SUFFIX",
    "Keys",
    "Keyspace",
    "expiry_entry",
    "partition_of",
    "partition_of_id",
    "partition_of_org",
    "token_ids_of",
]

#: the last-used field of a token's previous secret: ``<token id>~p`` (issue 12).
PREVIOUS_SUFFIX = "~p"

#: how many partitions a namespace has. Fixed forever: secrets and token ids carry a
#: partition number, so changing it would move every key (``patgate migrate``).
PARTITIONS = 1024

_ID_PARTITION = re.compile(r"tok_([0-9a-f]{3})")


def partition_of_org(org_id: str) -> int:
    """The partition an org's keys live in: the first 32 bits of SHA-256, mod 1,024."""
    return int.from_bytes(hashlib.sha256(org_id.encode()).digest()[:4], "big") % PARTITIONS


def partition_of(text: str) -> int:
    """The partition of any other per-thing key (a client's failure counter): the same
    hash as :func:`partition_of_org`, so such keys spread over every primary too."""
    return partition_of_org(text)


_TOKEN_ID = re.compile(r"tok_([0-9a-f]{16})")


def expiry_entry(token_id: str) -> bytes | None:
    """A token id as the expiry index keeps it: the 8 bytes of its ``tok_<16 hex>``
    (every id patgate mints); None for an id of any other shape (not indexed)."""
    m = _TOKEN_ID.fullmatch(token_id)
    return bytes.fromhex(m.group(1)) if m else None


def token_ids_of(entries: bytes) -> list[str]:
    """The token ids of an expiry bucket (:func:`expiry_entry` concatenated), each once,
    in the order first appended."""
    ids = (f"tok_{entries[i : i + 8].hex()}" for i in range(0, len(entries) - 7, 8))
    return list(dict.fromkeys(ids))


def partition_of_id(token_id: str) -> int | None:
    """The partition a token id names (``tok_<3 hex><13 hex>``), or None for an id that
    has no such head. Ids minted before partitions have random hex there: they name a
    partition all the same, where ``patgate migrate`` left a forward to the real one."""
    head = _ID_PARTITION.match(token_id)
    return None if head is None else int(head.group(1), 16) % PARTITIONS


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one partition."""

    namespace: str = "patgate"
    partition: int = 0
    base: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.partition < PARTITIONS:
            raise ValueError(f"partition {self.partition} outside 0..{PARTITIONS - 1}")
        object.__setattr__(self, "base", f"{{{self.namespace}:{self.partition:03x}}}:")

    @property
    def tag(self) -> str:
        """The partition's hash tag content: what a Cluster hashes to pick the slot."""
        return self.base[1 : self.base.index("}")]

    @property
    def tokens(self) -> str:
        """HASH token id → msgpack record."""
        return self.base + "tok"

    @property
    def index(self) -> str:
        """HASH 32-byte digest → token id: the data plane's index.

        A value ``> <p>`` is a forward (``patgate migrate``): the token lives in
        partition ``p``, though its secret's hint names this one."""
        return self.base + "idx"

    @property
    def forwards(self) -> str:
        """HASH token id → partition, for migrated ids whose head names this partition
        while the token lives in its org's (``patgate migrate``)."""
        return self.base + "fwd"

    @property
    def last_used(self) -> str:
        """HASH token id → msgpack last-used; separate so recording never rewrites tokens."""
        return self.base + "lu"

    @property
    def users(self) -> str:
        """HASH ``<org>/<user id>`` → msgpack user record."""
        return self.base + "users"

    @property
    def orgs(self) -> str:
        """HASH org id → msgpack org record."""
        return self.base + "orgs"

    @property
    def active_versions(self) -> str:
        """HASH org id → counter, bumped by every change that can add an *active* token
        (a create, a regeneration of a revoked or expired one): the compare-and-set that
        keeps an org's token limits exact under concurrent creates (issue 13). One field
        per org, nothing per token."""
        return self.base + "actv"

    @property
    def events(self) -> str:
        """STREAM of the audit events of the partition's orgs."""
        return self.base + "events"

    @property
    def channel(self) -> str:
        """The partition's invalidation channel (a shard channel where supported: its
        name hashes to the partition's slot, so ``SPUBLISH`` from a script is legal)."""
        return self.base + "inval"

    @property
    def position(self) -> str:
        """STRING counter: the position of the last invalidation published on :attr:`channel`."""
        return self.position_of(self.channel)

    @staticmethod
    def position_of(channel: str) -> str:
        """The position counter of an invalidation channel, named after it (and so under
        the same hash tag: one slot on a Cluster). The COMMIT script INCRs it for every
        message it publishes; a subscriber that knows only its channel reads it with this."""
        return channel + ":pos"

    def tombstone(self, digest: bytes) -> str:
        """STRING with a TTL: what a deleted or rotated-out secret's digest was (issue 12,
        reuse tripwire), so presenting it again is recognised. Read by ``LOOKUP`` only
        when the index has no entry for the digest."""
        return self.base + "tomb:" + digest.hex()

    def failures(self, client: str) -> str:
        """STRING with a TTL of one window: failed authentications from a client (an
        address, or an IPv6 /64), summed over every process (middleware.limits)."""
        return self.base + "fail:" + client

    def reports(self, client: str) -> str:
        """STRING with a TTL of one window: leaked-credential reports from a client."""
        return self.base + "report:" + client

    def reuse(self, token_id: str) -> str:
        """STRING with a 60 s TTL: a reuse event for this token was written recently."""
        return self.base + "reuse:" + token_id

    def expiring(self, hour: int) -> str:
        """STRING of the tokens that expire within hour ``hour`` (Unix time // 3600):
        the expiry index the notification worker's reminders read (issue 14), instead of
        scanning every token. Append-only, 8 bytes per token id (:func:`expiry_entry`):
        a token regenerated or deleted stays in its old bucket until the bucket expires,
        and the reader skips it (its record says another expiry, or is gone). A set
        would cost ~40 bytes per token past 512 entries (a hashtable), against a budget
        of 400 bytes per token in all."""
        return self.base + "exp:" + str(hour)

    @property
    def expiry_hours(self) -> str:
        """ZSET of the hours that have an expiry bucket here (member and score: the
        hour), so a reminder pass finds the non-empty buckets of a range of hours with
        one command per partition. An hour stays after its bucket empties or expires;
        the reminder worker trims the past ones."""
        return self.base + "exph"

    def owner_tokens(self, owner_key: str) -> str:
        """ZSET created-ms → token id, per owner (``u:<org>/<id>`` / ``o:<id>``)."""
        return self.base + "own:" + owner_key

    def owner_names(self, owner_key: str) -> str:
        """SET of the owner's casefolded token names: name uniqueness per owner.

        One small set per owner rather than one global hash: with up to 128 short names
        Redis keeps it as a listpack, a few bytes per name instead of a hash entry."""
        return self.base + "nm:" + owner_key

    def org_owners(self, org_id: str) -> str:
        """SET of the owner keys (``u:<id>``, ``o:<id>``) holding tokens of an org.

        The org admin view merges these owners' ``own:`` zsets instead of keeping a
        per-org zset of every token (a large zset is a skiplist: ~80 B per token). It
        lists owners, not current users, so a removed user's revoked tokens still show;
        an owner leaves the set when its last token is deleted."""
        return self.base + "orgown:" + org_id

    def org_users(self, org_id: str) -> str:
        """ZSET created-ms → user id."""
        return self.base + "orgusr:" + org_id

    @staticmethod
    def name_member(name: str) -> str:
        """A name as the uniqueness set holds it: case-insensitive (``Deploy`` = ``deploy``)."""
        return name.casefold()


@dataclass(frozen=True, slots=True)
class Keyspace:
    """A namespace's partitions; built once per process (the :class:`Keys` are cached)."""

    namespace: str = "patgate"
    _parts: tuple[Keys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = tuple(Keys(self.namespace, p) for p in range(PARTITIONS))
        object.__setattr__(self, "_parts", parts)

    def partition(self, p: int) -> Keys:
        return self._parts[p]

    def for_org(self, org_id: str) -> Keys:
        return self._parts[partition_of_org(org_id)]

    @property
    def partitions(self) -> tuple[Keys, ...]:
        return self._parts

    @property
    def channels(self) -> list[str]:
        """Every partition's invalidation channel: what each process subscribes to."""
        return [k.channel for k in self._parts]

    @property
    def legacy(self) -> Keys:
        """The layout before partitions: every key under one tag, ``{<namespace>}:``, with
        the same names after it. Only ``patgate migrate`` reads it (and start-up, to say
        that it must run); its ``partition`` means nothing."""
        keys = Keys(self.namespace)
        object.__setattr__(keys, "base", "{" + self.namespace + "}:")
        return keys
