"""Serve a Flask application as ASGI.

Each request is routed first (Werkzeug's URL map, as Flask does, see
``routing.py``), and the endpoint decides the path it takes:

* an ``async def`` view — or a sync wrapper that passes an async view's
  result straight through (a decorator with ``functools.wraps`` such as
  ``login_required``, a ``View``/``MethodView`` whose handler for the
  method is async; see ``views.py``) — is served natively on the loop by
  :class:`~.dispatch.NativeDispatch`: the body is received before user code
  reads it (bounded, spooled to disk when large; see ``body.py``), hooks
  and view run in the request's task, and the response is streamed from
  the loop;
* every other request runs through Flask's own ``wsgi_app`` in the
  executor, in one hop, with ``wsgi.input`` streamed from the loop.

Two thread pools, never one: the *sync pool* (the ``executor`` argument)
runs the requests' sync code — Flask's ``wsgi_app`` for sync views, sync
hooks in executor mode, sync response iterables — and its threads may
block waiting for the loop (``ensure_sync``, reading the body, sending).
Blocking calls made *by coroutines* (``run_sync``, ``asyncio.to_thread``,
``loop.run_in_executor(None)``, ``getaddrinfo``) use the loop's default
executor, a different pool: were it the same, requests blocked in
``ensure_sync`` could hold every thread while the coroutines they wait for
queue for one, and the worker would hang.

An app whose dispatch was customised (``wsgi_app`` wrapped by middleware,
dispatch methods overridden) keeps its customisation: all its requests take
the thread path, where async views still run on the worker's loop through
the ``async_to_sync`` bridge.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response
from flask.ctx import RequestContext
from werkzeug.routing import Rule
from werkzeug.wsgi import get_host

from ..pool import run_in_pool
from ..server import Receive, Scope, Send
from ..wsgi import WSGIAdapter
from .body import RequestBody
from .bridge import SERVING, LoopBinding, install_class_bridge, make_async_to_sync
from .dispatch import NativeDispatch, customised, is_async_iterable
from .extension import STREAMS_KEY, close_streams
from .routing import PREBOUND_KEY, Router, install_prebound_hook
from .views import endpoint_is_async, maybe_async
from .websocket import WebSocketPool, install_simple_websocket_bridge, serve_websocket

log = logging.getLogger("flask_async_worker")

_END = object()
_NO_BODY_STATUS = frozenset((204, 304))
#: Threads of the sync pool an adapter creates when given none.
DEFAULT_THREADS = 32
#: Most (endpoint, method) decisions remembered.
KINDS_SIZE = 4096


@dataclass(frozen=True)
class AdapterConfig:
    """The adapter's settings, read from ``app.config`` (``ASYNC_WORKER_*``)."""

    #: Largest request body received for an async view when the request's
    #: max_content_length is not set (bytes); reading a larger one is a 413.
    max_body: int = 16 * 1024 * 1024
    #: Bodies larger than this are spooled to a temporary file.
    spool_size: int = 1024 * 1024
    #: Where sync hooks of requests to async views run: "loop" keeps a
    #: request on one thread (thread-bound resources on ``g`` work);
    #: "executor" keeps slow hooks off the loop at the price of that.
    sync_hooks: str = "loop"
    #: Sync code on the loop longer than this (seconds) is reported.
    blocking_threshold: float = 0.1
    #: Cancel an async view when its client disconnects (True), or let it
    #: finish and discard the response (False, the WSGI behaviour).
    cancel_on_disconnect: bool = False
    #: Threads for sync WebSocket handlers (each holds one while open):
    #: the most sync WebSockets open at once.
    websocket_threads: int = 100

    @classmethod
    def from_app(cls, app: Flask) -> AdapterConfig:
        cfg = app.config
        sync_hooks = str(cfg.get("ASYNC_WORKER_SYNC_HOOKS", cls.sync_hooks))
        if sync_hooks not in ("loop", "executor"):
            raise ValueError("ASYNC_WORKER_SYNC_HOOKS must be 'loop' or 'executor'")
        return cls(
            max_body=int(cfg.get("ASYNC_WORKER_MAX_BODY", cls.max_body)),
            spool_size=int(cfg.get("ASYNC_WORKER_SPOOL_SIZE", cls.spool_size)),
            sync_hooks=sync_hooks,
            blocking_threshold=float(
                cfg.get("ASYNC_WORKER_BLOCKING_THRESHOLD", cls.blocking_threshold)
            ),
            cancel_on_disconnect=bool(
                cfg.get("ASYNC_WORKER_CANCEL_ON_DISCONNECT", cls.cancel_on_disconnect)
            ),
            websocket_threads=int(
                cfg.get("ASYNC_WORKER_WEBSOCKET_THREADS", cls.websocket_threads)
            ),
        )


class FlaskAdapter:
    """An ASGI application serving a Flask application.

    ``executor`` is the sync pool (see the module docstring); without one,
    the adapter creates its own, so that sync views never share the loop's
    default executor under any ASGI server.
    """

    def __init__(self, app: Flask, executor: Executor | None = None, **wsgi_options: Any) -> None:
        if executor is None:
            executor = ThreadPoolExecutor(
                max_workers=DEFAULT_THREADS, thread_name_prefix="flask-async-sync"
            )
        self.flask_app = app
        self.executor = executor
        self.binding = LoopBinding()
        self.wsgi = WSGIAdapter(app, executor, **wsgi_options)
        self.config = AdapterConfig.from_app(app)
        app.async_to_sync = make_async_to_sync(app, self.binding)  # type: ignore[method-assign,assignment]
        install_class_bridge()
        self.not_native = customised(app)
        self.dispatch = NativeDispatch(
            app,
            executor,
            sync_hooks_in_executor=self.config.sync_hooks == "executor",
            blocking_threshold=self.config.blocking_threshold,
            max_body=self.config.max_body,
            log=log.warning,
        )
        self.router = Router(app)
        self.prebound = prebound_context_supported(app)
        if self.prebound:
            install_prebound_hook()
        self._kinds: dict[tuple[str, str], bool] = {}
        self._views_seen = -1
        self._any_async = False
        self.background: set[asyncio.Task[Any]] = set()
        self._websocket_pool: WebSocketPool | None = None
        install_simple_websocket_bridge()
        app.extensions["flask_async_worker"] = self

    # -- ASGI --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "websocket":
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    def _bind(self) -> None:
        if self.binding.loop is None:
            self.binding.bind(asyncio.get_running_loop())
            if self.not_native:
                log.info(
                    "Serving every request of %s through Flask's wsgi_app in the thread pool: %s",
                    self.flask_app.name,
                    "; ".join(self.not_native),
                )

    async def lifespan(self, receive: Receive, send: Send) -> None:
        from .extension import run_serving_hooks

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._bind()
                    await run_serving_hooks(self, "before")
                except Exception as exc:
                    log.exception("before_serving hook failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self.background:
                        await asyncio.wait(list(self.background), timeout=10)
                    await run_serving_hooks(self, "after")
                except Exception as exc:
                    log.exception("after_serving hook failed")
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.binding.loop is None:
            self._bind()
        # Every Flask app this request reaches (a mounted one too) bridges
        # async code to this loop: see bridge.py.
        token = SERVING.set(self.binding)
        try:
            await self._http(scope, receive, send)
        finally:
            SERVING.reset(token)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.binding.loop is None:
            self._bind()
        token = SERVING.set(self.binding)
        try:
            await serve_websocket(self, scope, receive, send)
        finally:
            SERVING.reset(token)

    def websocket_pool(self) -> WebSocketPool:
        pool = self._websocket_pool
        if pool is None:
            pool = self._websocket_pool = WebSocketPool(self.config.websocket_threads)
        return pool

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.not_native or not self._has_async_views():
            await self.wsgi.http(scope, receive, send)
            return
        environ = self.wsgi.environ(scope)
        route = self.router.match(environ)
        if route is None or not self._is_async(route[0], environ["REQUEST_METHOD"]):
            if (
                route is not None
                and self.prebound
                and not _REPLACED.intersection(self.flask_app.__dict__)
            ):
                adapter = self.router.url_adapter(environ, route)
                if adapter is not None:
                    environ[PREBOUND_KEY] = adapter
            await self.wsgi.serve(environ, scope, receive, send)
            return
        ctx = self._request_context(environ)
        if ctx.request.routing_exception is None:
            ctx.request.url_rule, ctx.request.view_args = route
        if not await self._read_body(environ, scope, receive):
            return  # the client left while sending the body
        ext: Any = scope.get("extensions", {}).get("flask_async_worker") or {}
        on_disconnect: Callable[[Callable[[], None] | None], None] | None = ext.get(
            "on_disconnect"
        )
        task = asyncio.current_task()
        if on_disconnect is not None:
            if self.config.cancel_on_disconnect and task is not None:
                on_disconnect(_canceller(task))
            else:
                on_disconnect(_ignore)
        response = await self.dispatch.handle(ctx)
        try:
            if on_disconnect is not None and task is not None:
                # A stream whose client left is stopped at once: its
                # generator's finally clauses run.
                on_disconnect(_canceller(task))
            await self.send_response(response, environ, send)
        finally:
            if STREAMS_KEY in ctx.__dict__:
                # stream_with_context streams not sent (a HEAD, a body an
                # error handler replaced) still hold the request context.
                await asyncio.shield(close_streams(ctx))

    # -- routing -------------------------------------------------------------------------

    def _request_context(self, environ: dict[str, Any]) -> RequestContext:
        """``app.request_context(environ)``, reusing the URL map binding the
        router already made for this scheme/host/script name instead of
        binding the map again (the largest cost of building a context)."""
        app = self.flask_app
        url_adapter = None
        if self.prebound and not _REPLACED.intersection(app.__dict__):
            url_adapter = self.router.url_adapter(environ)
        if url_adapter is None:
            return app.request_context(environ)
        request = app.request_class(environ)
        request.json_module = app.json
        # What Flask.create_url_adapter does to the request besides binding.
        trusted = app.config["TRUSTED_HOSTS"]
        if trusted is not None:
            request.trusted_hosts = trusted
        request.host = get_host(environ, request.trusted_hosts)
        ctx = RequestContext.__new__(RequestContext)
        ctx.app = app
        ctx.request = request
        ctx.url_adapter = url_adapter
        ctx.flashes = None
        ctx._session = None
        ctx._after_request_functions = []
        ctx._cv_tokens = []
        return ctx

    def _has_async_views(self) -> bool:
        views = self.flask_app.view_functions
        if len(views) != self._views_seen:
            self._views_seen = len(views)
            self._kinds.clear()
            self._any_async = any(maybe_async(v) for v in views.values())
        return self._any_async

    def _is_async(self, rule: Rule, method: str) -> bool:
        key = (rule.endpoint, method)
        kind = self._kinds.get(key)
        if kind is None:
            view = self.flask_app.view_functions.get(rule.endpoint)
            kind = view is not None and endpoint_is_async(view, method)
            if len(self._kinds) >= KINDS_SIZE:
                self._kinds.clear()  # rules accepting any method: keys a client chooses
            self._kinds[key] = kind
        return kind

    # -- request body ----------------------------------------------------------------------

    async def _read_body(self, environ: dict[str, Any], scope: Scope, receive: Receive) -> bool:
        """Receive the body up to the app-wide limit before any user code
        runs, so that ``request.form``/``get_json()`` never block the loop;
        ``NativeDispatch`` receives more if a hook raises the request's
        limit.  False when the client left."""
        length = environ.get("CONTENT_LENGTH")
        if (
            length is None
            and "HTTP_TRANSFER_ENCODING" not in environ
            and scope["http_version"] not in ("2", "3")
        ):
            environ["wsgi.input"] = io.BytesIO()
            return True
        declared = int(length) if length is not None and length.isdigit() else None
        body = RequestBody(receive, declared, self.config.spool_size)
        limit = self.flask_app.config.get("MAX_CONTENT_LENGTH")
        if not await body.fill(self.config.max_body if limit is None else limit):
            body.discard()
            return False
        if body.complete:
            environ["wsgi.input"] = body.complete_stream()
            environ["CONTENT_LENGTH"] = str(body.size)
        else:
            environ["wsgi.input"] = body  # larger than the limit so far
        return True

    # -- response ------------------------------------------------------------------------

    async def send_response(self, response: Response, environ: dict[str, Any], send: Send) -> None:
        status = response.status_code
        headers = response.get_wsgi_headers(environ)
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in headers.to_wsgi_list()
            ],
        }
        body = response.response
        if environ["REQUEST_METHOD"] == "HEAD" or status < 200 or status in _NO_BODY_STATUS:
            await self._close(response)
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        if is_async_iterable(body):
            await self._send_async_iterable(response, start, send)
        elif response.is_sequence and not response.direct_passthrough:
            data = b"".join(response.iter_encoded())
            response.close()
            await send(start)
            await send({"type": "http.response.body", "body": data})
        else:
            await self._send_sync_iterable(response, start, send)

    async def _send_async_iterable(self, response: Response, start: Any, send: Send) -> None:
        body: Any = response.response
        iterator = body.__aiter__()
        charset = "utf-8"
        try:
            await send(start)
            async for chunk in iterator:
                if isinstance(chunk, str):
                    chunk = chunk.encode(charset)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            await self._close(response)

    async def _send_sync_iterable(self, response: Response, start: Any, send: Send) -> None:
        source = response.response if response.direct_passthrough else response.iter_encoded()
        iterator: Iterator[bytes] = iter(source)  # type: ignore[arg-type]
        # One Context for every step: stream_with_context pushes the request
        # context inside the generator and must find it on the next step.
        ctx = contextvars.copy_context()
        try:
            await send(start)
            while True:
                chunk = await run_in_pool(self.executor, ctx.run, _next, iterator)
                if chunk is _END:
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await asyncio.shield(run_in_pool(self.executor, ctx.run, response.close))

    async def _close(self, response: Response) -> None:
        aclose = getattr(response.response, "aclose", None)
        if aclose is not None:
            await aclose()  # an async body never iterated (HEAD, 204, 304)
        if response.is_sequence or response.response is None:
            response.close()
        else:
            await run_in_pool(self.executor, response.close)


#: The attributes Flask's RequestContext.__init__ sets, which
#: FlaskAdapter._request_context sets itself.
_CONTEXT_FIELDS = frozenset(
    (
        "app",
        "request",
        "url_adapter",
        "flashes",
        "_session",
        "_after_request_functions",
        "_cv_tokens",
    )
)


#: Replaced on the app instance, these are called, not bypassed.
_REPLACED = frozenset(("request_context", "create_url_adapter", "request_class"))


def prebound_context_supported(app: Flask) -> bool:
    """May request contexts be built without ``RequestContext.__init__``?
    Only for Flask's own context and URL binding, and only while Flask's
    constructor sets exactly the attributes the adapter sets."""
    if (
        type(app).request_context is not Flask.request_context
        or type(app).create_url_adapter is not Flask.create_url_adapter
    ):
        return False
    probe = Flask("flask_async_worker_probe")
    ctx = probe.test_request_context()
    return type(ctx) is RequestContext and set(vars(ctx)) == _CONTEXT_FIELDS


def _next(iterator: Iterator[bytes]) -> Any:
    # StopIteration must not cross run_in_executor: it would never reach
    # the awaiting task.
    return next(iterator, _END)


def _ignore() -> None:
    return None


def _canceller(task: asyncio.Task[Any]) -> Callable[[], None]:
    def cancel() -> None:
        task.cancel()

    return cancel
