"""A secret is shown once (issue 15): in the page answering create or regenerate, with
``no-store``, and nowhere else — not on any other page, not in the session or its
cookie, not in any stored value, not in a log record; a re-posted form shows nothing."""

from __future__ import annotations

import base64
import logging
import re

import httpx
import pytest
import redis.asyncio as aioredis

from tests.gateway.api._world import snapshot
from tests.gateway.console._world import Browser, ConsoleWorld, world_fixture  # noqa: F401

pytestmark = pytest.mark.anyio
_SECRET = re.compile(r'id="secret" class="secret" readonly value="([^"]+)"')


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    body = secret.split("_", 1)[1].encode()
    return [raw, body, raw.hex().encode(), body.hex().encode(), base64.b64encode(raw)]


def _leaks(blob: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if any(form in blob for form in _forms(s))]


def _secret(r: httpx.Response) -> str:
    found = _SECRET.search(r.text)
    assert found is not None, r.text
    return found.group(1)


async def test_a_secret_is_shown_once_and_kept_nowhere(
    world: ConsoleWorld,
    redis_client: aioredis.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    b = await world.signed_in("alice")
    admin = await world.signed_in("admin")
    revealing: list[httpx.Response] = []
    other: list[httpx.Response] = []

    async def get(path: str, who: Browser = b) -> httpx.Response:
        r = await who.get(path)
        assert r.status_code == 200, (path, r.text)
        other.append(r)
        return r

    # create
    csrf, form_id = await b.form("/tokens/new")
    body = {
        "csrf": csrf,
        "form_id": form_id,
        "name": "ci",
        "access": "default",
        "expiration": "30d",
    }
    r = await b.post("/tokens/new", body)
    assert r.status_code == 201, r.text
    revealing.append(r)
    secret = _secret(r)
    assert r.text.count(secret) == 1
    assert r.headers["cache-control"] == "no-store"
    token = next(t for t in await world.all_tokens() if t.name == "ci")
    assert (await world.token(token.id)).prefix == secret[: len(token.prefix)]
    names, events = await world.names(), await world.event_count()

    # the same form again (a reload): nothing new, no secret
    r = await b.post("/tokens/new", body)
    assert r.status_code == 409
    assert "already used" in r.text
    other.append(r)
    assert await world.names() == names
    assert await world.event_count() == events

    # regenerate, once
    csrf, form_id = await b.form(f"/tokens/{token.id}")
    regen = {"csrf": csrf, "form_id": form_id, "expiration": "7d", "grace_period": "3600"}
    r = await b.post(f"/tokens/{token.id}/regenerate", regen)
    assert r.status_code == 200, r.text
    revealing.append(r)
    second = _secret(r)
    assert second != secret
    assert r.text.count(second) == 1
    assert r.headers["cache-control"] == "no-store"
    rotated = await world.token(token.id)
    events = await world.event_count()
    r = await b.post(f"/tokens/{token.id}/regenerate", regen)
    assert r.status_code == 409
    assert "already used" in r.text
    other.append(r)
    again = await world.token(token.id)
    assert again.prefix == rotated.prefix == second[: len(rotated.prefix)]
    assert await world.event_count() == events

    # every other page
    await get("/tokens")
    detail = await get(f"/tokens/{token.id}")
    await get("/tokens?status=active&q=ci")
    await get("/events")
    await get("/admin/tokens", admin)
    await get("/admin/tokens?status=all&q=ci", admin)
    await get(f"/tokens/{token.id}", admin)
    await get("/events", admin)
    assert "Previous secret" in detail.text  # the grace period is shown, masked

    secrets = [secret, second, *world.secrets.values()]
    for r in revealing:
        own = _secret(r)
        assert _leaks(r.content, [s for s in secrets if s != own]) == []
        assert _leaks(str(r.headers).encode(), secrets) == []
    for r in other:
        assert _leaks(r.content, secrets) == [], r.request.url
        assert _leaks(str(r.headers).encode(), secrets) == []
    # not in the cookies, nor in the stored sessions or anything else stored
    cookies = [b.cookie, admin.cookie]
    assert all(cookies)
    assert _leaks(repr(cookies).encode(), secrets) == []
    dump = await snapshot(redis_client, namespace)
    sessions = [k for k in dump if k.startswith(b"{" + namespace.encode() + b":console}:s:")]
    assert len(sessions) >= 2
    assert _leaks(repr(dump).encode(), secrets) == []
    # the session key is the id's hash: no cookie value is stored
    assert not any(c.encode() in repr(dump).encode() for c in cookies if c)
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r}" for rec in caplog.records)
    assert _leaks(logged.encode(), secrets) == []


async def test_a_failed_sign_in_logs_no_secret(
    world: ConsoleWorld, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.gateway.console._world import sign_in

    caplog.set_level(logging.DEBUG)
    typo = world.secrets["alice"][:-1] + ("A" if world.secrets["alice"][-1] != "A" else "B")
    r = await sign_in(world.browser(), typo)
    assert r.status_code == 401
    assert typo not in r.text
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r}" for rec in caplog.records)
    assert _leaks(logged.encode(), [typo, world.secrets["alice"]]) == []


async def test_a_form_id_is_one_time_per_session(world: ConsoleWorld) -> None:
    """Another session's form id, or one made up, is refused like a reused one."""
    a = await world.signed_in("alice")
    bob = await world.signed_in("bob")
    _, foreign = await bob.form("/tokens/new")
    csrf = await a.csrf()
    names = await world.names()
    for form_id in (foreign, "made-up", ""):
        body = {"csrf": csrf, "form_id": form_id, "name": "x", "access": "default"}
        r = await a.post("/tokens/new", body)
        assert r.status_code == 409, r.text
    assert await world.names() == names
