"""The org admin's console flows in a real browser (issue 15), against a real
``patgate serve``: every effect of a click is checked through the gateway (200/401/403).

Also the console mounted in a host product's own Starlette app, signed in by the host's
cookie, over the same store and namespace as the serve world's gateway.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from patgate.gateway.console import ConsoleUser, create_console_app
from patgate.gateway.settings import Settings
from tests.gateway.console._browser import (
    js_errors,
    new_page,
    screenshot,
    serving,
    wait_for,
    wait_text,
)
from tests.gateway.console._serve import ServeWorld, serve_world

if TYPE_CHECKING:
    from selenium.webdriver import Chrome
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = pytest.mark.slow

MANAGE = ["tokens:read:own", "tokens:write:own", "tokens:admin", "users:admin"]
LIST_PATH = "/v1/workspaces/w1/threads"


def _by() -> type:
    from selenium.webdriver.common.by import By

    return By


def _select(element: WebElement) -> object:
    from selenium.webdriver.support.select import Select

    return Select(element)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[ServeWorld]:
    with serve_world(tmp_path_factory.mktemp("console-admin"), valkey_url) as w:
        # Room for every token these tests create (the org default is 10 active ones).
        r = w.api("PUT", "/v1/orgs/acme", json={"token_limit": 500})
        assert r.status_code == 200, r.text
        yield w


# -- helpers -------------------------------------------------------------------------------


def no_js_errors(browser: Chrome, *, answered: int | None = None) -> None:
    """No console error; ``answered``: the page's own 4xx status (which Chrome logs as
    a failed load) is expected, and nothing else."""
    errors = js_errors(browser)
    if answered is not None:
        errors = [e for e in errors if f"responded with a status of {answered}" not in e]
    assert errors == []


def sign_in(
    browser: Chrome, world: ServeWorld, secret: str | None = None, *, shot: bool = False
) -> None:
    """Sign in at /console/login with a management token (the admin's by default)."""
    browser.get(world.console + "/login")
    field = wait_for(browser, "#token")
    if shot:
        screenshot(browser, "login")
    field.send_keys(secret or world.admin_secret)
    browser.find_element(_by().CSS_SELECTOR, "#sign-in").click()
    wait_for(browser, "#viewer")
    no_js_errors(browser)


def rows(browser: Chrome, css: str = "#tokens tbody tr") -> list[WebElement]:
    return browser.find_elements(_by().CSS_SELECTOR, css)


def cell(row: WebElement, label: str) -> str:
    return str(row.find_element(_by().CSS_SELECTOR, f'td[data-label="{label}"]').text)


def filter_tokens(browser: Chrome, q: str = "", type_text: str = "All types") -> None:
    box = wait_for(browser, "#q")
    box.clear()
    if q:
        box.send_keys(q)
    _select(browser.find_element(_by().CSS_SELECTOR, "#type")).select_by_visible_text(type_text)  # type: ignore[attr-defined]
    with new_page(browser):
        browser.find_element(_by().CSS_SELECTOR, "#filter").click()
    wait_for(browser, "#tokens, #no-tokens")


def row_of(browser: Chrome, name: str) -> WebElement:
    found = [r for r in rows(browser) if r.get_attribute("data-name") == name]
    assert len(found) == 1, [r.get_attribute("data-name") for r in rows(browser)]
    return found[0]


def click(browser: Chrome, css: str) -> None:
    browser.find_element(_by().CSS_SELECTOR, css).click()


def create_token(browser: Chrome, base: str, name: str, *, owner: str | None = None,
                 role: str | None = None) -> str:  # fmt: skip
    """Fill /tokens/new and create; the secret the dialog shows."""
    browser.get(base + "/tokens/new")
    wait_for(browser, "#name").send_keys(name)
    if owner is not None:
        click(browser, f'input[name="owner"][value="{owner}"]')
    if role is not None:
        click(browser, 'input[name="access"][value="role"]')
        _select(wait_for(browser, "#role")).select_by_value(role)  # type: ignore[attr-defined]
    click(browser, "#create")
    secret = str(wait_for(browser, "#secret-dialog #secret").get_attribute("value"))
    no_js_errors(browser)
    return secret


def token_id(world: ServeWorld, name: str) -> str:
    r = world.api("GET", "/v1/admin/tokens", params={"q": name, "status": "all"})
    assert r.status_code == 200, r.text
    ids = [t["id"] for t in r.json()["items"] if t["name"] == name]
    assert len(ids) == 1, r.json()
    return str(ids[0])


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


# -- 1. the admin view of every token ------------------------------------------------------


def test_admin_tokens_search_type_and_revoke(browser: Chrome, world: ServeWorld) -> None:
    world.add_user("alice")
    world.add_user("bob")
    world.token_for("alice", ["threads:read"], name="alice-cli")
    bob_secret = world.token_for("bob", ["threads:read"], name="bob-cli")
    oauth = {
        "name": "alice-oauth",
        "value": "gho_" + uuid.uuid4().hex + "abcd",
        "owner": {"type": "user", "id": "alice"},
        "scopes": ["threads:read"],
    }
    r = world.api("POST", "/v1/admin/tokens", json=oauth)
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "oauth"
    assert world.status(bob_secret) == 200
    assert world.status(oauth["value"]) == 200

    sign_in(browser, world, shot=True)
    browser.get(world.console + "/admin/tokens")
    for q in ("alice@acme.example", "Alice"):
        filter_tokens(browser, q)
        found = rows(browser)
        assert {r.get_attribute("data-name") for r in found} == {"alice-cli", "alice-oauth"}, q
        assert {cell(r, "Owner") for r in found} == {"alice@acme.example"}
    no_js_errors(browser)

    filter_tokens(browser, "", "OAuth")
    assert [r.get_attribute("data-name") for r in rows(browser)] == ["alice-oauth"]
    assert cell(rows(browser)[0], "Type") == "Oauth"
    screenshot(browser, "admin-tokens")
    no_js_errors(browser)

    # Bob's row, revoked from a filtered view: the filters stay.
    filter_tokens(browser, "bob", "Personal")
    bob = row_of(browser, "bob-cli")
    tid = bob.get_attribute("data-token-id")
    bob.find_element(_by().CSS_SELECTOR, f"#open-revoke-{tid}").click()
    wait_for(browser, f"#revoke-{tid}[open]")
    assert browser.find_element(_by().CSS_SELECTOR, f"#revoke-{tid}-submit").is_enabled()
    click(browser, f"#revoke-{tid}-submit")
    wait_text(browser, "#flash", "bob-cli revoked")
    world.until_status(bob_secret, 401)
    assert "q=bob" in browser.current_url
    assert "type=personal" in browser.current_url
    assert wait_for(browser, "#q").get_attribute("value") == "bob"
    chosen = _select(browser.find_element(_by().CSS_SELECTOR, "#type")).first_selected_option  # type: ignore[attr-defined]
    assert chosen.text == "Personal"
    assert not [r for r in rows(browser) if r.get_attribute("data-name") == "bob-cli"]
    no_js_errors(browser)


# -- 2. an organization token ---------------------------------------------------------------


def test_org_token_create_list_and_type_the_label_to_revoke(
    browser: Chrome, world: ServeWorld
) -> None:
    label = unique("svc-deploy")
    sign_in(browser, world)
    secret = create_token(browser, world.console, label, owner="org", role="Developer")
    assert world.status(secret) == 200
    assert world.status(secret, LIST_PATH) == 200  # Developer has threads:list

    # Listed with label, masked token, role, creator, and the gateway call as last use.
    deadline = time.monotonic() + 5
    while True:
        browser.get(world.console + "/admin/tokens?q=" + label)
        row = row_of(browser, label)
        if "Never used" not in cell(row, "Last used") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "/v1/workspaces/w1/threads" in cell(row, "Last used"), cell(row, "Last used")
    assert cell(row, "Owner") == "Organization"
    assert cell(row, "Role") == "Developer"
    shown = cell(row, "Token")
    assert "…" in shown
    assert secret.startswith(shown.split("…")[0])
    assert secret not in shown
    assert "by " in cell(row, "Created"), cell(row, "Created")
    creator = cell(row, "Created").split("by ", 1)[1].strip()
    assert creator == "admin", cell(row, "Created")
    no_js_errors(browser)

    tid = row.get_attribute("data-token-id")
    click(browser, f"#open-revoke-{tid}")
    box = wait_for(browser, f"#revoke-{tid}-label")
    submit = browser.find_element(_by().CSS_SELECTOR, f"#revoke-{tid}-submit")
    assert not submit.is_enabled()
    box.send_keys(label[:-1])  # almost the label
    assert not submit.is_enabled()
    box.send_keys("x")
    assert not submit.is_enabled()
    screenshot(browser, "org-token-revoke-dialog")
    box.clear()
    box.send_keys(label)
    assert submit.is_enabled()
    assert world.status(secret) == 200
    submit.click()
    wait_text(browser, "#flash", f"{label} revoked")
    world.until_status(secret, 401)
    no_js_errors(browser)


# -- 3. users: switches, role, adding ---------------------------------------------------------


def save_user(
    browser: Chrome, user_id: str, *, toggle: str | None = None, role: str | None = None
) -> None:
    if toggle is not None:
        click(browser, f"#{toggle}-{user_id}")
    if role is not None:
        _select(browser.find_element(_by().CSS_SELECTOR, f"#role-{user_id}")).select_by_value(role)  # type: ignore[attr-defined]
    with new_page(browser):
        click(browser, f"#save-{user_id}")
    wait_for(browser, "#flash")
    no_js_errors(browser)


def test_users_switches_role_and_add(browser: Chrome, world: ServeWorld) -> None:
    world.add_user("carol")
    secret = world.token_for("carol", ["threads:read"])
    assert world.status(secret) == 200
    sign_in(browser, world)
    browser.get(world.console + "/admin/users")
    wait_for(browser, "#enabled-carol")
    screenshot(browser, "users")

    save_user(browser, "carol", toggle="enabled")
    assert "disabled" in wait_for(browser, "#flash").text
    assert not browser.find_element(_by().CSS_SELECTOR, "#enabled-carol").is_selected()
    world.until_status(secret, 401)
    save_user(browser, "carol", toggle="enabled")
    assert browser.find_element(_by().CSS_SELECTOR, "#enabled-carol").is_selected()
    world.until_status(secret, 200)

    save_user(browser, "carol", toggle="perm")
    assert "may not manage tokens" in wait_for(browser, "#flash").text
    world.until_status(secret, 401)
    save_user(browser, "carol", toggle="perm")
    world.until_status(secret, 200)

    # Adding a user; adding the same id again keeps what was typed.
    for attempt in ("ok", "again"):
        wait_for(browser, "#user-id").clear()
        browser.find_element(_by().CSS_SELECTOR, "#user-id").send_keys("dave")
        email = "dave@acme.example" if attempt == "ok" else "dave2@acme.example"
        browser.find_element(_by().CSS_SELECTOR, "#user-email").clear()
        browser.find_element(_by().CSS_SELECTOR, "#user-email").send_keys(email)
        browser.find_element(_by().CSS_SELECTOR, "#user-name").clear()
        browser.find_element(_by().CSS_SELECTOR, "#user-name").send_keys(f"Dave {attempt}")
        click(browser, "#add-user-submit")
        if attempt == "ok":
            wait_text(browser, "#flash", "User dave added")
            assert rows(browser, 'tr[data-user-id="dave"]')
        else:
            assert "exists already" in wait_for(browser, "#form-error").text
            assert wait_for(browser, "#user-id").get_attribute("value") == "dave"
            assert (
                browser.find_element(_by().CSS_SELECTOR, "#user-email").get_attribute("value")
                == email
            )
            assert (
                browser.find_element(_by().CSS_SELECTOR, "#user-name").get_attribute("value")
                == "Dave again"
            )
        no_js_errors(browser, answered=None if attempt == "ok" else 400)
    assert world.api("GET", "/v1/users/dave").json()["email"] == "dave@acme.example"

    # Promoted to admin: a management token of hers shows the admin's views.
    browser.get(world.console + "/admin/users")
    wait_for(browser, "#role-carol")
    save_user(browser, "carol", role="admin")
    assert world.api("GET", "/v1/users/carol").json()["role"] == "admin"
    manage = world.token_for("carol", MANAGE)
    browser.delete_all_cookies()
    sign_in(browser, world, manage)
    assert "(admin)" in wait_for(browser, "#viewer").text
    nav = [a.text for a in browser.find_elements(_by().CSS_SELECTOR, "header nav a")]
    assert "All tokens" in nav, nav
    assert "Users" in nav, nav
    no_js_errors(browser)


# -- 4. the audit log -----------------------------------------------------------------------


def test_events_filters_and_member_view(browser: Chrome, world: ServeWorld) -> None:
    world.add_user("erin")
    name = unique("erin-cli")
    secret = world.token_for("erin", ["threads:read"], name=name)
    tid = token_id(world, name)
    r = world.api("POST", f"/v1/admin/tokens/{tid}/revoke")
    assert r.status_code == 200, r.text
    world.until_status(secret, 401)

    sign_in(browser, world)
    browser.get(world.console + "/events")
    _select(wait_for(browser, "#type")).select_by_value("token.revoked")  # type: ignore[attr-defined]
    with new_page(browser):
        click(browser, "#filter")
    wait_for(browser, "#events")
    types = {r.get_attribute("data-type") for r in rows(browser, "#events tbody tr")}
    assert types == {"token.revoked"}
    screenshot(browser, "events")
    no_js_errors(browser)

    browser.get(world.console + "/events")
    wait_for(browser, "#token_id").send_keys(tid)
    with new_page(browser):
        click(browser, "#filter")
    found = rows(browser, "#events tbody tr")
    assert {cell(r, "Token") for r in found} == {tid}
    assert {"token.created", "token.revoked"} <= {r.get_attribute("data-type") for r in found}
    no_js_errors(browser)

    # A member: the events of her own tokens only.
    own = world.token_for("erin", ["tokens:read:own", "tokens:write:own"])
    mine = world.api("GET", "/v1/tokens", secret=own, params={"status": "all"})
    assert mine.status_code == 200, mine.text
    ids = {t["id"] for t in mine.json()["items"]}
    assert tid in ids
    browser.delete_all_cookies()
    sign_in(browser, world, own)
    browser.get(world.console + "/events")
    found = rows(browser, "#events tbody tr")
    assert found
    assert {cell(r, "Token") for r in found} <= ids
    no_js_errors(browser)


# -- 5. organization settings -----------------------------------------------------------------


def test_org_settings_role_and_bad_value(browser: Chrome, world: ServeWorld) -> None:
    sign_in(browser, world)
    browser.get(world.console + "/admin/org")
    roles = wait_for(browser, "#roles")
    assert "Developer: threads:create threads:list threads:read" in str(
        roles.get_attribute("value")
    )
    roles.send_keys("\nReader: threads:read")
    screenshot(browser, "org-settings")
    click(browser, "#save-org")
    wait_text(browser, "#flash", "Organization settings saved")
    assert world.api("GET", "/v1/orgs/acme").json()["roles"]["Reader"] == ["threads:read"]
    assert world.api("GET", "/v1/orgs/acme").json()["token_limit"] == 500
    no_js_errors(browser)

    secret = create_token(browser, world.console, unique("reader"), role="Reader")
    assert world.status(secret) == 200
    assert world.status(secret, LIST_PATH) == 403

    browser.get(world.console + "/admin/org")
    wait_for(browser, "#org-name").clear()
    browser.find_element(_by().CSS_SELECTOR, "#org-name").send_keys("Acme Renamed")
    browser.find_element(_by().CSS_SELECTOR, "#token_limit").clear()
    browser.find_element(_by().CSS_SELECTOR, "#token_limit").send_keys("abc")
    click(browser, "#save-org")
    assert "token_limit" in wait_for(browser, "#form-error").text
    assert browser.find_element(_by().CSS_SELECTOR, "#token-limit-error, #token_limit-error")
    assert browser.find_element(_by().CSS_SELECTOR, "#token_limit").get_attribute("value") == "abc"
    assert (
        browser.find_element(_by().CSS_SELECTOR, "#org-name").get_attribute("value")
        == "Acme Renamed"
    )
    assert "Reader: threads:read" in str(
        browser.find_element(_by().CSS_SELECTOR, "#roles").get_attribute("value")
    )
    assert world.api("GET", "/v1/orgs/acme").json()["name"] != "Acme Renamed"
    no_js_errors(browser, answered=400)


# -- 6. mounted in a host product ---------------------------------------------------------------

MOUNT = "/settings/api-tokens"


def host_app(world: ServeWorld, valkey_url: str) -> Starlette:
    async def signed_in(request: Request) -> ConsoleUser | None:
        user = request.cookies.get("host_user")
        return ConsoleUser("acme", user) if user else None

    async def signin(request: Request) -> Response:
        response = RedirectResponse(MOUNT + "/tokens", status_code=303)
        response.set_cookie("host_user", request.path_params["user"], path="/", httponly=True)
        return response

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    console = create_console_app(
        Settings(redis_url=valkey_url, namespace=world.namespace), signed_in=signed_in
    )
    return Starlette(
        routes=[
            Route("/signin/{user}", signin),
            Route("/favicon.ico", favicon),
            Mount(MOUNT, console),
        ],
        lifespan=console.lifespan,
    )


def test_host_mounted_console(browser: Chrome, world: ServeWorld, valkey_url: str) -> None:
    world.add_user("hana")
    world.add_user("ivan", enabled=False)
    with serving(host_app(world, valkey_url)) as base:
        browser.get(base + MOUNT + "/tokens")
        assert wait_for(browser, "h1").text == "Please sign in"
        assert (
            "Sign in to the product first"
            in browser.find_element(_by().CSS_SELECTOR, "#message").text
        )
        assert not browser.find_elements(_by().CSS_SELECTOR, "#token, #sign-in")
        no_js_errors(browser, answered=401)
        assert httpx.get(base + MOUNT + "/tokens").status_code == 401
        assert httpx.get(base + MOUNT + "/login").status_code == 404
        browser.get(base + MOUNT + "/login")
        # The console's own 404 page: hosted users are never offered a token sign-in.
        assert "no such page" in wait_for(browser, "#message").text
        assert not browser.find_elements(_by().CSS_SELECTOR, "#token")
        no_js_errors(browser, answered=404)

        browser.get(base + "/signin/hana")
        assert wait_for(browser, "#viewer").text == "Hana"
        assert not browser.find_elements(_by().CSS_SELECTOR, "#logout")
        assert browser.current_url == base + MOUNT + "/tokens"
        hrefs = [
            a.get_attribute("href")
            for a in browser.find_elements(_by().CSS_SELECTOR, "header nav a")
        ]
        assert hrefs
        assert all(str(h).startswith(base + MOUNT + "/") for h in hrefs), hrefs
        css = browser.find_element(_by().CSS_SELECTOR, 'link[rel="stylesheet"]').get_attribute(
            "href"
        )
        assert str(css).startswith(base + MOUNT + "/static/")
        screenshot(browser, "host-mounted")
        no_js_errors(browser)

        secret = create_token(browser, base + MOUNT, unique("hana-cli"))
        assert browser.current_url == base + MOUNT + "/tokens/new"
        done = wait_for(browser, "#secret-done").get_attribute("href")
        assert str(done).startswith(base + MOUNT + "/tokens/")
        assert world.status(secret) == 200  # the serve world's gateway: same store

        browser.delete_all_cookies()
        browser.get(base + "/signin/ivan")
        assert wait_for(browser, "h1").text == "No API token access"
        assert "disabled" in browser.find_element(_by().CSS_SELECTOR, "#message").text
        assert not browser.find_elements(_by().CSS_SELECTOR, "#viewer")
        no_js_errors(browser, answered=403)
        assert httpx.get(base + MOUNT + "/tokens", cookies={"host_user": "ivan"}).status_code == 403


# -- 7. notification settings: a webhook endpoint through the console -----------------------


def test_webhook_endpoint_added_tested_and_removed(browser: Chrome, world: ServeWorld) -> None:
    sign_in(browser, world)
    browser.get(world.console + "/admin/notifications")
    wait_for(browser, "#no-endpoints")
    no_js_errors(browser)
    url = f"https://hooks.example.com/{unique('patgate')}"
    wait_for(browser, "#url").send_keys(url)
    click(browser, 'input[name="event_types"][value="token.revoked"]')
    click(browser, "#add-endpoint-submit")
    secret = str(wait_for(browser, "#secret-dialog #secret").get_attribute("value"))
    assert secret.startswith("whsec_")
    no_js_errors(browser, answered=201)
    click(browser, "#secret-done")
    (endpoint,) = world.api("GET", "/v1/webhooks").json()["items"]
    assert (endpoint["url"], endpoint["event_types"]) == (url, ["token.revoked"])
    assert secret not in browser.page_source  # shown once, on the answer to the form
    click(browser, f"#test-{endpoint['id']}")
    wait_text(browser, "#flash", "Test delivery queued")
    screenshot(browser, "notifications")
    click(browser, f"#open-delete-{endpoint['id']}")
    click(browser, f"#delete-{endpoint['id']}-submit")
    wait_text(browser, "#flash", "Endpoint removed.")
    no_js_errors(browser)
    assert world.api("GET", "/v1/webhooks").json()["items"] == []
