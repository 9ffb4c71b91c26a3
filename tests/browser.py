"""A real Chromium for tests: Debian's `chromium` package driven by Playwright (sync API).

Playwright's own browser download is never used (no `playwright install`): we launch the system
binary found on PATH, headless, with a fresh profile directory per launch (Playwright's default)
and the background services that would reach the network turned off.

    from browser import chromium_browser, screenshot   # tests/ is on sys.path under pytest

    def test_page(chromium_browser):
        context = chromium_browser.new_context()
        page = context.new_page()

A test skips, with the reason, only when chromium or the playwright package is not installed
(`make test` installs both: Debian's chromium and the `app` extra)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # gitignored
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright):
    """A headless Chromium `Browser` from Debian's binary. Playwright starts it on a fresh temporary
    user-data directory (removed when the browser closes); make one `browser.new_context()` per
    test or per user so cookies do not leak between them. Skips the calling test when chromium is
    not installed."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; `make test` installs it)")
    return playwright.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def chromium_browser():
    """One Chromium `Browser` per test module (a launch costs seconds); close the contexts you open."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                 "'instructkit[app]')")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/ and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
