"""How Flask's ``ensure_sync``/``async_to_sync`` behave under the worker.

Flask turns every ``async def`` callable into a sync one through
``app.async_to_sync``; by default that starts a new event loop in a new
thread per call, which gives async code no concurrency and breaks clients
and pools bound to a loop.  The adapter replaces it (on the app instance,
the extension point Flask documents) with :func:`make_async_to_sync`:

* called from an executor thread (a sync view, or Flask's own request
  handling on the thread path), the coroutine is run on the worker's loop
  and the thread waits for it — ``run_coroutine_threadsafe`` carries the
  thread's context (request, ``g``, session) into the coroutine;
* called on the loop thread while the adapter is calling a view function,
  the coroutine is handed back un-awaited: a sync decorator around an async
  view (``login_required``, ``MethodView.dispatch_request``) returns what
  ``ensure_sync(view)(...)`` returns, and the adapter awaits it;
* called on the loop thread anywhere else (an async context processor
  while a template renders, say), the coroutine is run to completion if it
  finishes without suspending; one that really waits cannot be run there
  without blocking the loop, and fails with an error that says so;
* with no running worker loop (a CLI command, Flask's own test client), it
  is Flask's default.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from flask import Flask

#: Set while the adapter calls a view function on the loop thread.
PASSTHROUGH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flask_async_worker.passthrough", default=False
)


class LoopBinding:
    """The loop (and its thread) an app's coroutines must run on."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()

    def on_loop_thread(self) -> bool:
        return self.thread == threading.get_ident()


def run_without_suspending(coro: Coroutine[Any, Any, Any], name: str) -> Any:
    """Drive ``coro`` synchronously; fail if it would have to wait."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError(
        f"{name} is async and awaited something while being called synchronously on "
        "the event loop thread (for example from a sync hook or while rendering a "
        "template in an async view). Make the caller async, or make this function sync."
    )


def make_async_to_sync(
    app: Flask, binding: LoopBinding
) -> Callable[[Callable[..., Coroutine[Any, Any, Any]]], Callable[..., Any]]:
    flask_default = Flask.async_to_sync.__get__(app)

    def async_to_sync(func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            loop = binding.loop
            if loop is None or not loop.is_running() or loop.is_closed():
                return flask_default(func)(*args, **kwargs)
            if binding.on_loop_thread():
                coro = func(*args, **kwargs)
                if PASSTHROUGH.get():
                    return coro
                return run_without_suspending(coro, getattr(func, "__qualname__", repr(func)))
            return asyncio.run_coroutine_threadsafe(func(*args, **kwargs), loop).result()

        run.__wrapped__ = func  # type: ignore[attr-defined]
        return run

    return async_to_sync
