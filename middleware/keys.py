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
    def names(self) -> str:
        """HASH ``<owner key>/<casefolded name>`` → token id: uniqueness per owner."""
        return self.base + "names"

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

    def owner_tokens(self, owner_key: str) -> str:
        """ZSET created-ms → token id, per owner (``u:<id>`` / ``o:<id>``)."""
        return self.base + "own:" + owner_key

    def org_tokens(self, org_id: str) -> str:
        """ZSET created-ms → token id, every token in an org (the admin view)."""
        return self.base + "orgtok:" + org_id

    def org_users(self, org_id: str) -> str:
        """ZSET created-ms → user id."""
        return self.base + "orgusr:" + org_id

    def name_field(self, owner_key: str, name: str) -> str:
        return owner_key + "/" + name.casefold()
