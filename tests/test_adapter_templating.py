"""Jinja's async rendering from async views (render_template_async & co)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask import Blueprint, Flask, Response, g, render_template_string, request
from flask.signals import before_render_template, template_rendered
from jinja2 import DictLoader

from flask_async_worker import (
    render_template_async,
    render_template_string_async,
    stream_template_async,
)
from flask_async_worker.adapter import FlaskAdapter

TEMPLATES = {
    "rows.html": (
        "<h1>{{ title }} for {{ user }}</h1>"
        "{% for row in rows %}<p>{{ row }}</p>{% endfor %}"
        "<a href='{{ url_for('rows') }}'>{{ request.args.get('q', '-') }}</a>"
    ),
    "bp.html": "{{ section }}/{{ user }}/{{ title }}",
    "slow.html": "{% for row in rows %}{{ row }};{% endfor %}",
}


async def fetch_rows(n: int, delay: float = 0.0) -> AsyncIterator[str]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield f"row-{i}"


def create_app(log: list[Any]) -> Flask:
    app = Flask(__name__)
    app.jinja_loader = DictLoader(TEMPLATES)

    @app.context_processor
    async def user() -> dict[str, Any]:
        await asyncio.sleep(0.01)  # really waits: Flask's render_template cannot
        return {"user": "ada", "title": "from processor"}

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        log.append(("teardown", request.path))

    @app.get("/rows")
    async def rows() -> str:
        return await render_template_async("rows.html", title="Rows", rows=fetch_rows(3, 0.001))

    @app.get("/string")
    async def string() -> str:
        g.greeting = "hi"
        return await render_template_string_async("{{ g.greeting }} {{ user }}")

    @app.get("/stream")
    async def stream() -> Response:
        n = int(request.args.get("n", "3"))
        return Response(stream_template_async("slow.html", rows=fetch_rows(n, 0.05)))  # type: ignore[arg-type]

    @app.get("/slow")
    async def slow() -> str:
        return await render_template_async("slow.html", rows=fetch_rows(2, 0.2))

    @app.get("/sync-render-in-async-view")
    async def sync_render() -> str:
        return render_template_string("{{ user }}")

    bp = Blueprint("bp", __name__, url_prefix="/bp")

    @bp.context_processor
    def section() -> dict[str, Any]:
        return {"section": "blueprint", "title": "from blueprint"}

    @bp.get("/page")
    async def page() -> str:
        return await render_template_async("bp.html")

    app.register_blueprint(bp)
    return app


@contextlib.asynccontextmanager
async def client(app: Flask) -> AsyncIterator[httpx.AsyncClient]:
    pool = ThreadPoolExecutor(4)
    transport = httpx.ASGITransport(app=FlaskAdapter(app, executor=pool))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http
    finally:
        pool.shutdown(wait=True)


async def test_async_context_processor_and_async_iteration_in_the_template() -> None:
    log: list[Any] = []
    async with client(create_app(log)) as http:
        r = await http.get("/rows?q=query")
    assert r.status_code == 200, r.text
    # Values passed to render win over the processor's, as in Flask.
    assert r.text == (
        "<h1>Rows for ada</h1><p>row-0</p><p>row-1</p><p>row-2</p><a href='/rows'>query</a>"
    )
    assert log == [("teardown", "/rows")]


async def test_blueprint_processors_run_after_the_app_ones() -> None:
    async with client(create_app([])) as http:
        r = await http.get("/bp/page")
    assert r.text == "blueprint/ada/from blueprint"


async def test_render_template_string_async_sees_g() -> None:
    async with client(create_app([])) as http:
        r = await http.get("/string")
    assert r.text == "hi ada"


async def test_flask_render_template_cannot_wait_for_a_processor() -> None:
    """Why the async variants exist: Flask's own rendering runs a waiting
    coroutine on the loop thread, which cannot be done without blocking."""
    async with client(create_app([])) as http:
        r = await http.get("/sync-render-in-async-view")
    assert r.status_code == 500


async def test_signals_fire_once_each_with_sync_and_async_receivers() -> None:
    app = create_app([])
    seen: list[tuple[str, str | None]] = []

    def before(sender: Flask, template: Any, context: dict[str, Any], **kw: Any) -> None:
        seen.append(("before", template.name))

    async def after(sender: Flask, template: Any, context: dict[str, Any], **kw: Any) -> None:
        await asyncio.sleep(0)
        seen.append(("after", template.name))

    before_render_template.connect(before, app)
    template_rendered.connect(after, app)
    try:
        async with client(app) as http:
            r = await http.get("/bp/page")
        assert r.status_code == 200
    finally:
        before_render_template.disconnect(before, app)
        template_rendered.disconnect(after, app)
    assert seen == [("before", "bp.html"), ("after", "bp.html")]


async def test_stream_template_async_streams_while_rows_arrive() -> None:
    # httpx's ASGITransport collects a whole body: the ASGI messages are
    # recorded directly to see the pieces leave as the rows arrive.
    log: list[Any] = []
    pool = ThreadPoolExecutor(2)
    adapter = FlaskAdapter(create_app(log), executor=pool)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"n=4",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 1234),
        "server": ("localhost", 80),
    }
    started = time.monotonic()
    pieces: list[tuple[float, bytes]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            pieces.append((time.monotonic() - started, message["body"]))

    try:
        await adapter(scope, receive, send)
    finally:
        pool.shutdown(wait=True)
    assert b"".join(body for _, body in pieces) == b"row-0;row-1;row-2;row-3;"
    assert len(pieces) >= 4, "the template was rendered whole, not streamed"
    # The first piece left before the last row was fetched (4 x 50 ms).
    assert pieces[0][0] < pieces[-1][0] - 0.1
    # The request context lived until the stream ended, then was torn down.
    assert log == [("teardown", "/stream")]


async def test_waiting_templates_render_concurrently() -> None:
    """50 renders that each wait 0.4 s inside the template: the loop is
    never blocked, so together they take about as long as one."""
    async with client(create_app([])) as http:
        started = time.monotonic()
        responses = await asyncio.gather(*(http.get("/slow") for _ in range(50)))
        elapsed = time.monotonic() - started
    assert all(r.text == "row-0;row-1;" for r in responses)
    assert elapsed < 4.0, f"50 waiting renders took {elapsed:.1f}s: they ran one by one"


def test_overlay_follows_a_replaced_jinja_env() -> None:
    from flask_async_worker.adapter.templating import async_environment

    app = create_app([])
    first = async_environment(app)
    assert first.is_async and async_environment(app) is first
    assert first.globals is app.jinja_env.globals
    del app.__dict__["jinja_env"]  # Flask's cached property: rebuilt on next access
    assert async_environment(app) is not first


@pytest.mark.parametrize("path", ["/rows", "/bp/page", "/stream"])
async def test_under_flask_test_client_class(path: str) -> None:
    """The drop-in test client goes through the adapter as well."""
    from flask_async_worker.testing import AdapterTestClient

    app = create_app([])
    app.test_client_class = AdapterTestClient
    r = await asyncio.to_thread(lambda: app.test_client().get(path))
    assert r.status_code == 200
    assert b"row-0" in r.data or b"blueprint" in r.data


async def test_a_stream_never_sent_still_tears_its_request_down() -> None:
    """HEAD: the body is never iterated; the context the stream holds is
    popped all the same, once."""
    log: list[Any] = []
    async with client(create_app(log)) as http:
        r = await http.head("/stream")
        assert r.status_code == 200 and r.content == b""
        await http.get("/bp/page")
    assert log == [("teardown", "/stream"), ("teardown", "/bp/page")]
