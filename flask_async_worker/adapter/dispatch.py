"""Flask's request handling, as coroutines, for requests to async views.

This mirrors ``Flask.wsgi_app`` and the methods it calls
(``full_dispatch_request``, ``preprocess_request``, ``dispatch_request``,
``finalize_request``, ``process_response``, ``handle_user_exception``,
``handle_http_exception``, ``handle_exception``, ``do_teardown_request``,
``do_teardown_appcontext`` and the context push/pop) step for step, with one
difference: each user function is awaited when it is async and called
directly when it is sync, on the loop thread, in the request's task.  So a
request's sync hooks, its async view and its teardown all see one thread
and one ``contextvars.Context``, as under Flask's thread workers, while the
view's awaits hold no thread.

It depends on Flask internals (``RequestContext._cv_tokens``,
``_session``, ``_after_request_functions``, ``Flask._find_error_handler``);
:func:`supported` checks they are there, and the adapter serves everything
on the thread path (Flask's own ``wsgi_app``) when they are not, or when
the application customised any of the mirrored methods.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from itertools import chain
from typing import Any

from flask import Flask, Response
from flask.ctx import AppContext, RequestContext
from flask.globals import _cv_app, _cv_request, request_ctx
from flask.signals import (
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    got_request_exception,
    request_finished,
    request_started,
    request_tearing_down,
)
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import RoutingException

from ..pool import run_in_pool
from .body import RequestBody
from .bridge import PASSTHROUGH, Passthrough, restore_context
from .views import view_coroutine_functions

#: Flask methods the native path re-implements: an app that overrides any
#: of them is served on the thread path, where its override runs.
MIRRORED = (
    "wsgi_app",
    "full_dispatch_request",
    "preprocess_request",
    "dispatch_request",
    "finalize_request",
    "process_response",
    "handle_user_exception",
    "handle_http_exception",
    "handle_exception",
    "do_teardown_request",
    "do_teardown_appcontext",
    # not re-implemented, but never called on the native path:
    "ensure_sync",
    "__call__",
)


def customised(app: Flask) -> list[str]:
    """Why ``app`` cannot take the native path (empty when it can)."""
    reasons = [
        f"{type(app).__name__}.{name} is overridden"
        for name in MIRRORED
        if getattr(type(app), name) is not getattr(Flask, name)
    ]
    if "wsgi_app" in vars(app):
        reasons.append("app.wsgi_app is wrapped by WSGI middleware")
    reasons.extend(
        f"app.{name} is replaced on the instance"
        for name in MIRRORED
        if name != "wsgi_app" and name in vars(app)
    )
    ctx_cls = type(app).request_context
    if ctx_cls is not Flask.request_context:
        reasons.append("request_context is overridden")
    if not supported():
        reasons.append("this Flask version's internals are not the ones the adapter mirrors")
    return reasons


def supported() -> bool:
    app = Flask("flask_async_worker_probe")
    with app.test_request_context():
        ctx = _cv_request.get()
        return (
            hasattr(ctx, "_cv_tokens")
            and hasattr(ctx, "_session")
            and hasattr(ctx, "_after_request_functions")
            and hasattr(app, "_find_error_handler")
            and hasattr(app, "_got_first_request")
        )


class NativeDispatch:
    """Runs Flask's request pipeline on the loop for one application."""

    def __init__(
        self,
        app: Flask,
        executor: Executor | None,
        *,
        sync_hooks_in_executor: bool = False,
        blocking_threshold: float = 0.1,
        max_body: int = 16 * 1024 * 1024,
        log: Callable[..., None] | None = None,
    ) -> None:
        self.app = app
        self.executor = executor
        self.hooks_in_executor = sync_hooks_in_executor
        self.threshold = blocking_threshold
        self.max_body = max_body
        self.log = log or app.logger.warning

    # -- calling user code ---------------------------------------------------------

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Await ``func`` when async; call it on the loop when sync.

        A sync function that returns an awaitable (a decorator that called
        an async view without awaiting it) has that awaitable awaited.
        """
        if inspect.iscoroutinefunction(func):
            return await func(*args)
        if self.hooks_in_executor:
            ctx = contextvars.copy_context()
            try:
                rv = await run_in_pool(self.executor, ctx.run, func, *args)
            finally:
                # A var the hook set is seen by the view, as under Flask.
                restore_context(ctx)
        else:
            started = time.perf_counter()
            rv = func(*args)
            elapsed = time.perf_counter() - started
            if elapsed > self.threshold:
                self.report_blocking(func, elapsed)
        if inspect.isawaitable(rv):
            rv = await rv
        return rv

    def report_blocking(self, func: Callable[..., Any], elapsed: float) -> None:
        if isinstance(func, functools.partial):
            func = func.func
        name = getattr(func, "__qualname__", None) or repr(func)
        module = getattr(func, "__module__", "")
        self.log(
            "%s.%s blocked the event loop for %.0f ms (sync code in a request to an async "
            "view runs on the loop thread; see ASYNC_WORKER_SYNC_HOOKS)",
            module,
            name,
            elapsed * 1000,
        )

    async def signal(self, sig: Any, **kwargs: Any) -> None:
        if sig.receivers:
            await sig.send_async(self.app, _sync_wrapper=self._sync_receiver, **kwargs)

    def _sync_receiver(self, func: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
        # A sync receiver is sync user code like a hook: reported when it
        # blocks the loop, moved to the pool by ASYNC_WORKER_SYNC_HOOKS.
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.call(functools.partial(func, *args, **kwargs))

        return call

    # -- contexts ----------------------------------------------------------------------

    async def push(self, ctx: RequestContext) -> None:
        app = self.app
        app_ctx: AppContext | None = _cv_app.get(None)
        if app_ctx is None or app_ctx.app is not app:
            app_ctx = app.app_context()
            app_ctx._cv_tokens.append(_cv_app.set(app_ctx))
            await self.signal(appcontext_pushed)
        else:
            app_ctx = None
        ctx._cv_tokens.append((_cv_request.set(ctx), app_ctx))
        if ctx._session is None:
            interface = app.session_interface
            ctx._session = await self.call(interface.open_session, app, ctx.request)
            if ctx._session is None:
                ctx._session = interface.make_null_session(app)
        if ctx.url_adapter is not None and ctx.request.url_rule is None:
            ctx.match_request()

    async def pop(self, ctx: RequestContext, exc: BaseException | None) -> None:
        clear_request = len(ctx._cv_tokens) == 1
        try:
            if clear_request:
                await self.teardown_request(exc)
                request_close = getattr(ctx.request, "close", None)
                if request_close is not None:
                    request_close()
        finally:
            current = _cv_request.get()
            token, app_ctx = ctx._cv_tokens.pop()
            _cv_request.reset(token)
            if clear_request:
                ctx.request.environ["werkzeug.request"] = None
            if app_ctx is not None:
                await self.pop_app(app_ctx, exc)
            if current is not ctx:
                raise AssertionError(
                    f"Popped wrong request context. ({current!r} instead of {ctx!r})"
                )

    async def pop_app(self, app_ctx: AppContext, exc: BaseException | None) -> None:
        try:
            if len(app_ctx._cv_tokens) == 1:
                await self.teardown_appcontext(exc)
        finally:
            current = _cv_app.get()
            _cv_app.reset(app_ctx._cv_tokens.pop())
        if current is not app_ctx:
            raise AssertionError(f"Popped wrong app context. ({current!r} instead of {app_ctx!r})")
        await self.signal(appcontext_popped)

    # -- the pipeline --------------------------------------------------------------------

    async def handle(self, ctx: RequestContext) -> Response:
        """``wsgi_app`` up to (not including) iterating the body."""
        app = self.app
        error: BaseException | None = None
        try:
            try:
                await self.push(ctx)
                response = await self.full_dispatch_request()
            except Exception as exc:
                error = exc
                response = await self.handle_exception(exc)
            except BaseException:
                error = sys.exc_info()[1]
                raise
            return response
        finally:
            preserve = ctx.request.environ.get("werkzeug.debug.preserve_context")
            if preserve is not None:
                # Flask's test client keeps the contexts for inspection.
                preserve(_cv_app.get())
                preserve(_cv_request.get())
            if error is not None and app.should_ignore_error(error):
                error = None
            await self.pop(ctx, error)

    async def full_dispatch_request(self) -> Response:
        app = self.app
        app._got_first_request = True
        try:
            await self.signal(request_started)
            rv = await self.preprocess_request()
            if rv is None:
                rv = await self.dispatch_request()
        except Exception as exc:
            rv = await self.handle_user_exception(exc)
        return await self.finalize_request(rv)

    async def preprocess_request(self) -> Any:
        app = self.app
        req = request_ctx.request
        names = (None, *reversed(req.blueprints))
        for name in names:
            if name in app.url_value_preprocessors:
                for url_func in app.url_value_preprocessors[name]:
                    url_func(req.endpoint, req.view_args)
        await self.receive_body(req)
        for name in names:
            if name in app.before_request_funcs:
                for before_func in app.before_request_funcs[name]:
                    rv = await self.call(before_func)
                    if rv is not None:
                        return rv
                    await self.receive_body(req)
        return None

    async def receive_body(self, req: Any) -> None:
        """Receive more of a body that was larger than the limit so far, if
        ``request.max_content_length`` now allows more (see body.py); the
        sync code that runs next may read it without blocking the loop."""
        body = req.environ.get("wsgi.input")
        if type(body) is not RequestBody or body.complete or body.disconnected:
            return
        limit = req.max_content_length
        await body.fill(self.max_body if limit is None else limit)

    async def dispatch_request(self) -> Any:
        app = self.app
        req = request_ctx.request
        if req.routing_exception is not None:
            app.raise_routing_exception(req)
        rule = req.url_rule
        assert rule is not None
        if getattr(rule, "provide_automatic_options", False) and req.method == "OPTIONS":
            return app.make_default_options_response()
        view = app.view_functions[rule.endpoint]
        view_args: dict[str, Any] = req.view_args or {}
        if inspect.iscoroutinefunction(view):
            return await view(**view_args)
        # A sync function around an async view that returns the view's
        # result as is (views.py): ensure_sync inside it hands the view's
        # coroutine back (see bridge.py), and it is awaited here.
        passthrough = Passthrough(view_coroutine_functions(view, req.method))
        token = PASSTHROUGH.set(passthrough)
        try:
            started = time.perf_counter()
            rv = view(**view_args)
            elapsed = time.perf_counter() - started
        except BaseException as exc:
            if passthrough.dropped() and not isinstance(exc, HTTPException):
                exc.add_note(_dropped_message(view))
            raise
        finally:
            PASSTHROUGH.reset(token)
        if elapsed > self.threshold:
            self.report_blocking(view, elapsed)
        try:
            # A decorator may have raised the request's body limit.
            await self.receive_body(req)
            while inspect.isawaitable(rv):
                rv = await rv
        finally:
            dropped = passthrough.dropped()
        if dropped:
            raise RuntimeError(_dropped_message(view))
        return rv

    async def handle_user_exception(self, exc: Exception) -> Any:
        app = self.app
        from werkzeug.exceptions import BadRequestKeyError

        if isinstance(exc, BadRequestKeyError) and (
            app.debug or app.config["TRAP_BAD_REQUEST_ERRORS"]
        ):
            exc.show_exception = True
        if isinstance(exc, HTTPException) and not app.trap_http_exception(exc):
            return await self.handle_http_exception(exc)
        handler = app._find_error_handler(exc, request_ctx.request.blueprints)
        if handler is None:
            raise exc
        return await self.call(handler, exc)

    async def handle_http_exception(self, exc: HTTPException) -> Any:
        if exc.code is None or isinstance(exc, RoutingException):
            return exc
        handler = self.app._find_error_handler(exc, request_ctx.request.blueprints)
        if handler is None:
            return exc
        return await self.call(handler, exc)

    async def handle_exception(self, exc: Exception) -> Response:
        app = self.app
        await self.signal(got_request_exception, exception=exc)
        propagate = app.config["PROPAGATE_EXCEPTIONS"]
        if propagate is None:
            propagate = app.testing or app.debug
        if propagate:
            raise exc
        app.log_exception(sys.exc_info())
        server_error: Any = InternalServerError(original_exception=exc)
        handler = app._find_error_handler(server_error, request_ctx.request.blueprints)
        if handler is not None:
            server_error = await self.call(handler, server_error)
        return await self.finalize_request(server_error, from_error_handler=True)

    async def finalize_request(self, rv: Any, from_error_handler: bool = False) -> Response:
        app = self.app
        response = make_response(app, rv)
        try:
            response = await self.process_response(response)
            await self.signal(request_finished, response=response)
        except Exception:
            if not from_error_handler:
                raise
            app.logger.exception("Request finalizing failed with an error while handling an error")
        return response

    async def process_response(self, response: Response) -> Response:
        app = self.app
        ctx = _cv_request.get()
        for func in ctx._after_request_functions:
            response = await self.call(func, response)
        for name in chain(ctx.request.blueprints, (None,)):
            if name in app.after_request_funcs:
                for func in reversed(app.after_request_funcs[name]):
                    response = await self.call(func, response)
        if not app.session_interface.is_null_session(ctx._session):
            await self.call(app.session_interface.save_session, app, ctx._session, response)
        return response

    async def teardown_request(self, exc: BaseException | None) -> None:
        app = self.app
        for name in chain(request_ctx.request.blueprints, (None,)):
            if name in app.teardown_request_funcs:
                for func in reversed(app.teardown_request_funcs[name]):
                    await self.call(func, exc)
        await self.signal(request_tearing_down, exc=exc)

    async def teardown_appcontext(self, exc: BaseException | None) -> None:
        app = self.app
        for func in reversed(app.teardown_appcontext_funcs):
            await self.call(func, exc)
        await self.signal(appcontext_tearing_down, exc=exc)


def _dropped_message(view: Any) -> str:
    name = getattr(view, "__qualname__", None) or repr(view)
    return (
        f"{name} called the async view it wraps without returning the result: on the "
        "event loop, a sync wrapper gets the view's coroutine from ensure_sync, not its "
        "result. Make the wrapper async, or return the view's result as is."
    )


def is_async_iterable(value: Any) -> bool:
    return hasattr(value, "__aiter__")


def make_response(app: Flask, rv: Any) -> Response:
    """``app.make_response``, also accepting an async iterable as the body."""
    body = rv[0] if isinstance(rv, tuple) and rv else rv
    if is_async_iterable(body):
        rest = rv[1:] if isinstance(rv, tuple) else ()
        response = app.make_response(("", *rest))
        response.response = body
        response.headers.pop("Content-Length", None)
        return response
    return app.make_response(rv)
