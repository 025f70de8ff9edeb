"""Issue 9, item 6: no management answer tells an admin of one org whether a user or
token id exists in another org.

User ids are scoped per organization, so ``u1`` of org ``acme`` and ``u1`` of ``zeta``
are different users; tokens of other orgs are 404 like ids that never existed. Each
request below is made by zeta's admin twice — once naming an id that exists in acme,
once an id that exists nowhere — and the two answers must be the same (status, error
code; the detail differs only by the id it echoes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from patgate.gateway.lifecycle import Actor, Owner
from patgate.middleware.store import TokenStore
from tests.gateway.api._world import Api, make_api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def world(store: TokenStore) -> AsyncIterator[tuple[Api, str]]:
    async with make_api(store) as api:
        system = Actor.system()
        await api.directory.put_org(system, "zeta", {})
        await api.directory.put_user(
            system, "zadmin", {"org_id": "zeta", "email": "z@zeta.io", "role": "admin"}
        )
        await api.add_caller(
            "zadmin",
            "zadmin",
            ["tokens:read:own", "tokens:write:own", "tokens:admin", "users:admin"],
            org="zeta",
        )
        token, _ = await api.tokens.create(
            system, name="alice-t", owner=Owner("user", "alice", "acme")
        )
        yield api, token.id


def _shape(body: dict[str, Any], *ids: str) -> dict[str, Any]:
    detail = str(body.get("detail", ""))
    for i in ids:
        detail = detail.replace(i, "<id>")
    return {**body, "detail": detail} if "detail" in body else body


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/users/{user}", None),
        ("DELETE", "/v1/users/{user}", None),
        ("PUT", "/v1/users/{user}", {"role": "admin"}),  # no email: 400 for both
        ("PUT", "/v1/users/{user}", {"email": "x@zeta.io", "org_id": "acme"}),
        ("POST", "/v1/tokens", {"name": "n", "owner": {"type": "user", "id": "{user}"}}),
        ("GET", "/v1/tokens/{token}", None),
        ("PATCH", "/v1/tokens/{token}", {"name": "mine"}),
        ("DELETE", "/v1/tokens/{token}", None),
        ("POST", "/v1/tokens/{token}/revoke", None),
        ("POST", "/v1/tokens/{token}/regenerate", None),
        ("POST", "/v1/admin/tokens/{token}/revoke", None),
        ("GET", "/v1/events?token_id={token}", None),
    ],
)
async def test_existing_and_unknown_ids_of_other_orgs_answer_alike(
    world: tuple[Api, str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    api, token_id = world
    answers = []
    for user, token in (("alice", token_id), ("nobody", "tok_0000000000000000")):
        url = path.format(user=user, token=token)
        payload = None
        if body is not None:
            payload = {
                k: ({**v, "id": user} if isinstance(v, dict) else v) for k, v in body.items()
            }
        r = await api.call(method, url, "zadmin", json=payload)
        answers.append((r.status_code, _shape(r.json(), user, token)))
    assert answers[0] == answers[1], answers
    assert answers[0][0] != 500


async def test_a_user_id_of_another_org_is_a_different_user(world: tuple[Api, str]) -> None:
    api, _ = world
    r = await api.call("PUT", "/v1/users/alice", "zadmin", json={"email": "alice@zeta.io"})
    assert r.status_code == 200, r.text
    assert r.json()["org_id"] == "zeta"
    mine = await api.call("GET", "/v1/users/alice", "admin")
    assert (mine.json()["org_id"], mine.json()["email"]) == ("acme", "alice@acme.io")
