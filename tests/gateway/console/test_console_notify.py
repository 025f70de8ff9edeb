"""The admin's notification page (issues 14 and 15): webhook endpoints added, tested,
rotated and removed through the console, their signing secret shown once, and the dead
letters retried — the same objects as ``/v1/webhooks``; members get the service's 403."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import pytest

from patgate.gateway.notify.outbox import Job
from patgate.gateway.notify.setup import Notifications
from patgate.gateway.settings import Settings
from patgate.middleware.store import TokenStore
from tests.gateway.console._world import ConsoleWorld, hidden, make_console

pytestmark = pytest.mark.anyio


@pytest.fixture
async def nworld(store: TokenStore) -> AsyncIterator[tuple[ConsoleWorld, Notifications]]:
    settings = Settings(namespace=store.keyspace.namespace, webhook_allow_private=True)
    notifications = Notifications.build(settings, store)
    try:
        async with make_console(store, notifications=notifications) as world:
            yield world, notifications
    finally:
        await notifications.aclose()


def _flash(page: str) -> str:
    found = re.search(r'id="flash">([^<]*)<', page)
    assert found is not None, page
    return html.unescape(found.group(1))


async def test_endpoint_lifecycle(nworld: tuple[ConsoleWorld, Notifications]) -> None:
    world, n = nworld
    b = await world.signed_in("admin")
    page = await b.get("/admin/notifications")
    assert page.status_code == 200
    assert 'id="no-endpoints"' in page.text
    csrf, form_id = hidden(page.text, "csrf"), hidden(page.text, "form_id")
    # Bad input: the message, the typed fields and ticks kept, nothing stored.
    bad = await b.post(
        "/admin/webhooks",
        {"csrf": csrf, "form_id": form_id, "url": "ftp://hooks.example",
         "event_types": "token.revoked"},
    )  # fmt: skip
    assert bad.status_code == 400
    assert "url" in bad.text
    assert 'value="ftp://hooks.example"' in bad.text
    assert 'value="token.revoked" checked' in bad.text
    assert await n.endpoints.all("acme") == []
    form = {"csrf": csrf, "form_id": hidden(bad.text, "form_id"),
            "url": "https://127.0.0.1:9/hook", "event_types": "token.revoked"}  # fmt: skip
    made = await b.post("/admin/webhooks", form)
    assert made.status_code == 201
    # The same form again (a reload re-posting it): no second endpoint.
    again = await b.post("/admin/webhooks", form)
    assert again.status_code == 303
    assert "already used" in _flash((await b.get("/admin/notifications")).text)
    assert made.headers["cache-control"] == "no-store"
    (endpoint,) = await n.endpoints.all("acme")
    assert endpoint.event_types == ("token.revoked",)
    assert made.text.count(endpoint.secret) == 1  # shown once, on this answer only
    listing = await b.get("/admin/notifications")
    assert endpoint.url in listing.text
    assert endpoint.secret not in listing.text
    # Test: a webhook.test job in the outbox for this endpoint.
    tested = await b.post(f"/admin/webhooks/{endpoint.id}/test", {"csrf": csrf})
    assert tested.status_code == 303
    assert (await n.outbox.queued())[0] == 1
    # Rotate: a new secret, shown once; the dialog's one-time form id is required.
    no_id = await b.post(f"/admin/webhooks/{endpoint.id}/rotate", {"csrf": csrf})
    assert no_id.status_code == 303
    assert (await n.endpoints.all("acme"))[0].secret == endpoint.secret
    form_id = hidden((await b.get("/admin/notifications")).text, "form_id")
    rotated = await b.post(
        f"/admin/webhooks/{endpoint.id}/rotate", {"csrf": csrf, "form_id": form_id}
    )
    (after,) = await n.endpoints.all("acme")
    assert after.secret != endpoint.secret
    assert rotated.text.count(after.secret) == 1
    removed = await b.post(f"/admin/webhooks/{endpoint.id}/delete", {"csrf": csrf})
    assert removed.status_code == 303
    assert _flash((await b.get("/admin/notifications")).text) == "Endpoint removed."
    assert await n.endpoints.all("acme") == []


async def test_dead_letters_are_retried_for_their_org_only(
    nworld: tuple[ConsoleWorld, Notifications],
) -> None:
    world, n = nworld
    now = world.clock()
    mine = Job(key="dead-mine", channel="webhook", org_id="acme", target="wh_x",
               event_type="token.revoked", content={}, created_at=now)  # fmt: skip
    theirs = Job(key="dead-theirs", channel="webhook", org_id="other", target="wh_y",
                 event_type="token.revoked", content={}, created_at=now)  # fmt: skip
    for job in (mine, theirs):
        await n.outbox.bury(job, now)
    b = await world.signed_in("admin")
    page = await b.get("/admin/notifications")
    assert "dead-mine" in page.text
    assert "dead-theirs" not in page.text
    csrf = hidden(page.text, "csrf")
    await b.post("/admin/notifications/dead-theirs/retry", {"csrf": csrf})
    assert "not found" in _flash((await b.get("/admin/notifications")).text)
    assert await n.outbox.dead_letter("dead-theirs") is not None
    await b.post("/admin/notifications/dead-mine/retry", {"csrf": csrf})
    assert _flash((await b.get("/admin/notifications")).text) == "Queued again for delivery."
    assert await n.outbox.dead_letter("dead-mine") is None


async def test_members_get_the_services_refusal(nworld: tuple[ConsoleWorld, Notifications]) -> None:
    world, _ = nworld
    b = await world.signed_in("alice")
    assert (await b.get("/admin/notifications")).status_code == 403
    assert 'href="/console/admin/notifications"' not in (await b.get("/tokens")).text


async def test_405_is_a_page_with_allow(nworld: tuple[ConsoleWorld, Notifications]) -> None:
    world, _ = nworld
    b = world.browser()
    answer = await b.get("/logout")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in answer.headers
