"""``ensure_sync`` from sync code, and apps served on the thread path.

* Sync decorators around async views (Flask-Login's ``login_required``
  shape, flaskr's ``view(**kwargs)`` shape, ``MethodView.decorators``) and
  extensions calling ``current_app.ensure_sync`` from a sync view get the
  coroutine run on the worker's loop (``adapter.binding.loop``), never on a
  new loop per call.
* A decorator's own async helper (a permission check) gives the decorator
  its *result*, never an un-awaited coroutine.
* An app whose ``wsgi_app`` is wrapped (``ProxyFix``,
  ``DispatcherMiddleware``) keeps its middleware for async views too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask_login  # type: ignore[import-untyped]
import httpx
import pytest
from flask import Flask, current_app, g, make_response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_async_worker.adapter import FlaskAdapter, run_sync
from flask_async_worker.adapter.bridge import BridgedApp
from flask_async_worker.wsgi import WSGIAdapter

from .apps import flask_sem_bridge, flask_sem_middleware


@contextlib.asynccontextmanager
async def adapted(
    app: Flask, **client: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FlaskAdapter]]:
    pool = ThreadPoolExecutor(8)
    adapter = FlaskAdapter(app, executor=pool)
    transport = httpx.ASGITransport(app=adapter, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", **client
        ) as http:
            yield http, adapter
    finally:
        pool.shutdown(wait=True)


# -- sync wrappers around async views -----------------------------------------------------


async def test_login_required_around_async_view_runs_on_the_worker_loop() -> None:
    async with adapted(flask_sem_bridge.create_app()) as (http, adapter):
        r = await http.get("/wrapped", params={"user": "u", "q": "1"})
        assert r.status_code == 200
        seen = r.json()
        assert seen["loop_is_worker_loop"] is True
        assert seen["loop_id"] == id(adapter.binding.loop)
        assert seen["q"] == "1"
        # functools.wraps shows the async view: served natively, one thread.
        assert seen["decorator_thread"] == seen["thread"] == adapter.binding.thread
        r = await http.get("/wrapped")
        assert (r.status_code, r.text) == (401, "login first")


async def test_decorator_without_wraps_runs_in_a_pool_thread_and_view_on_the_loop() -> None:
    async with adapted(flask_sem_bridge.create_app()) as (http, adapter):
        rs = await asyncio.gather(
            *(http.get("/unwrapped", params={"user": "u", "q": str(i)}) for i in range(8))
        )
        for i, r in enumerate(rs):
            seen = r.json()
            assert seen["q"] == str(i)
            assert seen["decorator_thread"] != adapter.binding.thread  # an executor thread
            assert seen["thread"] == adapter.binding.thread  # the coroutine: on the loop
            assert seen["loop_is_worker_loop"] is True
        assert {r.json()["loop_id"] for r in rs} == {id(adapter.binding.loop)}


async def test_extension_calling_ensure_sync_from_a_sync_view() -> None:
    async with adapted(flask_sem_bridge.create_app()) as (http, adapter):
        for q in ("a", "b"):
            r = await http.get("/ext", params={"q": q})
            assert r.status_code == 200
            body = r.json()
            assert body["view_thread"] != adapter.binding.thread
            assert [c["tag"] for c in body["calls"]] == [
                "ensure_sync0",
                "ensure_sync1",
                "ensure_sync2",
                "async_to_sync",
            ]
            for call in body["calls"]:
                # the request context travelled with the coroutine
                assert call["q"] == q
                assert call["loop_is_worker_loop"] is True
                assert call["thread"] == adapter.binding.thread
            # never a new loop per call
            assert {c["loop_id"] for c in body["calls"]} == {id(adapter.binding.loop)}


async def test_flaskr_decorator_returning_the_coroutine_unawaited() -> None:
    async with adapted(flask_sem_bridge.create_app()) as (http, _):
        r = await http.get("/flaskr", params={"user": "bob"})
        assert r.status_code == 200
        assert r.json()["user"] == "bob"
        assert r.json()["loop_is_worker_loop"] is True
        r = await http.get("/flaskr")
        assert r.status_code == 302
        assert r.headers["location"] == "/login"


async def test_methodview_decorators_with_async_and_sync_handlers() -> None:
    async with adapted(flask_sem_bridge.create_app()) as (http, adapter):
        r = await http.get("/profile/ann", params={"user": "u"})
        assert r.status_code == 200
        assert r.json()["name"] == "ann"
        assert r.json()["loop_is_worker_loop"] is True
        r = await http.post("/profile/ann", params={"user": "u"})
        assert r.status_code == 200
        assert r.json()["method"] == "post"
        assert r.json()["decorator_thread"] != adapter.binding.thread
        r = await http.get("/profile/ann")
        assert r.status_code == 401


# -- a decorator's own async helpers --------------------------------------------------------


async def flask_statuses(paths: list[str]) -> list[int]:
    """What Flask itself answers (its own async_to_sync, a fresh app).  Run
    in a thread: asgiref refuses to start a loop on a thread running one."""

    def run() -> list[int]:
        client = flask_sem_bridge.create_app().test_client()
        return [client.get(p).status_code for p in paths]

    return await asyncio.to_thread(run)


async def test_async_permission_check_in_a_decorator_gets_its_result() -> None:
    """Regression: while the adapter called a sync wrapper, *every*
    ``ensure_sync`` coroutine was handed back un-awaited, so
    ``if not ensure_sync(check)(): abort(403)`` saw a truthy coroutine and
    let everyone in."""
    paths = ["/admin?role=guest", "/admin?role=admin"]
    async with adapted(flask_sem_bridge.create_app()) as (http, _):
        got = [await http.get(p) for p in paths]
    assert [r.status_code for r in got] == await flask_statuses(paths) == [403, 200]
    assert "secret" not in got[0].text


async def test_async_check_that_waits_fails_closed_on_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A check that really awaits cannot be run synchronously on the loop
    thread: the request fails (500, naming the function), never passes."""
    async with adapted(flask_sem_bridge.create_app()) as (http, _):
        for role in ("guest", "admin"):
            r = await http.get("/admin-io", params={"role": role})
            assert r.status_code == 500
            assert "secret" not in r.text
    assert "io_check is async and awaited something" in caplog.text


async def test_async_check_that_waits_in_a_plain_sync_decorator() -> None:
    paths = ["/admin-io-unwrapped?role=guest", "/admin-io-unwrapped?role=admin"]
    async with adapted(flask_sem_bridge.create_app()) as (http, _):
        got = [(await http.get(p)).status_code for p in paths]
    assert got == await flask_statuses(paths) == [403, 200]


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_decorator_post_processing_the_view_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = flask_sem_bridge.create_app().test_client()
    reference = await asyncio.to_thread(client.get, "/post-processed")
    assert (reference.status_code, reference.headers["X-Decorated"]) == (200, "1")
    try:
        async with adapted(flask_sem_bridge.create_app()) as (http, _):
            r = await http.get("/post-processed")
        assert (r.status_code, r.headers.get("x-decorated"), r.text) == (200, "1", "body")
    finally:
        # The coroutine the decorator dropped is kept alive by the logged
        # TypeError's traceback: free it here, not during a later test.
        for record in caplog.records:
            record.exc_info = None
        gc.collect()


def shaped(shape: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorators around an async view, each with ``functools.wraps``."""

    def passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            if request.args.get("deny"):
                return "denied", 403
            return current_app.ensure_sync(func)(*args, **kwargs)

        return decorated

    def direct(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def decorated(**kwargs: Any) -> Any:
            return func(**kwargs)

        return decorated

    def assigned(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            rv = current_app.ensure_sync(func)(*args, **kwargs)
            return rv

        return decorated

    def timed(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return current_app.ensure_sync(func)(*args, **kwargs)
            finally:
                g.elapsed = time.perf_counter() - started

        return decorated

    def nested(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            def call() -> Any:
                return current_app.ensure_sync(func)(*args, **kwargs)

            return make_response(call())

        return decorated

    namespace: dict[str, Any] = {}
    # No source to read: not assumed to pass the result through.
    exec(
        "import functools\n"
        "from flask import current_app\n"
        "def sourceless(func):\n"
        "    @functools.wraps(func)\n"
        "    def decorated(*args, **kwargs):\n"
        "        return current_app.ensure_sync(func)(*args, **kwargs)\n"
        "    return decorated\n",
        namespace,
    )
    shapes: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
        "passthrough": passthrough,
        "direct": direct,
        "flask_login": flask_login.login_required,
        "assigned": assigned,
        "timed": timed,
        "nested": nested,
        "post_processed": flask_sem_bridge.add_header,
        "sourceless": namespace["sourceless"],
    }
    return shapes[shape]


#: Decorators that return the view's result as is are served natively.
NATIVE_SHAPES = {"passthrough": True, "direct": True, "flask_login": True}
#: The others use the result, or surround the call with try/with: thread path.
SHAPES = [*NATIVE_SHAPES, "assigned", "timed", "nested", "post_processed", "sourceless"]


def shapes_app(shape: str) -> Flask:
    app = Flask("flask_sem_shapes")
    app.config["LOGIN_DISABLED"] = True  # flask_login's decorator lets everyone in

    @app.get("/view")
    @shaped(shape)
    async def view() -> Any:
        await asyncio.sleep(0.001)
        return "view " + str(request.args.get("q"))

    return app


@pytest.mark.parametrize("shape", SHAPES)
async def test_decorator_shapes_answer_as_flask(shape: str) -> None:
    paths = ["/view?q=1", "/view?q=2&deny=1"]

    def reference() -> list[tuple[int, str, str | None]]:
        client = shapes_app(shape).test_client()
        return [
            (r.status_code, r.text, r.headers.get("X-Decorated"))
            for r in (client.get(p) for p in paths)
        ]

    app = shapes_app(shape)
    async with adapted(app) as (http, adapter):
        native: list[str] = []
        handle = adapter.dispatch.handle

        async def counting(ctx: Any) -> Any:
            native.append(ctx.request.full_path)
            return await handle(ctx)

        adapter.dispatch.handle = counting  # type: ignore[method-assign]
        got = [
            (r.status_code, r.text, r.headers.get("X-Decorated"))
            for r in [await http.get(p) for p in paths]
        ]
    if shape == "direct":
        # Flask's tutorial shape: under Flask, the view's coroutine reaches
        # make_response (a 500); the adapter awaits it.
        assert got == [(200, "view 1", None), (200, "view 2", None)]
    else:
        assert got == await asyncio.to_thread(reference)
    assert bool(native) is NATIVE_SHAPES.get(shape, False)


def sneaky(returns_view: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Reaches the view through ``__wrapped__``, where the source check
    cannot follow it, and keeps its coroutine."""

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def decorated(*args: Any, **kwargs: Any) -> Any:
            if request.args.get("plain"):
                return current_app.ensure_sync(func)(*args, **kwargs)
            rv = current_app.ensure_sync(decorated.__wrapped__)(*args, **kwargs)
            return make_response(rv) if returns_view else "kept"

        return decorated

    return decorator


@pytest.mark.parametrize("returns_view", [True, False])
async def test_coroutine_kept_by_a_wrapper_on_the_loop_is_reported(
    returns_view: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The safety net behind the source check: a coroutine handed to a
    wrapper on the loop and not returned is closed (never a "was never
    awaited" warning) and the error says what happened."""
    app = Flask("flask_sem_sneaky")

    @app.get("/view")
    @sneaky(returns_view)
    async def view() -> str:
        await asyncio.sleep(0)
        return "body"

    gc.collect()  # what earlier tests left behind warns now, not below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with adapted(app) as (http, _):
            assert (await http.get("/view?plain=1")).text == "body"
            r = await http.get("/view")
        for record in caplog.records:
            record.exc_info = None
        gc.collect()
    assert r.status_code == 500
    assert "called the async view it wraps without returning the result" in caplog.text
    assert not [str(w.message) for w in caught if "never awaited" in str(w.message)]


# -- sync hooks calling ensure_sync ---------------------------------------------------------


async def test_sync_hook_calling_ensure_sync_in_executor_mode() -> None:
    app = flask_sem_bridge.create_app()
    app.config["ASYNC_WORKER_SYNC_HOOKS"] = "executor"
    async with adapted(app) as (http, adapter):
        r = await http.get("/hook-ensure-sync", params={"q": "h"})
        assert r.status_code == 200
        seen = r.json()
        assert seen["hook_thread"] != adapter.binding.thread
        assert seen["thread"] == adapter.binding.thread
        assert seen["loop_is_worker_loop"] is True
        assert seen["q"] == "h"


async def test_sync_hook_on_the_loop_calling_a_waiting_coroutine_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with adapted(flask_sem_bridge.create_app()) as (http, _):
        r = await http.get("/hook-ensure-sync")
        assert r.status_code == 500
    assert "seen_by_coroutine is async and awaited something" in caplog.text


# -- WSGI middleware ------------------------------------------------------------------------

FORWARDED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com",
    "X-Forwarded-Prefix": "/pfx",
}


def check_forwarded(seen: dict[str, Any], path: str, app: str) -> None:
    assert seen["app"] == app
    assert seen["remote_addr"] == "203.0.113.7"
    assert seen["scheme"] == "https"
    assert seen["host"] == "example.com"
    assert seen["url"] == f"https://example.com/pfx{path}"


async def test_wrapped_wsgi_app_keeps_its_middleware(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flask_async_worker")
    async with adapted(flask_sem_middleware.create_app(), headers=FORWARDED) as (http, adapter):
        assert adapter.not_native  # served on the thread path
        r = await http.get("/async", params={"q": "1"})
        assert r.status_code == 200
        seen = r.json()
        check_forwarded(seen, "/async", "flask_sem_middleware")
        assert seen["q"] == "1"
        # async_to_sync ran it on the worker's loop, not a loop of its own
        assert seen["on_worker_loop"] is True and seen["on_loop_thread"] is True
        r = await http.get("/sync")
        seen = r.json()
        check_forwarded(seen, "/sync", "flask_sem_middleware")
        assert seen["on_loop_thread"] is False
        r = await http.get("/sub/sync")
        check_forwarded(r.json(), "/sub/sync", "flask_sem_middleware_sub")
        r = await http.get("/sub/async")
        assert r.status_code == 200
        check_forwarded(r.json(), "/sub/async", "flask_sem_middleware_sub")
    assert "app.wsgi_app is wrapped by WSGI middleware" in caplog.text


async def test_mounted_app_async_view_runs_on_the_worker_loop() -> None:
    async with adapted(flask_sem_middleware.create_app()) as (http, _):
        r = await http.get("/sub/async")
        assert r.status_code == 200
        assert r.json()["on_worker_loop"] is True


async def test_flask_apps_behind_a_plain_wsgi_dispatcher_run_on_the_serving_loop() -> None:
    """A served object that is no Flask app (a bare DispatcherMiddleware):
    the worker wraps it in BridgedApp, so the Flask apps inside bridge
    their async views to the serving loop, never a loop per call."""
    pool = ThreadPoolExecutor(4)
    served = BridgedApp(WSGIAdapter(flask_sem_middleware.create_plain(), executor=pool))
    transport = httpx.ASGITransport(app=served)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            got = [(await http.get(path)).json() for path in ("/async", "/other/async")]
    finally:
        pool.shutdown(wait=True)
    assert [seen["app"] for seen in got] == ["flask_sem_middleware", "flask_sem_middleware_sub"]
    assert [seen["on_serving_loop"] for seen in got] == [True, True]
    assert served.binding.loop is asyncio.get_running_loop()


def test_plain_wsgi_dispatcher_under_gunicorn(gunicorn: Any) -> None:
    server = gunicorn("flask_sem_middleware:plain", "--threads", "4")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in ("/async", "/other/async"):
            r = http.get(path)
            assert r.status_code == 200, r.text
            assert r.json()["on_serving_loop"] is True


def test_middleware_under_gunicorn(gunicorn: Any) -> None:
    server = gunicorn("flask_sem_middleware:app", "--threads", "4")
    with httpx.Client(base_url=server.url, headers=FORWARDED, timeout=10) as http:
        for path, app in [
            ("/async", "flask_sem_middleware"),
            ("/sync", "flask_sem_middleware"),
            ("/sub/async", "flask_sem_middleware_sub"),
        ]:
            r = http.get(path, params={"q": path})
            assert r.status_code == 200, r.text
            check_forwarded(r.json(), path, app)
            assert r.json()["q"] == path
        assert http.get("/async").json()["on_worker_loop"] is True
        assert http.get("/sub/async").json()["on_worker_loop"] is True


def test_bridge_under_gunicorn(gunicorn: Any) -> None:
    server = gunicorn("flask_sem_bridge:app", "--threads", "4")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wrapped = http.get("/wrapped", params={"user": "u"}).json()
        unwrapped = http.get("/unwrapped", params={"user": "u"}).json()
        ext = http.get("/ext", params={"q": "x"}).json()
        assert http.get("/admin", params={"role": "guest"}).status_code == 403
        assert http.get("/admin", params={"role": "admin"}).text == "secret"
        assert http.get("/admin-io", params={"role": "guest"}).status_code == 500
    loops = {wrapped["loop_id"], unwrapped["loop_id"], *(c["loop_id"] for c in ext["calls"])}
    assert len(loops) == 1
    assert wrapped["loop_is_worker_loop"] and unwrapped["loop_is_worker_loop"]
    assert all(c["loop_is_worker_loop"] and c["q"] == "x" for c in ext["calls"])
    assert unwrapped["decorator_thread"] != unwrapped["loop_thread"]
    assert wrapped["decorator_thread"] == wrapped["loop_thread"]


# -- pool starvation ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/async", "/sync-bridge", "/to-thread"])
async def test_thread_path_coroutine_using_the_pool_does_not_deadlock(path: str) -> None:
    app = Flask("flask_sem_starvation")

    @app.get("/async")
    async def uses_pool() -> str:
        await run_sync(time.sleep, 0.01)
        return "ok"

    @app.get("/to-thread")
    async def uses_default_executor() -> str:
        await asyncio.to_thread(time.sleep, 0.01)
        return "ok"

    @app.get("/sync-bridge")
    def bridges() -> str:
        return str(current_app.ensure_sync(uses_pool)())

    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    pool = ThreadPoolExecutor(2)
    transport = httpx.ASGITransport(app=FlaskAdapter(app, executor=pool))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            rs = await asyncio.wait_for(asyncio.gather(*(http.get(path) for _ in range(4))), 2)
        assert [r.text for r in rs] == ["ok"] * 4
    finally:
        # Cancelling the queued run_sync calls releases the blocked threads.
        pool.shutdown(wait=False, cancel_futures=True)


def test_thread_path_coroutines_get_threads_under_gunicorn(gunicorn: Any) -> None:
    """``--threads 2`` and eight thread-path requests at once, each holding
    its pool thread while its coroutine asks for a thread: they all finish,
    on the offload pool, never on the sync pool."""
    server = gunicorn("flask_sem_starvation:app", "--threads", "2")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            paths = ["/run-sync", "/to-thread", "/getaddrinfo", "/sync-bridge"] * 2
            return await asyncio.gather(*(http.get(p) for p in paths))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 8
    for r in responses:
        body = r.json()
        if "thread" in body:
            assert body["thread"].startswith("flask-async-worker-offload_"), body
        else:
            assert body["resolved"] is True
    pool = httpx.get(f"{server.url}/pool", timeout=10).json()["thread"]
    assert pool.startswith("flask-async-worker_")
