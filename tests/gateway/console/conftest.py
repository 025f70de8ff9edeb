"""The console's real browser (tests/gateway/console/_browser.py): one headless chromium
per session, handed to each test clean. Without chromium, chromium-driver or selenium
every test using it skips with the reason (shown by ``-ra``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.gateway.console._browser import BrowserUnavailable, reset, start_chrome

if TYPE_CHECKING:
    from selenium.webdriver import Chrome


@pytest.fixture(scope="session")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    """The session's headless chromium (a ``selenium.webdriver.Chrome``), fresh profile."""
    try:
        driver = start_chrome(tmp_path_factory.mktemp("chromium-profile"))
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome: Chrome) -> Chrome:
    """The session's browser on about:blank: no cookies, no cache, default viewport,
    empty console log — nothing left over from the previous test."""
    reset(chrome)
    return chrome
