"""The admin view (issue 13): ``GET /v1/admin/tokens`` shows the org's active tokens by
default, ``?status=revoked|expired`` the others and ``?status=all`` every one; a
member's own list (``GET /v1/tokens``) still shows every status unless asked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.api._world import DAY, Api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def statuses(api: Api) -> dict[str, set[str]]:
    """Tokens of alice, bob and the org in each status; returns the ids by status."""

    async def create(who: str, name: str, **body: Any) -> str:
        r = await api.call("POST", "/v1/tokens", who, json={"name": name, **body})
        assert r.status_code == 201, r.text
        token_id: str = r.json()["id"]
        return token_id

    sync = await create("admin", "sync", owner={"type": "org"})
    live = {await create("alice", "ci"), sync}
    revoked = {await create("bob", "old"), await create("alice", "older")}
    for token_id in revoked:
        r = await api.call("POST", f"/v1/admin/tokens/{token_id}/revoke")
        assert r.status_code == 200, r.text
    expired = {await create("alice", "brief", expiration="1d")}
    api.clock.now += 2 * DAY
    callers = {api.ids[w] for w in ("admin", "alice", "bob")}  # 30 days by default
    return {"active": live | callers, "revoked": revoked, "expired": expired, "sync": {sync}}


async def _ids(api: Api, path: str, who: str = "admin", **params: Any) -> list[str]:
    r = await api.call("GET", path, who, params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    return [t["id"] for t in r.json()["items"]]


async def test_the_admin_view_defaults_to_active_tokens(
    api: Api, statuses: dict[str, set[str]]
) -> None:
    listed = await _ids(api, "/v1/admin/tokens")
    assert set(listed) == statuses["active"]
    assert len(listed) == len(statuses["active"])
    assert listed == await _ids(api, "/v1/admin/tokens", status="active")
    for status in ("revoked", "expired"):
        assert set(await _ids(api, "/v1/admin/tokens", status=status)) == statuses[status]
    everything = await _ids(api, "/v1/admin/tokens", status="all")
    assert set(everything) == statuses["active"] | statuses["revoked"] | statuses["expired"]
    # the other filters combine with the default
    assert set(await _ids(api, "/v1/admin/tokens", type="service")) == statuses["sync"]
    by_owner = await _ids(api, "/v1/admin/tokens", q="bob@acme")
    assert by_owner == [api.ids["bob"]]  # bob's revoked "old" only with a status
    assert len(await _ids(api, "/v1/admin/tokens", q="bob@acme", status="all")) == 2


async def test_the_default_holds_across_pages(api: Api, statuses: dict[str, set[str]]) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = await api.call("GET", "/v1/admin/tokens", params=params)
        assert r.status_code == 200, r.text
        seen += [t["id"] for t in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == await _ids(api, "/v1/admin/tokens")
    assert set(seen) == statuses["active"]


async def test_a_members_own_list_still_shows_every_status(
    api: Api, statuses: dict[str, set[str]]
) -> None:
    own = await _ids(api, "/v1/tokens", "alice")
    assert {"active", "revoked", "expired"} == {
        s for s in ("active", "revoked", "expired") if statuses[s] & set(own)
    }
    assert own == await _ids(api, "/v1/tokens", "alice", status="all")
    assert set(await _ids(api, "/v1/tokens", "alice", status="active")) < set(own)


async def test_an_unknown_status_is_a_400_naming_all(api: Api) -> None:
    for path in ("/v1/admin/tokens", "/v1/tokens"):
        r = await api.call("GET", path, params={"status": "dead"})
        assert r.status_code == 400
        assert r.json()["error"] == "validation"
        assert "all" in r.json()["detail"]
