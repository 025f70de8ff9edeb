"""The console's own-token pages (issue 15) clicked through in a real headless chromium
against a real ``patgate serve``; every effect is then checked through the gateway
itself: a created token gets 200, a revoked or deleted one 401, a removed scope 403."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.gateway.console._browser import (
    PHONE,
    js_errors,
    new_page,
    screenshot,
    set_viewport,
    wait_for,
    wait_text,
)
from tests.gateway.console._serve import ORG, ServeWorld, serve_world
from tests.gateway.test_processes import _until

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.slow

THREAD = "/v1/workspaces/w1/threads/t1"  # GET needs threads:read
THREADS = "/v1/workspaces/w1/threads"  # GET needs threads:list, POST threads:create
MANAGE = ["tokens:read:own", "tokens:write:own"]

# Every visible control without an accessible name (label, aria-label, button text).
UNLABELLED = """
const bad = [];
for (const el of document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button')) {
  if (!el.checkVisibility()) continue;
  const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
    || (el.tagName == 'BUTTON' && el.textContent.trim());
  if (!named) bad.push(el.outerHTML.slice(0, 160));
}
return bad;
"""
NO_SIDE_SCROLL = "return document.documentElement.scrollWidth <= window.innerWidth + 1"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[ServeWorld]:
    with serve_world(tmp_path_factory.mktemp("console-tokens"), valkey_url) as w:
        # Every test here has a user of its own, but the org's default limit of 10 active
        # tokens is shared by all of them.
        r = w.api("PUT", "/v1/orgs/acme", json=ORG | {"token_limit": 1000})
        assert r.status_code == 200, r.text
        yield w


# -- helpers ---------------------------------------------------------------------------


def member(world: ServeWorld) -> tuple[str, str]:
    """A new member of acme and a management token of theirs: (user id, secret)."""
    user = "u" + uuid.uuid4().hex[:8]
    world.add_user(user)
    return user, world.token_for(user, MANAGE, name="console")


def checked(browser: WebDriver) -> None:
    """What every visited page must hold: no JS error / CSP violation / failed asset,
    and an accessible name on every visible control."""
    assert js_errors(browser) == []
    assert browser.execute_script(UNLABELLED) == []


def sign_in(browser: WebDriver, world: ServeWorld, secret: str) -> None:
    browser.get(world.console + "/login")
    wait_for(browser, "#token").send_keys(secret)
    wait_for(browser, "#sign-in").click()
    wait_for(browser, "#viewer")
    assert browser.current_url.endswith("/console/tokens")
    checked(browser)


def until(
    world: ServeWorld, secret: str, want: int, path: str = THREAD, method: str = "GET"
) -> None:
    """Changes reach the gateway's cache through pub/sub: soon, not synchronously."""
    _until(lambda: world.status(secret, path, method) == want, 5, f"{method} {path} → {want}")


def css(browser: WebDriver, selector: str) -> list:  # type: ignore[type-arg]
    return browser.find_elements("css selector", selector)


def names(browser: WebDriver) -> list[str]:
    return [row.get_attribute("data-name") for row in css(browser, "#tokens tr[data-name]")]


def flash(browser: WebDriver, text: str) -> None:
    wait_text(browser, "#flash", text)
    checked(browser)


def choose(browser: WebDriver, select: str, value: str) -> None:
    """Pick the option of ``select`` whose value (or, without one, text) is ``value``."""
    from selenium.common.exceptions import NoSuchElementException
    from selenium.webdriver.support.select import Select

    menu = Select(wait_for(browser, select))
    try:
        menu.select_by_value(value)
    except NoSuchElementException:
        menu.select_by_visible_text(value)


def create(
    browser: WebDriver,
    world: ServeWorld,
    name: str,
    *,
    access: str = "default",
    scopes: str = "",
    ops: tuple[str, ...] = (),
    role: str = "",
    expiration: str = "",
    description: str = "",
) -> tuple[str, str]:
    """Fill in and send the create form; (secret, token id) from the secret dialog."""
    browser.get(world.console + "/tokens/new")
    wait_for(browser, "#name").send_keys(name)
    if description:
        wait_for(browser, "#description").send_keys(description)
    if expiration:
        choose(browser, "#expiration", expiration)
    wait_for(browser, f"input[name=access][value={access}]").click()
    if scopes:
        wait_for(browser, "#scopes").send_keys(scopes)
    for op in ops:
        wait_for(browser, f"#op-{op.replace(':', '-')}").click()
    if role:
        choose(browser, "#role", role)
    checked(browser)
    wait_for(browser, "#create").click()
    return secret_shown(browser)


def secret_shown(browser: WebDriver) -> tuple[str, str]:
    """The secret dialog: modal, Copy focused; (secret, token id)."""
    try:
        wait_for(browser, "#secret-dialog")
    except Exception:
        errors = [e.text for e in css(browser, "#form-error, #flash, #message, h1")]
        pytest.fail(f"no secret dialog; the page says {errors}")
    assert browser.execute_script(
        "return document.querySelector('#secret-dialog').matches(':modal')"
    )
    assert browser.execute_script("return document.activeElement.id") == "copy"
    secret = wait_for(browser, "#secret").get_attribute("value")
    href = wait_for(browser, "#secret-done").get_attribute("href")
    checked(browser)
    assert secret
    return secret, str(href).rsplit("/", 1)[1]


def detail(browser: WebDriver, world: ServeWorld, token_id: str) -> None:
    browser.get(f"{world.console}/tokens/{token_id}")
    wait_for(browser, "#token-name")
    checked(browser)


def token_id(browser: WebDriver, world: ServeWorld, name: str) -> str:
    browser.get(world.console + "/tokens")
    row = wait_for(browser, f"#tokens tr[data-name='{name}']")
    return str(row.get_attribute("data-token-id"))


def dialog(browser: WebDriver, name: str) -> None:
    """Open the confirmation dialog ``name`` by its button; it is modal."""
    wait_for(browser, f"#open-{name}").click()
    wait_for(browser, f"dialog#{name}")
    assert browser.execute_script(f"return document.getElementById('{name}').matches(':modal')")


def in_days(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%d")


# -- 1. sign-in --------------------------------------------------------------------------


def test_sign_in_wrong_token_and_sign_out(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    browser.get(world.console + "/tokens")
    wait_for(browser, "#token").send_keys("pgt_not-a-real-token")
    checked(browser)
    wait_for(browser, "#sign-in").click()
    assert "not valid" in wait_for(browser, "#login-error").text
    assert wait_for(browser, "#token").get_attribute("aria-invalid") == "true"
    js_errors(browser)  # the 401 answer of the sign-in POST is logged as a failed load

    sign_in(browser, world, manage)
    assert wait_for(browser, "#viewer").text == user.capitalize()
    assert names(browser) == ["console"]
    old = browser.get_cookie("patgate_console")
    assert old is not None
    assert old["httpOnly"]

    wait_for(browser, "#logout").click()
    wait_for(browser, "#token")
    assert browser.current_url.endswith("/console/login")
    fresh = browser.get_cookie("patgate_console")  # the login page's own new session
    assert fresh is None or fresh["value"] != old["value"]
    checked(browser)
    # The old session cookie no longer signs anybody in.
    r = httpx.get(world.console + "/tokens", cookies={"patgate_console": old["value"]})
    assert r.status_code == 303
    assert r.headers["location"].endswith("/console/login")


# -- 2. create with the default preset, the secret once --------------------------------


def test_create_default_shows_secret_once(browser: WebDriver, world: ServeWorld) -> None:
    _, manage = member(world)
    sign_in(browser, world, manage)
    screenshot(browser, "tokens-list")
    browser.get(world.console + "/tokens/new")
    wait_for(browser, "#name")
    assert wait_for(browser, "input[name=access][value=default]").is_selected()
    checked(browser)
    screenshot(browser, "token-create")

    secret, tid = create(browser, world, "ci-all", description="the CI")
    assert "ci-all" in wait_for(browser, "#secret-note").text
    wait_for(browser, "#copy").click()
    wait_text(browser, "#copy", "Copied")
    assert wait_text(browser, "#copy-status", "Copied").text == "Copied to the clipboard."
    screenshot(browser, "secret-dialog")
    checked(browser)
    assert world.status(secret) == 200
    assert world.status(secret, THREADS, "POST") == 200

    # The answer to the POST is not kept: a reload does not bring the secret back.
    browser.refresh()
    wait_for(browser, "h1")
    assert secret not in browser.page_source
    browser.get(browser.current_url)
    wait_for(browser, "h1")
    assert secret not in browser.page_source
    js_errors(browser)  # a re-sent one-time form answers 409 (logged as a failed load)

    detail(browser, world, tid)
    assert wait_for(browser, "#token-name").text == "ci-all"
    assert secret not in browser.page_source
    assert secret[:12] not in browser.page_source
    screenshot(browser, "token-detail")
    browser.get(world.console + "/tokens")
    assert sorted(names(browser)) == ["ci-all", "console"]
    assert secret not in browser.page_source
    checked(browser)


# -- 3. the other permission choices, and an expiry preset ------------------------------


def test_create_scopes_restricted_role_read_only(browser: WebDriver, world: ServeWorld) -> None:
    _, manage = member(world)
    sign_in(browser, world, manage)

    custom, tid = create(
        browser, world, "custom", access="scopes", scopes="threads:read", expiration="7d"
    )
    assert world.status(custom) == 200
    assert world.status(custom, THREADS) == 403
    detail(browser, world, tid)
    assert in_days(7) in wait_for(browser, "#token-expires").text
    assert [e.text for e in css(browser, "#scope-list code")] == ["threads:read"]

    listing, _ = create(browser, world, "matrix", access="restricted", ops=("threads:list",))
    assert world.status(listing, THREADS) == 200
    assert world.status(listing) == 403

    developer, tid = create(browser, world, "dev", access="role", role="Developer", expiration="1d")
    assert world.status(developer) == 200
    assert world.status(developer, THREADS, "POST") == 200
    detail(browser, world, tid)
    assert in_days(1) in wait_for(browser, "#token-expires").text

    reader, _ = create(browser, world, "reader", access="read")
    assert world.status(reader) == 200
    assert world.status(reader, THREADS) == 200
    assert world.status(reader, THREADS, "POST") == 403


# -- 4. bad input keeps what was typed ---------------------------------------------------


def test_bad_input_keeps_the_form(browser: WebDriver, world: ServeWorld) -> None:
    _, manage = member(world)
    sign_in(browser, world, manage)

    browser.get(world.console + "/tokens/new")
    wait_for(browser, "#description").send_keys("keep this text")
    wait_for(browser, "input[name=access][value=scopes]").click()
    wait_for(browser, "#scopes").send_keys("threads:read")
    wait_for(browser, "#create").click()
    wait_for(browser, "#form-error")
    js_errors(browser)  # the 4xx answer is logged as a failed load
    assert wait_for(browser, "#description").get_attribute("value") == "keep this text"
    assert wait_for(browser, "input[name=access][value=scopes]").is_selected()
    assert wait_for(browser, "#scopes").get_attribute("value") == "threads:read"
    assert browser.execute_script(UNLABELLED) == []

    create(browser, world, "taken")
    browser.get(world.console + "/tokens/new")
    wait_for(browser, "#name").send_keys("taken")
    wait_for(browser, "#description").send_keys("second one")
    wait_for(browser, "#create").click()
    error = wait_for(browser, "#form-error").text
    js_errors(browser)
    assert "taken" in error or "exists" in error or "already" in error, error
    assert wait_for(browser, "#name").get_attribute("value") == "taken"
    assert wait_for(browser, "#description").get_attribute("value") == "second one"

    browser.get(world.console + "/tokens")
    assert sorted(names(browser)) == ["console", "taken"]
    checked(browser)


# -- 5 + 8b. list filters; an expired token regenerated -----------------------------------


def test_list_filters_and_regenerate_expired(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    r = world.api(
        "POST",
        "/v1/tokens",
        manage,
        json={"name": "brief", "scopes": ["threads:read"], "expires_at": soon},
    )
    assert r.status_code == 201, r.text
    brief_id, brief_secret = r.json()["id"], r.json()["token"]
    world.token_for(user, ["threads:read"], name="alpha-one")
    world.token_for(user, ["threads:read"], name="alpha-two")
    gone = world.token_for(user, ["threads:read"], name="beta-gone")
    sign_in(browser, world, manage)
    bid = token_id(browser, world, "beta-gone")
    assert world.api("POST", f"/v1/tokens/{bid}/revoke", manage).status_code == 200
    world.until_status(gone, 401)
    _until(lambda: world.status(brief_secret) == 401, 5, "brief expiring")

    def filtered(status: str, q: str = "") -> list[str]:
        browser.get(world.console + "/tokens")
        choose(browser, "#status", status)
        search = wait_for(browser, "#q")
        search.clear()
        search.send_keys(q)
        with new_page(browser):
            wait_for(browser, "#filter").click()
        wait_for(browser, "#tokens, #no-tokens")
        checked(browser)
        return sorted(names(browser))

    assert filtered("") == ["alpha-one", "alpha-two", "beta-gone", "brief", "console"]
    assert filtered("active") == ["alpha-one", "alpha-two", "console"]
    assert filtered("revoked") == ["beta-gone"]
    assert filtered("expired") == ["brief"]
    assert filtered("", "alpha") == ["alpha-one", "alpha-two"]
    assert filtered("active", "two") == ["alpha-two"]
    assert filtered("revoked", "alpha") == []
    assert wait_for(browser, "#no-tokens").text == "No token matches."
    browser.get(world.console + "/tokens?status=expired")
    assert "Expired" in wait_for(browser, "#tokens tr[data-name=brief]").text

    detail(browser, world, brief_id)
    dialog(browser, "regenerate")
    assert css(browser, "#grace_period") == []  # no overlap for a token that is not active
    wait_for(browser, "#regenerate-submit").click()
    fresh, _ = secret_shown(browser)
    assert world.status(fresh) == 200
    assert world.status(brief_secret) == 401


# -- 6. edit, scopes ---------------------------------------------------------------------


def test_detail_edit_and_scopes(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    secret = world.token_for(user, ["threads:read", "threads:list"], name="editable")
    sign_in(browser, world, manage)
    tid = token_id(browser, world, "editable")
    detail(browser, world, tid)

    name = wait_for(browser, "#edit-name")
    name.clear()
    name.send_keys("renamed")
    wait_for(browser, "#edit-description").send_keys("now described")
    wait_for(browser, "#save-details").click()
    flash(browser, "Changes saved.")
    browser.refresh()
    assert wait_for(browser, "#token-name").text == "renamed"
    assert wait_for(browser, "#token-description").text == "now described"
    assert wait_for(browser, "#edit-description").get_attribute("value") == "now described"
    checked(browser)

    assert world.status(secret, THREADS, "POST") == 403
    choose(browser, "#resource", "threads")
    choose(browser, "#operation", "create")
    wait_for(browser, "#add-scope-submit").click()
    flash(browser, "Added threads:create.")
    until(world, secret, 200, THREADS, "POST")

    trash = wait_for(browser, "button[data-scope='threads:list']")
    assert trash.get_attribute("aria-label") == "Remove scope threads:list"
    trash.click()
    flash(browser, "Removed threads:list.")
    until(world, secret, 403, THREADS)
    assert world.status(secret) == 200
    codes = [e.text for e in css(browser, "#scope-list code")]
    assert sorted(codes) == ["threads:create", "threads:read"]

    dialog(browser, "clear-scopes")
    wait_for(browser, "#clear-scopes-submit").click()
    flash(browser, "All scopes removed")
    wait_for(browser, "#no-scopes")
    until(world, secret, 403)
    assert world.status(secret, THREADS, "POST") == 403
    assert world.status(secret, THREADS) == 403


# -- 7. revoke through the dialog --------------------------------------------------------


def test_revoke_cancel_then_confirm(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    secret = world.token_for(user, ["threads:read"], name="to-revoke")
    sign_in(browser, world, manage)
    detail(browser, world, token_id(browser, world, "to-revoke"))

    dialog(browser, "revoke")
    wait_for(browser, "dialog#revoke [data-close]").click()
    assert not browser.execute_script("return document.getElementById('revoke').open")
    assert world.status(secret) == 200
    assert "Active" in wait_for(browser, ".heading-row .badge").text

    dialog(browser, "revoke")
    wait_for(browser, "#revoke-submit").click()
    flash(browser, "Token to-revoke revoked.")
    assert "Revoked" in wait_for(browser, ".heading-row .badge").text
    world.until_status(secret, 401)
    browser.get(world.console + "/tokens")
    assert "Revoked" in wait_for(browser, "#tokens tr[data-name=to-revoke]").text
    checked(browser)


# -- 8a + 9. regenerate: a revoked token, and an active one with overlap ---------------


def test_regenerate_revoked_with_new_duration(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    old = world.token_for(user, ["threads:read"], name="comeback")
    sign_in(browser, world, manage)
    tid = token_id(browser, world, "comeback")
    assert world.api("POST", f"/v1/tokens/{tid}/revoke", manage).status_code == 200
    world.until_status(old, 401)

    detail(browser, world, tid)
    dialog(browser, "regenerate")
    choose(browser, "#regen-expiration", "7d")
    wait_for(browser, "#regenerate-submit").click()
    new, same = secret_shown(browser)
    assert same == tid
    assert world.status(new) == 200
    assert world.status(old) == 401
    wait_for(browser, "#secret-done").click()
    wait_for(browser, "#token-name")
    checked(browser)
    assert "Active" in wait_for(browser, ".heading-row .badge").text
    assert in_days(7) in wait_for(browser, "#token-expires").text


def test_rotation_grace_then_stop_previous(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    old = world.token_for(user, ["threads:read"], name="rotating")
    sign_in(browser, world, manage)
    detail(browser, world, token_id(browser, world, "rotating"))
    dialog(browser, "regenerate")
    choose(browser, "#grace_period", "3600")
    wait_for(browser, "#regenerate-submit").click()
    new, _ = secret_shown(browser)
    assert world.status(new) == 200
    assert world.status(old) == 200

    wait_for(browser, "#secret-done").click()
    assert "active" in wait_for(browser, "#previous-secret").text
    checked(browser)
    wait_for(browser, "#end-grace").click()
    flash(browser, "The previous secret no longer works.")
    world.until_status(old, 401)
    assert world.status(new) == 200


# -- 10. IP allowlist --------------------------------------------------------------------


def test_ip_allowlist(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    secret = world.token_for(user, ["threads:read"], name="fenced")
    sign_in(browser, world, manage)
    detail(browser, world, token_id(browser, world, "fenced"))
    wait_for(browser, "#allowed_ips").send_keys("10.9.8.7")
    wait_for(browser, "#save-allowlist").click()
    flash(browser, "IP allowlist saved.")
    assert "10.9.8.7" in wait_for(browser, "#facts").text
    world.until_status(secret, 403)

    wait_for(browser, "#allowed_ips").clear()
    wait_for(browser, "#save-allowlist").click()
    flash(browser, "The token works from any address now.")
    assert "any address" in wait_for(browser, "#facts").text
    world.until_status(secret, 200)


# -- 11. delete one, delete all ----------------------------------------------------------


def test_delete_one_and_delete_all(browser: WebDriver, world: ServeWorld) -> None:
    user, manage = member(world)
    one = world.token_for(user, ["threads:read"], name="first")
    others = [world.token_for(user, ["threads:read"], name=n) for n in ("second", "third")]
    sign_in(browser, world, manage)
    detail(browser, world, token_id(browser, world, "first"))
    dialog(browser, "delete")
    wait_for(browser, "#delete-submit").click()
    flash(browser, "Token first deleted.")
    assert browser.current_url.endswith("/console/tokens")
    assert sorted(names(browser)) == ["console", "second", "third"]
    world.until_status(one, 401)

    dialog(browser, "delete-all")
    assert "you are signed out" in wait_for(browser, "#delete-all-note").text
    submit = wait_for(browser, "#delete-all-submit")
    assert not submit.is_enabled()
    confirm = wait_for(browser, "#delete-all-confirm")
    confirm.send_keys("delete al")
    assert not submit.is_enabled()
    confirm.send_keys("l")
    assert submit.is_enabled()
    submit.click()
    # Every token of the user's goes, the console's own sign-in token with them.
    wait_text(browser, "#flash", "Your session ended")
    assert browser.current_url.endswith("/console/login")
    checked(browser)
    for secret in [*others, manage]:
        world.until_status(secret, 401)
    again = world.token_for(user, MANAGE, name="again")
    sign_in(browser, world, again)
    assert names(browser) == ["again"]


# -- 12. phone width, keyboard -----------------------------------------------------------


def test_phone_width_and_keyboard(browser: WebDriver, world: ServeWorld) -> None:
    from selenium.webdriver.common.keys import Keys

    user, manage = member(world)
    world.token_for(user, ["threads:read"], name="a-rather-long-token-name-for-a-phone")
    sign_in(browser, world, manage)

    set_viewport(browser, *PHONE)
    browser.refresh()
    wait_for(browser, "#tokens")
    assert browser.execute_script("return window.innerWidth") == PHONE[0]
    assert browser.execute_script(NO_SIDE_SCROLL)
    screenshot(browser, "tokens-phone")
    browser.get(world.console + "/tokens/new")
    wait_for(browser, "#name")
    assert browser.execute_script(NO_SIDE_SCROLL)
    wait_for(browser, "input[name=access][value=restricted]").click()
    assert browser.execute_script(NO_SIDE_SCROLL)
    checked(browser)
    screenshot(browser, "token-create-phone")
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # Keyboard only: Tab to "+ Create token", Enter, type, Enter.
    browser.get(world.console + "/tokens")
    wait_for(browser, "#create-token")
    body = browser.find_element("css selector", "body")
    body.send_keys(Keys.TAB)
    for _ in range(30):
        if browser.execute_script("return document.activeElement.id") == "create-token":
            break
        browser.switch_to.active_element.send_keys(Keys.TAB)
    else:
        pytest.fail("Tab never reached + Create token")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, "#name")
    wait_for(browser, "#name").send_keys("keyboard", Keys.ENTER)
    secret, tid = secret_shown(browser)  # Copy has focus
    assert world.status(secret) == 200

    detail(browser, world, tid)
    opener = wait_for(browser, "#open-revoke")
    browser.execute_script("arguments[0].focus()", opener)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, "dialog#revoke")
    assert browser.execute_script("return document.getElementById('revoke').open")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _until(
        lambda: not browser.execute_script("return document.getElementById('revoke').open"),
        2,
        "Escape closing the dialog",
    )
    assert browser.execute_script("return document.activeElement.id") == "open-revoke"
    assert world.status(secret) == 200
    checked(browser)
