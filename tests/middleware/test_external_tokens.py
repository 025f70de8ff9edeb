"""Tokens issued elsewhere (issue 13): registered by their value or its SHA-256, they
validate on the real data plane like patgate's own — scopes, expiry, revocation within
the invalidation's milliseconds, deletion with a tombstone, pepper rotation — and their
raw value is never stored anywhere.

Real service layer, real Authenticators with caches and invalidation subscribers, on
standalone, Sentinel and Cluster (the forward is written to another slot)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest

from patgate.gateway.lifecycle import Owner, TokenService
from patgate.middleware.auth import Authenticator
from patgate.middleware.connect import StoreClient
from patgate.middleware.errors import (
    Conflict,
    Forbidden,
    LimitReached,
    Unprocessable,
    ValidationFailed,
)
from patgate.middleware.external import partition_of_sha256
from patgate.middleware.keys import partition_of_org
from patgate.middleware.records import Token
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from tests._topologies import ALL_BACKENDS
from tests.gateway.api._world import snapshot
from tests.gateway.lifecycle._world import World, admin, make_world

from ._plane import Plane, data_plane

BACKENDS = ALL_BACKENDS
pytestmark = pytest.mark.anyio

FMT = TokenFormat()


def _value(prefix: str = "gho_") -> str:
    """A value that lives in another partition than acme's (so it needs a forward)."""
    while True:
        value = prefix + secrets.token_urlsafe(27)
        sha = hashlib.sha256(value.encode()).digest()
        if partition_of_sha256(sha) != partition_of_org("acme"):
            return value


@dataclass
class Ext:
    w: World
    redis: StoreClient
    planes: Callable[..., AbstractAsyncContextManager[Plane]]
    stack: contextlib.AsyncExitStack

    async def plane(self, fmt: TokenFormat = FMT, **auth: Any) -> Plane:
        plane = await self.stack.enter_async_context(self.planes(fmt))
        if auth:
            plane.auth = Authenticator(
                plane.store,
                plane.cache,
                fmt,
                plane.auth.policies.current,
                plane.metrics,
                plane.recorder,
                clock=self.w.clock,
                **auth,
            )
        return plane

    async def register(self, value: str | None = None, **kw: Any) -> Token:
        body: dict[str, Any] = {
            "name": kw.pop("name", "ci-oauth"),
            "owner": Owner("user", "alice"),
            "scopes": ["threads:read"],
            "issuer": "github",
        }
        body.update(kw)
        if value is not None:
            body["value"] = value
        return await self.w.tokens.register(self.w.admin, **body)

    async def everything(self) -> bytes:
        """Every key name and value of the namespace, as one byte string."""
        stored = await snapshot(self.redis, self.w.store.keyspace.namespace)  # type: ignore[arg-type]
        return b"\n".join(_flat([list(stored.items())]))


def _flat(obj: Any) -> list[bytes]:
    if isinstance(obj, bytes):
        return [obj]
    if isinstance(obj, str):
        return [obj.encode()]
    if isinstance(obj, dict):
        return [b for item in obj.items() for b in _flat(item)]
    if isinstance(obj, list | tuple):
        return [b for item in obj for b in _flat(item)]
    return [str(obj).encode()]


@pytest.fixture
async def ext(store: TokenStore, redis_client: StoreClient, store_url: str) -> AsyncIterator[Ext]:
    w = await make_world(store)

    def planes(fmt: TokenFormat) -> AbstractAsyncContextManager[Plane]:
        return data_plane(store, fmt, w.clock, store_url)

    async with contextlib.AsyncExitStack() as stack:
        yield Ext(w, redis_client, planes, stack)


async def test_a_registered_value_validates_like_a_patgate_token(ext: Ext) -> None:
    value = _value()
    token = await ext.register(value)
    assert (token.type, token.issuer, token.prefix) == ("oauth", "github", value[:8])
    assert token.forward_from == partition_of_sha256(hashlib.sha256(value.encode()).digest())
    plane = await ext.plane()
    answer = await plane.call(value)
    assert answer.ok, answer
    assert answer.resolved is not None
    assert answer.resolved.identity.token_id == token.id
    assert answer.resolved.identity.scopes == frozenset({"threads:read"})
    # Cached like any token: the second request costs no lookup.
    lookups = plane.store.lookups
    assert (await plane.call(value)).ok
    assert plane.store.lookups == lookups
    # The policy applies: this route needs a scope the token lacks.
    assert (await plane.call(value, method="POST", path="/threads")).status == 403


async def test_registered_by_sha256_alone(ext: Ext) -> None:
    value = _value("glpat-")
    digest = hashlib.sha256(value.encode()).hexdigest().upper()
    token = await ext.register(sha256=digest, type="service", issuer="gitlab.example.com")
    assert (token.type, token.prefix) == ("service", "")
    plane = await ext.plane()
    assert (await plane.call(value)).ok
    assert (await plane.call(value + "x")).status == 401


async def test_revoke_and_delete_refuse_it_at_once(ext: Ext) -> None:
    value = _value()
    token = await ext.register(value)
    plane = await ext.plane()
    assert (await plane.call(value)).ok
    await ext.w.tokens.revoke(ext.w.admin, token.id)
    await plane.barrier()
    answer = await plane.call(value)
    assert (answer.status, answer.description) == (401, "token revoked")
    await ext.w.tokens.delete(ext.w.alice, token.id)  # its owner's to delete
    await plane.barrier()
    answer = await plane.call(value)
    assert answer.status == 401
    # The forward went with the token, leaving the tombstone where the lookup starts.
    assert token.forward_from is not None
    part = ext.w.store.keyspace.partition(token.forward_from)
    r: Any = ext.redis
    assert await r.hget(part.index, token.digest) is None
    assert await r.exists(part.tombstone(token.digest)) == 1
    # ... so the same value can be registered again, once deleted.
    again = await ext.register(value, name="again")
    assert (await plane.call(value)).ok
    assert again.id != token.id


async def test_the_raw_value_is_never_stored(ext: Ext) -> None:
    value = _value()
    token = await ext.register(value)
    plane = await ext.plane()
    assert (await plane.call(value, user_agent="ci")).ok
    await plane.recorder.flush()
    await ext.w.tokens.revoke(ext.w.admin, token.id)
    stored = await ext.everything()
    assert token.digest in stored  # the scan sees the index
    sha = hashlib.sha256(value.encode())
    for secret in (value.encode(), value[4:].encode(), sha.digest(), sha.hexdigest().encode()):
        assert secret not in stored
    for event in await ext.w.events():
        assert value not in json.dumps(event)


async def test_unknown_values_cost_one_lookup_then_none_and_odd_ones_none(ext: Ext) -> None:
    plane = await ext.plane()
    unknown = _value()
    lookups = plane.store.lookups
    assert (await plane.call(unknown)).description == "invalid or unknown token"
    assert plane.store.lookups == lookups + 1
    assert (await plane.call(unknown)).status == 401  # cached as unknown
    assert plane.store.lookups == lookups + 1
    for odd in ("short", "x" * 2000, "has%percent" * 3):
        assert (await plane.call(odd)).status == 401
    assert plane.store.lookups == lookups + 1  # nothing implausible reaches the store


async def test_with_external_tokens_off_only_patgate_secrets_are_looked_up(ext: Ext) -> None:
    value = _value()
    await ext.register(value)
    plane = await ext.plane(external_tokens=False)
    lookups = plane.store.lookups
    assert (await plane.call(value)).status == 401
    assert plane.store.lookups == lookups
    _, secret = await ext.w.tokens.create(ext.w.alice, name="own", scopes=["threads:read"])
    assert (await plane.call(secret)).ok


async def test_registration_input_and_rules(ext: Ext) -> None:
    w = ext.w
    value = _value()
    with pytest.raises(ValidationFailed, match="give one of them"):
        await ext.register()
    with pytest.raises(ValidationFailed, match="give one of them"):
        await ext.register(value, sha256="ab" * 32)
    with pytest.raises(ValidationFailed, match="value:"):
        await ext.register("too-short")
    for patgate_shaped in (FMT.generate(), "pat_" + "x" * 40):
        with pytest.raises(ValidationFailed, match="patgate's own prefix"):
            await ext.register(patgate_shaped)
    with pytest.raises(ValidationFailed, match="sha256:"):
        await ext.register(sha256="not-hex")
    with pytest.raises(ValidationFailed, match="issuer:"):
        await ext.register(value, issuer="has space")
    with pytest.raises(ValidationFailed, match="type:"):
        await ext.register(value, type="personal")
    with pytest.raises(Forbidden):  # members never register
        await w.tokens.register(w.alice, name="mine", value=value, scopes=["threads:read"])
    token = await ext.register(value)
    for again in ({"name": "dup"}, {"name": "dup", "owner": Owner("org", "acme")}):
        with pytest.raises(Conflict) as caught:
            await ext.register(value, **again)
        assert caught.value.code == "already_registered"
    with pytest.raises(Conflict) as caught:  # another org cannot claim it either
        await w.tokens.register(
            admin("eve", "other"), name="theirs", value=value, scopes=["threads:read"]
        )
    assert caught.value.code == "already_registered"
    with pytest.raises(Unprocessable) as refused:
        await w.tokens.regenerate(w.alice, token.id)
    assert refused.value.code == "external_token"
    # Edits are a token's like any other.
    edited = await w.tokens.update(w.alice, token.id, {"name": "renamed"})
    assert (edited.name, edited.issuer) == ("renamed", "github")


async def test_registrations_count_against_the_org_limit(ext: Ext) -> None:
    await ext.w.directory.put_org(ext.w.system, "acme", {"token_limit": 1})
    await ext.register(_value())
    refused = _value()
    with pytest.raises(LimitReached) as caught:
        await ext.register(refused, name="second")
    assert caught.value.code == "org_token_limit"
    # The refused registration's forward was taken back: nothing of it is left.
    sha = hashlib.sha256(refused.encode()).digest()
    part = ext.w.store.keyspace.partition(partition_of_sha256(sha))
    r: Any = ext.redis
    assert await r.hget(part.index, FMT.external_digest(sha)) is None


async def test_a_pepper_rotation_moves_the_forward_with_the_digest(ext: Ext) -> None:
    old, new = TokenFormat(pepper=b"pepper-one"), TokenFormat(pepper=b"pepper-two")
    rotating = TokenFormat(pepper=b"pepper-two", previous_pepper=b"pepper-one")
    ext.w.tokens = TokenService(ext.w.store, old, clock=ext.w.clock)
    value = _value()
    token = await ext.register(value)
    plane = await ext.plane(rotating)
    assert (await plane.call(value)).ok
    await plane.settle()
    assert plane.reindexed() == 1
    stored = await ext.w.store.get_token(token.id)
    sha = hashlib.sha256(value.encode()).digest()
    assert stored is not None
    assert stored.digest == new.external_digest(sha) != token.digest
    # Once the previous pepper is dropped, the value still works.
    after = await ext.plane(new)
    assert (await after.call(value)).ok


async def test_the_admin_view_lists_and_filters_them_by_type(ext: Ext) -> None:
    from patgate.gateway.lifecycle import Filters

    await ext.register(_value())
    await ext.register(_value(), name="svc", type="service", owner=Owner("org", "acme"))
    await ext.w.tokens.create(ext.w.alice, name="mine")
    page = await ext.w.tokens.list_org(ext.w.admin, "acme", Filters.parse(type="oauth"))
    assert [(t.name, t.issuer) for t in page.items] == [("ci-oauth", "github")]
    page = await ext.w.tokens.list_org(ext.w.admin, "acme", Filters.parse())
    assert {t.name for t in page.items} == {"ci-oauth", "svc", "mine"}
    shown = {t.name: t.to_json(ext.w.clock()) for t in page.items}
    assert shown["svc"]["external"] is True
    assert shown["mine"]["external"] is False
