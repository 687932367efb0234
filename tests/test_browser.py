"""The SSE example in a real headless browser, over HTTP/1.1 and HTTP/2.

``examples/sse.py`` serves a page whose ``EventSource`` renders each event
into a list.  Headless Chromium (the Debian ``chromium`` package, driven by
Playwright) loads it from the real worker; the events must show up in the
DOM in order, and once the tab is closed the worker must run the
generator's ``finally`` (counted by ``/stats``) promptly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from .conftest import EXAMPLES, launch_chromium, needs_chromium, tls_files

pytestmark = [needs_chromium, pytest.mark.timeout(60)]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
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


def test_sse_over_http2_in_the_browser_and_tab_close_resets_only_its_stream(
    gunicorn, browser, tmp_path
):
    """The same page over TLS with HTTP/2 negotiated by ALPN.  Closing the
    tab does not close the browser's connection (HTTP/2 shares it): Chromium
    resets the EventSource's stream, and that alone must end the generator."""
    tls = tls_files(tmp_path)
    server = gunicorn(
        "sse:app",
        "--http-protocols",
        "h2,h1",
        "--certfile",
        str(tls.cert),
        "--keyfile",
        str(tls.key),
        cwd=EXAMPLES,
    )
    url = f"https://127.0.0.1:{server.port}"

    def stats() -> dict[str, int]:
        # verify=False: the test CA is the browser's problem, not this check's.
        with httpx.Client(http2=True, verify=False, timeout=2) as client:
            response = client.get(f"{url}/stats")
            assert response.http_version == "HTTP/2"
            return response.json()  # type: ignore[no-any-return]

    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        response = page.goto(url + "/", wait_until="load")
        assert response is not None and response.status == 200
        protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
        page.wait_for_function("document.querySelectorAll('#events li').length >= 3")
        items = page.evaluate(
            "[...document.querySelectorAll('#events li')].map((li) => li.textContent)"
        )
        assert items[:3] == [f"tick {n} for 127.0.0.1" for n in range(3)], items
        assert stats()["opened"] == 1
    finally:
        closed_at = time.monotonic()
        page.close()
    deadline = time.monotonic() + 2.0
    current = stats()
    while current["closed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        current = stats()
    assert current["opened"] == 1 and current["closed"] == 1, current
    assert time.monotonic() - closed_at < 2.0
    context.close()
