"""What an app can ask of the worker: serving hooks, blocking calls, streams.

``FlaskAsync(app)`` registers coroutines (or functions) to run once per
worker on the worker's loop — ``before_serving`` after the fork, before the
first request; ``after_serving`` when the worker stops — so an async
resource (a database pool, an ``httpx.AsyncClient``) is created on the loop
that will use it and closed on it.  They run inside an application context.

``run_sync(func, *args)`` runs blocking code from an async view off the
loop, in the loop's default executor, with the request context carried
over, and
``stream_with_context`` wraps a sync or an async generator so that the
request context is available while the response streams.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask
from flask import stream_with_context as flask_stream_with_context
from flask.globals import _cv_request

if TYPE_CHECKING:
    from .app import FlaskAdapter

T = TypeVar("T")
Hook = Callable[[], Any]


class FlaskAsync:
    """The Flask extension object (``app.extensions["flask_async"]``)."""

    def __init__(self, app: Flask | None = None) -> None:
        self.before: list[Hook] = []
        self.after: list[Hook] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions["flask_async"] = self

    def before_serving(self, func: Hook) -> Hook:
        """Run ``func`` (sync or async) once per worker before serving."""
        self.before.append(func)
        return func

    def after_serving(self, func: Hook) -> Hook:
        """Run ``func`` once per worker after the last request, before exit."""
        self.after.append(func)
        return func


async def run_serving_hooks(adapter: FlaskAdapter, which: str) -> None:
    app = adapter.flask_app
    ext: FlaskAsync | None = app.extensions.get("flask_async")
    if ext is None:
        return
    hooks = ext.before if which == "before" else list(reversed(ext.after))
    if not hooks:
        return
    with app.app_context():
        for hook in hooks:
            rv = hook()
            if inspect.isawaitable(rv):
                await rv


async def run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking ``func`` off the loop, in the loop's default executor.

    The call sees the caller's context (``request``, ``g``, ``session``,
    ``current_app``), copied at the time of the call.

    Not the pool that runs sync views: a sync view may be waiting, in
    ``ensure_sync``, for the very coroutine that calls this; were every
    thread of its pool held that way, the call would never start.  Under
    the worker the default executor is a pool of its own
    (``flask-async-worker-offload``), as ``asyncio.to_thread`` and DNS
    lookups use it too.
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, func, *args, **kwargs)
    return await loop.run_in_executor(None, call)


def stream_with_context(generator: Any) -> Any:
    """Flask's ``stream_with_context``, for async generators as well.

    A sync generator gets Flask's own wrapper.  An async generator is wrapped
    so that the request context (captured now, in the view) is pushed again
    while it runs on the loop, and popped (running teardown hooks, as Flask
    does for streamed responses) when it finishes or is closed.
    """
    if not inspect.isasyncgen(generator) and not hasattr(generator, "__aiter__"):
        if callable(generator) and inspect.isasyncgenfunction(generator):

            @functools.wraps(generator)
            def decorator(*args: Any, **kwargs: Any) -> Any:
                return stream_with_context(generator(*args, **kwargs))

            return decorator
        result: Iterator[Any] = flask_stream_with_context(generator)
        return result
    ctx = _cv_request.get(None)
    if ctx is None:
        raise RuntimeError("stream_with_context needs an active request context")
    app = ctx.app
    adapter = app.extensions.get("flask_async_worker")

    async def wrapped() -> AsyncIterator[Any]:
        if adapter is None:
            with ctx:
                async for item in generator:
                    yield item
            return
        dispatch = adapter.dispatch
        await dispatch.push(ctx)
        error: BaseException | None = None
        try:
            async for item in generator:
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            aclose = getattr(generator, "aclose", None)
            if aclose is not None:
                await aclose()
            await dispatch.pop(ctx, error if isinstance(error, Exception) else None)

    return wrapped()
