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

    A sync generator gets Flask's own wrapper.  An async generator gets a
    :class:`RequestStream`: the request context stays pushed from this call
    until the stream ends or is closed, so ``request``, ``g`` and
    ``session`` work while it runs and the teardown hooks run once, after
    the last chunk — what Flask's wrapper does for sync generators.
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
    adapter = ctx.app.extensions.get("flask_async_worker")
    if adapter is None:
        # Not served by the adapter (Flask's own async support): push the
        # context around the iteration.
        async def wrapped() -> AsyncIterator[Any]:
            with ctx:
                async for item in generator:
                    yield item

        return wrapped()
    return RequestStream(generator, ctx, adapter)


#: Streams made during a request, closed by the adapter after the response
#: if they were never iterated (a body replaced by an error, a HEAD).
STREAMS_KEY = "_flask_async_worker_streams"


class RequestStream:
    """An async iterator that holds its request context until it ends.

    The context is pushed once more when the stream is made, inside the
    view; the request's own pop then leaves it active, and the stream pops
    it when it finishes, fails or is closed, which runs the teardown hooks.
    Everything happens in the request's task, so the context-variable
    tokens are reset where they were set, in reverse order.
    """

    __slots__ = ("_closed", "_ctx", "_dispatch", "_generator")

    def __init__(self, generator: Any, ctx: Any, adapter: FlaskAdapter) -> None:
        self._generator = generator.__aiter__()
        self._ctx = ctx
        self._dispatch = adapter.dispatch
        self._closed = False
        ctx._cv_tokens.append((_cv_request.set(ctx), None))
        ctx.__dict__.setdefault(STREAMS_KEY, []).append(self)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._generator.__anext__()
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except BaseException as exc:
            await self._finish(exc if isinstance(exc, Exception) else None)
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            aclose = getattr(self._generator, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._finish(None)

    async def _finish(self, exc: BaseException | None) -> None:
        if not self._closed:
            self._closed = True
            await self._dispatch.pop(self._ctx, exc)


async def close_streams(ctx: Any) -> None:
    """Close the request's streams that were never iterated to the end."""
    streams: list[RequestStream] | None = ctx.__dict__.pop(STREAMS_KEY, None)
    for stream in streams or ():
        await stream.aclose()
