"""A real headless browser for the console tests: Debian's chromium driven by Selenium
through Debian's chromium-driver (both installed by .ci/install-tools), never Selenium
Manager (which would try to download a browser and a driver).

The fixtures (tests/gateway/console/conftest.py) start one browser per session;
these helpers are what a test does with it::

    with serving(app) as base:                    # the app on a loopback port, in a thread
        browser.get(f"{base}/console/")
        wait_for(browser, "button#go").click()
        wait_text(browser, "#out", "done")
        screenshot(browser, "console-done")       # build/screenshots/console-done.png
        assert js_errors(browser) == []           # no JS error, no CSP violation
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anyio.from_thread import start_blocking_portal
from uvicorn.config import LifespanType

from tests.middleware._servers import serve

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError as exc:  # the fixtures skip with this reason
    SELENIUM_MISSING: str | None = f"{exc} (pip install -e '.[test]')"
else:
    SELENIUM_MISSING = None

if TYPE_CHECKING:
    from selenium.webdriver import Chrome
    from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)
PHONE = (390, 844)  # an iPhone 12-15 sized viewport, CSS pixels
ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = ROOT / "build" / "screenshots"  # build/ is gitignored

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container: the setuid/namespace sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers: shared memory in /tmp
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    # No traffic of the browser's own: a test run talks to 127.0.0.1 only.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",  # no keyring prompt/daemon
)


class BrowserUnavailable(Exception):
    """Why there is no browser; the fixtures turn it into a visible skip."""


def unavailable() -> str | None:
    """The reason the console browser tests cannot run here, or None."""
    if SELENIUM_MISSING is not None:
        return f"console browser tests: selenium not importable: {SELENIUM_MISSING}"
    if not CHROMIUM.is_file():
        return (
            f"console browser tests: {CHROMIUM} not found "
            "(install Debian chromium: .ci/install-tools)"
        )
    if not CHROMEDRIVER.is_file():
        return (
            f"console browser tests: {CHROMEDRIVER} not found "
            "(install Debian chromium-driver: .ci/install-tools)"
        )
    return None


def start_chrome(user_data_dir: Path) -> Chrome:
    """A headless chromium with a fresh profile in ``user_data_dir``, window 1280x900,
    browser console captured (``js_errors``). Raises ``BrowserUnavailable``."""
    reason = unavailable()
    if reason is not None:
        raise BrowserUnavailable(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path skips Selenium Manager; SE_OFFLINE forbids its downloads
    # should anything still reach it.
    os.environ.setdefault("SE_OFFLINE", "true")
    service = Service(executable_path=str(CHROMEDRIVER))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        first = (exc.msg or str(exc)).strip().splitlines()[0].split("; For documentation")[0]
        raise BrowserUnavailable(f"console browser tests: chromium did not start: {first}") from exc
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(10)
    return driver


def reset(driver: Chrome) -> None:
    """A clean browser for the next test: blank page, no cookies (of any origin: the
    CDP call, not ``delete_all_cookies``, which only sees the current page's), no
    cache, the default viewport, an empty console log."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    console(driver)  # reading drains it


def set_viewport(driver: Chrome, width: int, height: int, *, mobile: bool = True) -> None:
    """Emulate a ``width`` x ``height`` CSS-pixel viewport (``mobile``: a phone's meta
    viewport and touch), until the next test's ``reset``. ``PHONE`` is a phone's size.
    Through CDP, not ``set_window_size``: headless windows have no minimum width."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def _left_document(exc: WebDriverException) -> bool:
    # Chrome answers a node of a document being left (a form submit or link loading the
    # next page) with a plain inspector error rather than a stale element.
    return "does not belong to the document" in str(exc)


def _across_navigation(condition: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``condition`` polled through a navigation: a node of the page being left counts
    as "not yet" (the next poll reads the new page), as a stale element already does
    inside Selenium's own conditions. Every wait_* below reads through it, so an action
    that loads a new page needs no special care before waiting for what it shows."""

    def poll(driver: Any) -> Any:
        try:
            return condition(driver)
        except WebDriverException as exc:
            if _left_document(exc):
                return False
            raise

    return poll


def wait_for(driver: Chrome, css: str, timeout: float = 5.0) -> WebElement:
    """The first element matching ``css`` once it is visible."""
    element: WebElement = WebDriverWait(driver, timeout).until(
        _across_navigation(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
        ),
        f"no visible {css!r} after {timeout}s",
    )
    return element


@contextlib.contextmanager
def new_page(driver: Chrome, timeout: float = 5.0) -> Iterator[None]:
    """The block's action (a form submit) loads a new document: wait until the old one
    is gone, so nothing after it finds an element of the page being left — which races
    the navigation ("Node with given id does not belong to the document")."""
    old = driver.find_element(By.CSS_SELECTOR, "html")
    yield

    def gone(_: object) -> bool:
        # Chrome answers a node of a left document either as a stale element or with a
        # plain inspector error ("... does not belong to the document"): both mean gone.
        try:
            return bool(expected_conditions.staleness_of(old)(driver))
        except WebDriverException as exc:
            if _left_document(exc):
                return True
            raise

    WebDriverWait(driver, timeout).until(gone, f"no new page within {timeout}s")


def wait_text(driver: Chrome, css: str, text: str, timeout: float = 5.0) -> WebElement:
    """The element matching ``css`` once its text contains ``text``."""
    WebDriverWait(driver, timeout).until(
        _across_navigation(
            expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
        ),
        f"{css!r} never contained {text!r} within {timeout}s",
    )
    return driver.find_element(By.CSS_SELECTOR, css)


def screenshot(driver: Chrome, name: str) -> Path:
    """Save the viewport as ``<name>.png`` in ``$PATGATE_SCREENSHOTS`` (default
    build/screenshots/ in the repository); returns the file."""
    folder = Path(os.environ.get("PATGATE_SCREENSHOTS") or SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "-", name) + ".png")
    path.write_bytes(driver.get_screenshot_as_png())
    return path


def console(driver: Chrome) -> list[dict[str, Any]]:
    """The browser console entries since the last call (reading drains the log)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def js_errors(driver: Chrome) -> list[str]:
    """The SEVERE console entries since the last call: uncaught exceptions, CSP
    violations ("Refused to execute inline script ..."), failed loads (a 404 script)."""
    return [entry["message"] for entry in console(driver) if entry["level"] == "SEVERE"]


@contextlib.contextmanager
def serving(app: Any, *, lifespan: LifespanType = "on") -> Iterator[str]:
    """Serve the ASGI ``app`` on a fresh loopback port (tests/middleware/_servers.py's
    uvicorn) on an event loop in a background thread, so the blocking Selenium calls of a
    plain (sync) test never stall it; yields the base URL ``http://127.0.0.1:<port>``."""
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(serve(app, lifespan=lifespan)) as port,
    ):
        yield f"http://127.0.0.1:{port}"
