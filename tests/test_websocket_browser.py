"""WebSocket in a real headless browser.

``tests/apps/ws_app.py`` serves a page whose script opens ``new WebSocket``
to its own origin (``/ws/track``), sends messages and lists the echoes.
Headless Chromium (driven by Playwright) loads it from the real worker,
over plain HTTP and over TLS (``wss:``); closing the tab must end the
server-side handler promptly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from .conftest import Gunicorn, launch_chromium, needs_chromium, serving, tls_files

pytestmark = [needs_chromium, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gunicorn]]:
    tls = tls_files(tmp_path_factory.mktemp("wsbrowsercerts"))
    tls_args = ("--certfile", str(tls.cert), "--keyfile", str(tls.key))
    with serving(
        {
            "http": Gunicorn("ws_app:app", wait=False),
            "https": Gunicorn("ws_app:app", *tls_args, wait=False),
        }
    ) as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


def events(base: str) -> list[str]:
    # verify=False: the HTTPS arbiter's test CA is the browser's concern here.
    return list(httpx.get(f"{base}/events", timeout=2, verify=False).json()["events"])


def wait_for_event(base: str, prefix: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = events(base)
        if any(e.startswith(prefix) for e in seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def echoes(page: Page) -> list[str]:
    return list(
        page.evaluate("[...document.querySelectorAll('#echoes li')].map((li) => li.textContent)")
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_page_websocket_echoes_and_closing_the_tab_ends_the_handler(servers, browser, scheme):
    server = servers[scheme]
    base = f"{scheme}://127.0.0.1:{server.port}"
    tag = uuid.uuid4().hex
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        response = page.goto(f"{base}/?tag={tag}", wait_until="load")
        assert response is not None and response.status == 200
        # The script sends three messages once open; each echo becomes an <li>.
        page.wait_for_function("document.querySelectorAll('#echoes li').length >= 3")
        assert echoes(page) == ["hello 0", "hello 1", "hello 2"]
        assert page.evaluate("window.wsState") == "open"
        # A larger message, in several frames.
        page.evaluate("window.sendText('x'.repeat(300000) + 'end')")
        page.wait_for_function("document.querySelectorAll('#echoes li').length >= 4")
        big = echoes(page)[3]
        assert len(big) == 300003 and big.endswith("end")
        assert f"open {tag}" in events(base)
        assert f"finally {tag}" not in events(base)
    finally:
        closed_at = time.monotonic()
        page.close()
    # Only the tab went away, taking its WebSocket with it.
    seen = wait_for_event(base, f"finally {tag}", timeout=2.0)
    elapsed = time.monotonic() - closed_at
    assert f"finally {tag}" in seen, seen
    assert elapsed < 2.0, elapsed
    # The handler's receive raised ConnectionClosed: Chromium sends 1001
    # ("going away") as the page unloads; 1006 were the TCP connection cut first.
    assert f"closed {tag} 1001" in seen or f"closed {tag} 1006" in seen, seen
    context.close()
