"""Routing before choosing the path: cheap, cached, and Flask's answer.

The adapter matches each request once on the loop to pick the native path
or the thread path.  These tests pin down that this first match

* builds no ``RequestContext`` for a request that takes the thread path
  (Flask's ``wsgi_app`` builds its own there);
* remembers decisions for rules without arguments only, in a bounded dict
  emptied when the URL map or a routing setting changes;
* agrees with Flask for host matching, subdomains with ``SERVER_NAME``,
  ``TRUSTED_HOSTS`` and an overridden ``create_url_adapter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask import Flask, request
from flask.globals import _cv_request
from werkzeug.routing import Rule

from flask_async_worker.adapter import FlaskAdapter
from flask_async_worker.adapter.routing import MatchedAdapter, Router, install_prebound_hook


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=True)


@contextlib.asynccontextmanager
async def served(
    app: Flask, executor: ThreadPoolExecutor
) -> AsyncIterator[tuple[httpx.AsyncClient, FlaskAdapter, list[str]]]:
    """A client, the adapter, and the paths it served natively."""
    adapter = FlaskAdapter(app, executor=executor)
    native: list[str] = []
    handle = adapter.dispatch.handle

    async def counting(ctx: Any) -> Any:
        native.append(f"{ctx.request.host}{ctx.request.path}")
        return await handle(ctx)

    adapter.dispatch.handle = counting  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=adapter)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client, adapter, native


def basic_app() -> Flask:
    app = Flask("flask_sem_routing")

    @app.get("/sync")
    def sync_view() -> str:
        return f"sync {threading.current_thread().name}"

    @app.get("/async")
    async def async_view() -> str:
        await asyncio.sleep(0)
        return "async"

    @app.get("/item/<int:n>")
    def item(n: int) -> str:
        return f"item {n}"

    @app.get("/defaults", defaults={"page": 3})
    async def with_defaults(page: int) -> str:
        return f"page {page}"

    @app.get("/hello/<name>")
    async def hello(name: str) -> str:
        return f"hello {name} {request.script_root}"

    @app.get("/hi/<name>")
    def hi(name: str) -> str:
        return f"hi {name} {request.script_root}"

    return app


async def test_thread_path_builds_no_request_context_on_the_loop(
    executor: ThreadPoolExecutor,
) -> None:
    app = basic_app()
    built: list[str] = []
    original = app.request_context

    def recording(environ: Any) -> Any:
        built.append(threading.current_thread().name)
        return original(environ)

    app.request_context = recording  # type: ignore[method-assign]
    loop_thread = threading.current_thread().name
    async with served(app, executor) as (client, _, native):
        for path in ("/sync", "/item/4", "/sync", "/nowhere"):
            await client.get(path)
        assert loop_thread not in built  # each built by Flask, in the pool
        assert len(built) == 4
        built.clear()
        assert (await client.get("/async")).text == "async"
        assert built == [loop_thread]
    assert native == ["localhost/async"]


async def test_decisions_for_rules_without_arguments_are_remembered(
    executor: ThreadPoolExecutor,
) -> None:
    async with served(basic_app(), executor) as (client, adapter, native):
        for _ in range(2):
            assert (await client.get("/sync")).text.startswith("sync")
            assert (await client.get("/async")).text == "async"
            assert (await client.get("/defaults")).text == "page 3"
            assert (await client.get("/item/7")).text == "item 7"
            assert (await client.get("/nowhere")).status_code == 404
            assert (await client.post("/sync")).status_code == 405
        paths = sorted(key[-1] for key in adapter.router.cache)
        methods = {key[0] for key in adapter.router.cache}
    # no arguments: remembered; converters, 404 and 405: matched every time
    assert paths == ["/async", "/defaults", "/sync"]
    assert methods == {"GET"}
    assert native == ["localhost/async", "localhost/defaults"] * 2


async def test_cache_is_emptied_when_a_route_is_added(executor: ThreadPoolExecutor) -> None:
    app = basic_app()
    async with served(app, executor) as (client, adapter, native):
        await client.get("/sync")
        await client.get("/async")
        assert len(adapter.router.cache) == 2

        async def added() -> str:
            return "added"

        # Straight on the map (Flask's add_url_rule refuses once serving).
        app.url_map.add(Rule("/added", endpoint="added", methods=["GET"]))
        app.view_functions["added"] = added
        assert (await client.get("/added")).text == "added"
        assert [key[-1] for key in adapter.router.cache] == ["/added"]

        # A route added for an existing endpoint changes no endpoint count.
        app.url_map.add(Rule("/sync-too", endpoint="sync_view", methods=["GET"]))
        assert (await client.get("/sync-too")).text.startswith("sync")
        assert [key[-1] for key in adapter.router.cache] == ["/sync-too"]

        # Setup code that registers routes before serving resumes.
        app._got_first_request = False

        @app.get("/late")
        async def late() -> str:
            return "late"

        assert (await client.get("/late")).text == "late"
        assert [key[-1] for key in adapter.router.cache] == ["/late"]
    assert native == ["localhost/async", "localhost/added", "localhost/late"]


async def test_replaced_url_map_is_used_at_once(executor: ThreadPoolExecutor) -> None:
    app = basic_app()
    async with served(app, executor) as (client, _, native):
        assert (await client.get("/sync")).text.startswith("sync")
        new_map = app.url_map_class()
        new_map.add(Rule("/sync", endpoint="async_view", methods=["GET"]))
        app.url_map = new_map
        assert (await client.get("/sync")).text == "async"
    assert native == ["localhost/sync"]


def test_cache_is_bounded() -> None:
    app = basic_app()
    router = Router(app, size=4)
    for i in range(10):
        environ = {
            "REQUEST_METHOD": "GET",
            "wsgi.url_scheme": "http",
            "HTTP_HOST": f"h{i}.example",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/sync",
        }
        found = router.match(environ)
        assert found is not None and found[0].endpoint == "sync_view"
        assert len(router.cache) <= 4
    assert [key[2] for key in router.cache] == [f"h{i}.example" for i in range(6, 10)]


def hosts_app() -> Flask:
    app = Flask("flask_sem_hosts", host_matching=True, static_host="static.example")

    @app.get("/p", host="sync.example")
    def p_sync() -> str:
        return "sync"

    @app.get("/p", host="async.example")
    async def p_async() -> str:
        return "async"

    @app.get("/p", host="<tenant>.example")
    async def p_tenant(tenant: str) -> str:
        return f"tenant {tenant}"

    return app


async def test_host_matching(executor: ThreadPoolExecutor) -> None:
    async with served(hosts_app(), executor) as (client, _, native):
        got = []
        for _ in range(2):
            for host in ("sync.example", "async.example", "t1.example", "other.test"):
                r = await client.get("/p", headers={"host": host})
                got.append((r.status_code, r.text if r.status_code == 200 else ""))

    def reference() -> list[tuple[int, str]]:
        flask = hosts_app().test_client()
        want = []
        for _ in range(2):
            for host in ("sync.example", "async.example", "t1.example", "other.test"):
                r = flask.get("/p", headers={"host": host})
                want.append((r.status_code, r.text if r.status_code == 200 else ""))
        return want

    # Flask's own async support starts a loop: not on this thread, which runs one.
    assert got == await asyncio.to_thread(reference)
    assert got[:4] == [(200, "sync"), (200, "async"), (200, "tenant t1"), (404, "")]
    assert native == ["async.example/p", "t1.example/p"] * 2


def subdomains_app() -> Flask:
    app = Flask("flask_sem_subdomains", subdomain_matching=True)
    app.config["SERVER_NAME"] = "example.com"

    @app.get("/p")
    def p_root() -> str:
        return "root"

    @app.get("/p", subdomain="api")
    async def p_api() -> str:
        return "api"

    @app.get("/p", subdomain="<sub>")
    async def p_sub(sub: str) -> str:
        return f"sub {sub}"

    return app


async def test_subdomain_matching_with_server_name(executor: ThreadPoolExecutor) -> None:
    hosts = ("example.com", "api.example.com", "x.example.com", "api.example.com")
    async with served(subdomains_app(), executor) as (client, _, native):
        got = [(await client.get("/p", headers={"host": h})).text for h in hosts]

    def reference() -> list[str]:
        flask = subdomains_app().test_client()
        return [flask.get("/p", headers={"host": h}).text for h in hosts]

    assert got == await asyncio.to_thread(reference) == ["root", "api", "sub x", "api"]
    assert native == ["api.example.com/p", "x.example.com/p", "api.example.com/p"]


async def test_trusted_hosts(executor: ThreadPoolExecutor) -> None:
    def make() -> Flask:
        app = basic_app()
        app.config["TRUSTED_HOSTS"] = ["good.example"]
        return app

    hosts = ("good.example", "evil.example", "good.example", "evil.example")
    async with served(make(), executor) as (client, adapter, native):
        got = [(await client.get("/async", headers={"host": h})).status_code for h in hosts]
        # a change of the setting takes effect at once
        adapter.flask_app.config["TRUSTED_HOSTS"] = ["evil.example"]
        got.append((await client.get("/async", headers={"host": "good.example"})).status_code)
        got.append((await client.get("/async", headers={"host": "evil.example"})).status_code)

    def reference() -> list[int]:
        flask = make().test_client()
        return [flask.get("/async", headers={"host": h}).status_code for h in hosts]

    assert got[:4] == await asyncio.to_thread(reference) == [200, 400, 200, 400]
    assert got[4:] == [400, 200]
    assert native == ["good.example/async", "good.example/async", "evil.example/async"]


class OwnAdapterFlask(Flask):
    """Routes ``/v2/...`` as ``/...``: an override the adapter must use."""

    def create_url_adapter(self, request: Any) -> Any:
        adapter = super().create_url_adapter(request)
        if adapter is not None and adapter.path_info.startswith("/v2/"):
            adapter.path_info = adapter.path_info[3:]
        return adapter


async def test_overridden_create_url_adapter_is_used(executor: ThreadPoolExecutor) -> None:
    app = OwnAdapterFlask("flask_sem_own_adapter")

    @app.get("/a")
    async def a() -> str:
        return f"a {request.path}"

    async with served(app, executor) as (client, adapter, native):
        assert (await client.get("/v2/a")).text == "a /v2/a"
        assert (await client.get("/v2/a")).text == "a /v2/a"
        assert adapter.router.cache == {}
    assert native == ["localhost/v2/a"] * 2


async def test_view_args_and_script_name(executor: ThreadPoolExecutor) -> None:
    """The loop's match gives the view its arguments: decoded as Flask
    decodes them, under a script name, from a map adapter reused per host."""
    adapter = FlaskAdapter(basic_app(), executor=executor)
    transport = httpx.ASGITransport(app=adapter, root_path="/pre")
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        got = [
            (await client.get(path)).text
            for path in ("/pre/hello/%C3%BC%20x", "/pre/hi/%C3%BC", "/pre/hello/b", "/pre/hi/a")
        ]
    assert got == ["hello \u00fc x /pre", "hi \u00fc /pre", "hello b /pre", "hi a /pre"]
    (place,) = adapter.router.adapters  # one host, one bound map adapter
    assert place[:3] == ("http", "localhost", "localhost") and place[-1] == "/pre"
    assert adapter.router.cache == {}


# -- request contexts built on the router's binding -------------------------------------


def _environ(
    path: str, host: str = "localhost", script: str = "", query: str = "a=1"
) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    return EnvironBuilder(
        path=path,
        base_url=f"http://{host}{script}",
        query_string=query,
        method="GET",
    ).get_environ()


def _context_state(ctx: Any) -> tuple[Any, ...]:
    a = ctx.url_adapter
    return (
        sorted(vars(ctx)),
        ctx.request.host,
        ctx.request.trusted_hosts,
        (a.server_name, a.script_name, a.subdomain, a.url_scheme),
        (a.path_info, a.default_method, a.query_args, a.websocket),
    )


def _urls(ctx: Any) -> tuple[str, str]:
    from flask import url_for

    with ctx:
        return url_for("named", name="é"), url_for("named", name="z", _external=True)


@pytest.mark.parametrize(
    ("configure", "path", "host", "script"),
    [
        (None, "/async/x", "localhost", ""),
        (None, "/async/caf%C3%A9", "localhost:8080", "/mount"),
        ("server_name", "/async/x", "example.com", ""),
        ("trusted", "/async/x", "good.example", ""),
    ],
)
def test_prebound_context_equals_flasks(
    configure: str | None, path: str, host: str, script: str, executor: ThreadPoolExecutor
) -> None:
    """The context the adapter builds from the router's binding is the one
    Flask's request_context builds: same attributes, same host, same map
    binding, and url_for builds the same URLs."""
    app = Flask("flask_sem_prebound")
    if configure == "server_name":
        app.config["SERVER_NAME"] = "example.com"
        app.subdomain_matching = True
    if configure == "trusted":
        app.config["TRUSTED_HOSTS"] = ["good.example"]

    @app.get("/async/<name>")
    async def named(name: str) -> str:
        return name

    adapter = FlaskAdapter(app, executor=executor)
    assert adapter.prebound
    environ = _environ(path, host, script)
    assert adapter.router.match(dict(environ)) is not None
    fast = adapter._request_context(dict(environ))
    slow = app.request_context(dict(environ))
    assert fast.url_adapter is not None, "the router had no binding to reuse"
    assert _context_state(fast) == _context_state(slow)
    assert _urls(fast) == _urls(slow)


def test_prebound_context_falls_back_for_an_overridden_context(
    executor: ThreadPoolExecutor,
) -> None:
    class Custom(Flask):
        def request_context(self, environ: Any) -> Any:
            return super().request_context(environ)

    app = Custom("flask_sem_prebound_custom")
    assert not FlaskAdapter(app, executor=executor).prebound


# -- the thread path reuses the router's match ------------------------------------------


async def test_thread_path_takes_the_routers_match(executor: ThreadPoolExecutor) -> None:
    """Flask's wsgi_app, run as is in the pool, gets the router's binding
    and match through create_url_adapter: no second bind or match, and the
    same rule, arguments, url_for and script root as its own."""
    app = basic_app()
    matched: list[str] = []

    @app.before_request
    def record() -> None:
        ctx = _cv_request.get()
        matched.append(type(ctx.url_adapter).__name__)

    async with served(app, executor) as (client, _, native):
        assert (await client.get("/item/4")).text == "item 4"
        assert (await client.get("/hi/%C3%BC")).text == "hi \u00fc "
        assert (await client.get("/sync")).text.startswith("sync ")
        assert (await client.get("/nowhere")).status_code == 404
    assert matched[:3] == ["MatchedAdapter"] * 3
    assert native == []


def test_matched_adapter_answers_once_then_matches() -> None:
    app = basic_app()
    bound = app.url_map.bind("localhost", path_info="/item/7")
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == "item")
    adapter = MatchedAdapter(
        bound.map,
        bound.server_name,
        bound.script_name,
        bound.subdomain,
        bound.url_scheme,
        bound.path_info,
        bound.default_method,
        bound.query_args,
    )
    adapter._found = (rule, {"n": 7})
    # The first plain call is the router's answer (Flask's match_request).
    assert adapter.match(return_rule=True) == (rule, {"n": 7})
    # Afterwards, and with arguments, it matches like any adapter.
    assert adapter.match(return_rule=True)[1] == {"n": 7}
    assert adapter.match("/item/8") == ("item", {"n": 8})
    assert bound.match() == ("item", {"n": 7})


def test_an_app_without_the_routers_mark_binds_as_flask_does() -> None:
    """The class-level hook changes nothing for an environ the adapter did
    not mark: a plain test client of another app binds and matches itself."""
    install_prebound_hook()
    app = basic_app()
    with app.test_client() as client:
        assert client.get("/item/3").text == "item 3"
        assert client.get("/nowhere").status_code == 404
