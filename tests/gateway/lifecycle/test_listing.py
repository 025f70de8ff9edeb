"""Token listings: status/type/q filters, the admin view, cursor pagination."""

from __future__ import annotations

import base64
import random

import pytest

from patgate.gateway.lifecycle import Actor, Directory, Filters, Owner
from patgate.gateway.lifecycle.listing import encode_cursor
from patgate.middleware.errors import Forbidden, ValidationFailed
from patgate.middleware.records import Token
from patgate.middleware.store import TokenStore
from tests.gateway._clock import T0
from tests.gateway.lifecycle._world import World, make_world
from tests.middleware._tokens import MEMBER_SCOPES

DAY = 86_400.0


@pytest.fixture
async def w(store: TokenStore) -> World:
    """Emails the owner search matches, and room for many tokens per owner."""
    return await make_world(
        store,
        users=(
            ("root", "acme", "admin", "root@example.org", "Root"),
            ("alice", "acme", "member", "alice.liddell@wonder.land", "Alice"),
            ("bob", "acme", "member", "bob@builder.io", "Bob"),
        ),
        orgs={"acme": {"name": "Acme", "token_limit": 200, "member_scopes": MEMBER_SCOPES}},
    )


def _names(tokens: list[Token]) -> list[str]:
    return [t.name for t in tokens]


async def _mixed(w: World) -> None:
    """alice: active 'deploy', revoked 'old-ci', expired 'tmp'; bob: 'Deploy-B';
    org: service 'sync'; root: oauth 'app'."""
    await w.tokens.create(w.alice, name="tmp", expiration="1d")
    w.clock.now += 1
    old, _ = await w.tokens.create(w.alice, name="old-ci", expiration="never")
    await w.tokens.revoke(w.alice, old.id)
    w.clock.now += 1
    await w.tokens.create(w.alice, name="deploy", expiration="90d")
    w.clock.now += 1
    await w.tokens.create(w.bob, name="Deploy-B")
    w.clock.now += 1
    await w.tokens.create(w.admin, name="sync", owner=Owner("org", "acme"))
    w.clock.now += 1
    await w.tokens.create(w.admin, name="app", type="oauth")
    w.clock.now += 2 * DAY


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, ["deploy", "old-ci", "tmp"]),
        ("active", ["deploy"]),
        ("revoked", ["old-ci"]),
        ("expired", ["tmp"]),
    ],
)
async def test_own_listing_by_status(w: World, status: str | None, expected: list[str]) -> None:
    await _mixed(w)
    page = await w.tokens.list_own(w.alice, Filters.parse(status=status))
    assert _names(page.items) == expected
    assert page.next_cursor is None
    assert all(t.owner_id == "alice" for t in page.items)


@pytest.mark.anyio
async def test_expiry_is_computed_at_read_time(w: World) -> None:
    await w.tokens.create(w.alice, name="short", expiration="1d")
    active = Filters.parse(status="active")
    assert _names((await w.tokens.list_own(w.alice, active)).items) == ["short"]
    w.clock.now += DAY
    assert (await w.tokens.list_own(w.alice, active)).items == []
    expired = await w.tokens.list_own(w.alice, Filters.parse(status="expired"))
    assert _names(expired.items) == ["short"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("DEPLOY", ["deploy"]),
        ("ci", ["old-ci"]),
        ("P", ["deploy", "tmp"]),
        ("zzz", []),
        ("alice", ["deploy", "old-ci", "tmp"]),
    ],
)
async def test_own_listing_search(w: World, q: str, expected: list[str]) -> None:
    await _mixed(w)
    page = await w.tokens.list_own(w.alice, Filters.parse(q=q))
    assert _names(page.items) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["app", "sync", "Deploy-B", "deploy", "old-ci", "tmp"]),
        ({"q": "deploy"}, ["Deploy-B", "deploy"]),
        ({"q": "wonder.land"}, ["deploy", "old-ci", "tmp"]),  # owner email
        ({"q": "BUILDER"}, ["Deploy-B"]),
        ({"q": "Bob"}, ["Deploy-B"]),  # owner name
        ({"q": "acme"}, ["sync"]),  # org-owned: the owner id
        ({"type": "service"}, ["sync"]),
        ({"type": "oauth"}, ["app"]),
        ({"type": "personal"}, ["Deploy-B", "deploy", "old-ci", "tmp"]),
        ({"type": "personal", "status": "active"}, ["Deploy-B", "deploy"]),
        ({"status": "revoked", "q": "old"}, ["old-ci"]),
    ],
)
async def test_admin_listing(w: World, filters: dict[str, str], expected: list[str]) -> None:
    await _mixed(w)
    page = await w.tokens.list_org(w.admin, "acme", Filters.parse(**filters))
    assert _names(page.items) == expected


@pytest.mark.anyio
async def test_admin_listing_needs_admin_of_that_org(w: World) -> None:
    with pytest.raises(Forbidden):
        await w.tokens.list_org(w.alice, "acme", Filters())
    with pytest.raises(Forbidden):
        await w.tokens.list_org(w.admin, "other", Filters())
    reader = Actor("user", "alice", "acme", "member", frozenset({"tokens:write:own"}))
    with pytest.raises(Forbidden):
        await w.tokens.list_own(reader, Filters())


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [1, 3, 7, 25, 26])
async def test_pagination_with_ties_has_no_duplicates_and_no_gaps(w: World, limit: int) -> None:
    # every token created on the same millisecond: the cursor must break ties by id
    created = [(await w.tokens.create(w.alice, name=f"t{i:02d}"))[0] for i in range(25)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await w.tokens.list_own(w.alice, Filters.parse(limit=limit, cursor=cursor))
        assert len(page.items) <= limit
        seen += [t.id for t in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(t.id for t in created)
    assert len(seen) == len(set(seen)) == 25
    assert seen == sorted(seen, reverse=True)
    assert pages <= 25 // limit + 2


@pytest.mark.anyio
async def test_pagination_newest_first_with_filter_across_pages(w: World) -> None:
    ids = []
    for i in range(30):
        w.clock.now += 0.0004  # several tokens per millisecond, some alone
        token, _ = await w.tokens.create(w.alice, name=f"t{i:02d}")
        if i % 3 == 0:
            await w.tokens.revoke(w.alice, token.id)
            ids.append(token.id)
    seen: list[str] = []
    cursor = None
    while True:
        page = await w.tokens.list_own(
            w.alice, Filters.parse(status="revoked", limit=4, cursor=cursor)
        )
        seen += [t.id for t in page.items]
        assert all(t.status(w.clock()) == "revoked" for t in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids))


@pytest.mark.anyio
async def test_deleting_during_pagination_skips_nothing_else(w: World) -> None:
    created = [(await w.tokens.create(w.alice, name=f"t{i}"))[0] for i in range(9)]
    first = await w.tokens.list_own(w.alice, Filters.parse(limit=3))
    # delete the cursor's own token and the next one: the rest still follows
    await w.tokens.delete(w.alice, first.items[-1].id)
    newest_first = sorted(created, key=lambda t: t.id, reverse=True)
    await w.tokens.delete(w.alice, newest_first[3].id)
    rest = await w.tokens.list_own(w.alice, Filters.parse(limit=50, cursor=first.next_cursor))
    assert [t.id for t in rest.items] == [t.id for t in newest_first[4:]]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "live"},
        {"type": "bot"},
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"cursor": "!!!"},
        {"cursor": "bm9jb2xvbg"},  # "nocolon"
        {"cursor": base64.urlsafe_b64encode(b"abc:tok_1").decode()},
        {"cursor": base64.urlsafe_b64encode(b"\xff\xfe:x").decode()},
        {"cursor": "é"},
    ],
)
def test_bad_filters_are_validation_errors(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed):
        Filters.parse(**kwargs)


def test_filters_defaults_and_cursor_round_trip() -> None:
    f = Filters.parse(limit="200", q="", cursor=encode_cursor(123, "tok_a"))
    assert (f.limit, f.q, f.status, f.type) == (200, None, None, None)
    assert Filters.parse().limit == 50


def _newest_first(tokens: list[Token]) -> list[str]:
    """The order of one zset read newest first: created millisecond, then id, descending."""
    return [t.id for t in sorted(tokens, key=lambda t: (int(t.created_at * 1000), t.id))][::-1]


async def _admin_pages(w: World, limit: int, **filters: str) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        f = Filters.parse(limit=limit, cursor=cursor, **filters)
        page = await w.tokens.list_org(w.admin, "acme", f)
        assert len(page.items) <= limit
        seen += [t.id for t in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return seen, pages


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [1, 7, 50, 200])
async def test_admin_pagination_merges_every_owner_like_one_zset(w: World, limit: int) -> None:
    # More tokens than one read fetches per owner (alice), ties on one millisecond
    # across owners, and owners with few tokens: the merged admin view must page
    # exactly like a single zset of the org's tokens, with no gap and no duplicate.
    actors = [w.alice] * 5 + [w.bob, w.admin]
    created: list[Token] = []
    for i in range(210):
        if i % 4 == 0:
            w.clock.now += 0.0004  # several tokens per millisecond, some alone
        actor, owner = actors[i % len(actors)], None
        if i % 10 == 9:
            actor, owner = w.admin, Owner("org", "acme")
        token, _ = await w.tokens.create(actor, name=f"t{i:03d}", owner=owner)
        if i % 6 == 0:
            await w.tokens.revoke(w.admin, token.id)
            token = token.evolve(revoked_at=w.clock.now)
        created.append(token)
    seen, pages = await _admin_pages(w, limit)
    assert seen == _newest_first(created)
    assert pages <= len(created) // limit + 2
    revoked, _ = await _admin_pages(w, limit, status="revoked")
    assert revoked == _newest_first([t for t in created if t.revoked_at is not None])


@pytest.mark.anyio
async def test_admin_view_lists_owners_not_users_and_forgets_emptied_owners(
    w: World,
) -> None:
    system = Actor.system()
    directory = Directory(w.store, clock=w.clock, default_org="acme")
    old, _ = await w.tokens.create(w.alice, name="before")
    w.clock.now += 1
    kept, _ = await w.tokens.create(w.bob, name="kept")
    dropped, _ = await w.tokens.create(w.bob, name="dropped")
    # alice is removed (her token stays, revoked) and her id reused in another org
    await directory.remove_user(system, "alice")
    await directory.put_org(system, "beta", {"name": "Beta"})
    await directory.put_user(system, "alice", {"org_id": "beta", "email": "a@beta.example"})
    beta_alice = Actor("user", "alice", "beta", "member", w.alice.scopes)
    w.clock.now += 1
    new, _ = await w.tokens.create(beta_alice, name="after")
    acme = await w.tokens.list_org(w.admin, "acme", Filters())
    assert [t.id for t in acme.items] == _newest_first([old, kept, dropped])
    assert acme.items[-1].status(w.clock()) == "revoked"
    beta_admin = Actor("user", "root", "beta", "admin", w.admin.scopes)
    beta = await w.tokens.list_org(beta_admin, "beta", Filters())
    assert [t.id for t in beta.items] == [new.id]
    keys = w.store.keys_for("acme")
    assert await w.store.org_owner_keys("acme") == ["u:acme/alice", "u:acme/bob"]
    await w.tokens.delete(w.bob, dropped.id)
    assert await w.store.org_owner_keys("acme") == ["u:acme/alice", "u:acme/bob"]
    await w.tokens.delete(w.bob, kept.id)
    assert await w.store.org_owner_keys("acme") == ["u:acme/alice"]
    assert await w.store.client.exists(keys.owner_names("u:acme/bob")) == 0
    assert [t.id for t in (await w.tokens.list_org(w.admin, "acme", Filters())).items] == [old.id]


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [3, 40])
async def test_admin_pagination_over_many_small_owners(w: World, limit: int) -> None:
    # 80 owners holding 0-13 tokens each, on a few shared milliseconds: the first read
    # takes only a few rows per owner, so many owners are re-read mid-page.
    rng = random.Random(limit)
    created: list[Token] = []
    plan = w.store.plan("acme")
    partition = plan.keys.partition
    for n in range(80):
        for k in range(rng.randrange(14)):
            at = T0 + rng.randrange(5) / 1000
            token = Token(
                id=f"tok_{partition:03x}{rng.getrandbits(52):013x}", name=f"t{k}", description="",
                owner_kind="user", owner_id=f"user{n:02d}", org_id="acme", type="personal",
                scopes=(), workspaces=None, expires_at=None, created_at=at,
                created_by=f"user{n:02d}", revoked_at=None, prefix="pat_x",
                digest=rng.randbytes(32), updated_at=at, issued_at=at,
            )  # fmt: skip
            plan.put_token(None, token)
            created.append(token)
    await w.store.commit(plan)
    seen, pages = await _admin_pages(w, limit)
    assert seen == _newest_first(created)
    assert pages <= len(created) // limit + 2
