"""The SSE example in a real headless browser.

``examples/sse.py`` serves a page whose ``EventSource`` renders each event
into a list.  Headless Chromium (the Debian ``chromium`` package, driven by
Playwright) loads it from the real worker; the events must show up in the
DOM in order, and once the tab is closed the worker must run the
generator's ``finally`` (counted by ``/stats``) promptly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from .conftest import EXAMPLES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing and was not installed (`make system-deps` installs "
        "the Debian chromium package)",
    ),
    pytest.mark.timeout(60),
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=30_000,
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_for_stats(
    url: str, done: Callable[[dict[str, int]], bool], timeout: float
) -> dict[str, int]:
    """Poll ``/stats`` until ``done(stats)`` holds; return the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, int] = httpx.get(f"{url}/stats", timeout=2).json()
        if done(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_sse_page_renders_events_and_closing_the_tab_ends_the_stream(gunicorn, browser):
    server = gunicorn("sse:app", cwd=EXAMPLES)
    page = browser.new_page()
    page.set_default_timeout(10_000)
    try:
        response = page.goto(server.url + "/", wait_until="load")
        assert response is not None and response.status == 200

        # The page appends one <li> per event (0.2 s apart) and counts them in the title.
        page.wait_for_function("document.querySelectorAll('#events li').length >= 3")
        # One snapshot: events keep arriving while the test reads.
        items, title = page.evaluate(
            "[[...document.querySelectorAll('#events li')].map((li) => li.textContent),"
            " document.title]"
        )
        assert items[:3] == [f"tick {n} for 127.0.0.1" for n in range(3)], items
        assert len(set(items)) == len(items), items  # no reconnect replayed an event
        assert title == f"received {len(items)}"

        stats = httpx.get(f"{server.url}/stats", timeout=2).json()
        assert stats["opened"] == 1 and stats["closed"] == 0, stats
        assert stats["sent"] >= 3, stats
    finally:
        closed_at = time.monotonic()
        page.close()

    # The browser is still running: only the tab went away, taking its stream with it.
    stats = wait_for_stats(server.url, lambda s: s["closed"] >= 1, timeout=2.0)
    elapsed = time.monotonic() - closed_at
    assert stats["opened"] == 1 and stats["closed"] == 1, (stats, elapsed)
    assert elapsed < 2.0, elapsed

    # Nothing keeps producing for the client that left.
    sent = stats["sent"]
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/stats", timeout=2).json()["sent"] == sent
