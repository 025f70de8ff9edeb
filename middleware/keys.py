"""Redis key names.

Every key lives under one namespace wrapped in a Cluster hash tag (``{patgate}:...``),
so each multi-key Lua script touches a single slot and stays atomic on Redis Cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str = "patgate"

    @property
    def base(self) -> str:
        return "{" + self.namespace + "}:"

    @property
    def tokens(self) -> str:
        """HASH token id → msgpack record."""
        return self.base + "tok"

    @property
    def index(self) -> str:
        """HASH 32-byte digest → token id: the data plane's lookup index."""
        return self.base + "idx"

    @property
    def last_used(self) -> str:
        """HASH token id → msgpack last-used; separate so recording never rewrites tokens."""
        return self.base + "lu"

    @property
    def users(self) -> str:
        return self.base + "users"

    @property
    def orgs(self) -> str:
        return self.base + "orgs"

    @property
    def events(self) -> str:
        """STREAM of audit events."""
        return self.base + "events"

    @property
    def channel(self) -> str:
        """Pub/sub channel for cache invalidations."""
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

    def owner_tokens(self, owner_key: str) -> str:
        """ZSET created-ms → token id, per owner (``u:<id>`` / ``o:<id>``)."""
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
