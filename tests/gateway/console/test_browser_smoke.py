"""The console tests' browser itself (issue 15): a real headless chromium loads pages from
a real loopback server, runs their scripts under a strict CSP, and reports what the
console reports — so a console test that passes has really been clicked through."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.gateway.console._browser import (
    PHONE,
    js_errors,
    screenshot,
    serving,
    set_viewport,
    wait_for,
    wait_text,
)

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

CSP = "default-src 'self'; script-src 'self'; style-src 'self'"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>smoke</title><script src="/app.js" defer></script></head>
<body><button id="go" type="button">Go</button><p id="out">waiting</p></body></html>
"""

SCRIPT = """document.getElementById("go").addEventListener("click", () => {
  document.getElementById("out").textContent = `clicked at ${window.innerWidth}px`;
  document.cookie = "seen=1; path=/";
});
"""

INLINE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>inline</title></head>
<body><p id="out">untouched</p>
<script>document.getElementById("out").textContent = "inline ran";</script></body></html>
"""


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP})


async def script(request: Request) -> Response:
    return Response(SCRIPT, media_type="text/javascript")


async def inline(request: Request) -> Response:
    return HTMLResponse(INLINE, headers={"Content-Security-Policy": CSP})


async def favicon(request: Request) -> Response:
    return Response(status_code=204)  # else a 404 for it lands in the console as SEVERE


app = Starlette(
    routes=[
        Route("/", page),
        Route("/app.js", script),
        Route("/inline", inline),
        Route("/favicon.ico", favicon),
    ]
)


def test_click_runs_external_script_under_csp(browser: Chrome) -> None:
    with serving(app) as base:
        browser.get(f"{base}/")
        wait_for(browser, "#go").click()
        assert wait_text(browser, "#out", "clicked").text == "clicked at 1280px"
        assert browser.get_cookie("seen") is not None
        shot = screenshot(browser, "smoke-clicked")
        assert shot.read_bytes().startswith(b"\x89PNG")

        # A phone's width, for the same page.
        set_viewport(browser, *PHONE)
        browser.refresh()
        wait_for(browser, "#go").click()
        assert wait_text(browser, "#out", "clicked").text == f"clicked at {PHONE[0]}px"
        screenshot(browser, "smoke-phone")
        assert js_errors(browser) == []


def test_next_test_starts_clean(browser: Chrome) -> None:
    """The previous test's cookie (another port, same host: cookies ignore ports) and
    phone viewport are gone."""
    with serving(app) as base:
        browser.get(f"{base}/")
        assert browser.get_cookies() == []
        assert browser.execute_script("return window.innerWidth") == 1280
        assert js_errors(browser) == []


def test_csp_violation_is_reported(browser: Chrome) -> None:
    with serving(app) as base:
        browser.get(f"{base}/inline")
        assert wait_for(browser, "#out").text == "untouched"
        errors = js_errors(browser)
        assert len(errors) == 1, errors
        assert "Content Security Policy" in errors[0]
        assert "script-src 'self'" in errors[0]
