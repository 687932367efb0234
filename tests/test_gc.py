"""What a request leaves for Python's cyclic garbage collector.

A request that leaves reference cycles behind is freed only by the cyclic
GC; with thousands in flight that made full collections walk every waiting
request (a sixth of the loop's time with 5,000 requests awaiting 1 s, see
``flask_async_worker.workers.tune_gc``).  Under a real worker, with the
collector saving what it finds instead of freeing it, the server's own path
must leave nothing, and the worker's GC tuning must be in place.
"""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import APPS


def gc_state(client: httpx.Client) -> dict[str, Any]:
    return client.get("/gc").json()  # type: ignore[no-any-return]


def test_async_requests_leave_no_cycles_and_gc_is_tuned(gunicorn):
    server = gunicorn("gc_app:app", "-c", str(APPS / "gc_conf.py"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        state = gc_state(client)
        # The worker raised the first threshold and froze start-up objects.
        assert state["threshold"][0] == 7000
        assert state["frozen"] > 1000
        for _ in range(300):
            assert client.get("/async").text == "async"
        state = gc_state(client)
    # 300 requests, and no more than the first sight of each path leaves:
    # the route decision is made once with Werkzeug's matcher (its recursive
    # closure, 8 objects, see below) and cached.
    assert state["garbage"] < 30, state


def test_sync_requests_leave_no_cycles_either(gunicorn):
    """Sync views run through Flask's own wsgi_app, which matches the URL
    again with Werkzeug's StateMachineMatcher, whose recursive closure is a
    cycle per match (8 objects).  In an app the adapter routes (one with
    async views, like this one) Flask takes the router's match instead, so
    that cycle is gone as well."""
    server = gunicorn("gc_app:app", "-c", str(APPS / "gc_conf.py"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        gc_state(client)
        for _ in range(300):
            assert client.get("/sync").text == "sync"
        state = gc_state(client)
    assert state["garbage"] < 30, state


def test_an_app_that_sets_its_own_threshold_keeps_it(gunicorn, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(
        "import gc\n\ndef post_worker_init(worker):\n    gc.set_threshold(1234, 5, 6)\n"
    )
    server = gunicorn("gc_app:app", "-c", str(conf))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert gc_state(client)["threshold"] == [1234, 5, 6]
