"""How Flask's ``ensure_sync``/``async_to_sync`` behave under the worker.

Flask turns every ``async def`` callable into a sync one through
``app.async_to_sync``; by default that starts a new event loop in a new
thread per call, which gives async code no concurrency and breaks clients
and pools bound to a loop.  The adapter replaces it (on the app instance,
the extension point Flask documents) with :func:`make_async_to_sync`:

* called from an executor thread (a sync view, or Flask's own request
  handling on the thread path), the coroutine is run on the worker's loop
  and the thread waits for it — ``run_coroutine_threadsafe`` carries the
  thread's context (request, ``g``, session) into the coroutine, and
  ``ContextVar`` values it sets are carried back, as asgiref does;
* called on the loop thread, for the view's own coroutine function, while
  the adapter is calling a sync wrapper around it, the coroutine is handed
  back un-awaited: a sync decorator around an async view
  (``login_required``, ``MethodView.dispatch_request``) returns what
  ``ensure_sync(view)(...)`` returns, and the adapter awaits it.  Any other
  coroutine function the wrapper runs (an async permission check, say) is
  treated as below: its result is what the wrapper gets, never a coroutine;
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

#: While the adapter calls a sync wrapper around an async view on the loop
#: thread: the view's own coroutine functions (unbound), whose coroutines
#: ``ensure_sync`` hands back un-awaited for the adapter to await.
PASSTHROUGH: contextvars.ContextVar[frozenset[Any]] = contextvars.ContextVar(
    "flask_async_worker.passthrough", default=frozenset()
)


def passes_through(func: Any) -> bool:
    """Is ``func`` (maybe a bound method) one of the view's coroutine functions?"""
    targets = PASSTHROUGH.get()
    return bool(targets) and getattr(func, "__func__", func) in targets


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


_UNSET = object()


def restore_context(context: contextvars.Context) -> None:
    """Carry ``ContextVar`` values set while running in ``context`` (a copy)
    back into the current context, as if the code had run here — what
    asgiref's ``async_to_sync`` does, so that a var set by a hook run
    elsewhere is seen by the view, as under Flask."""
    for var, value in context.items():
        if var.get(_UNSET) is not value:
            var.set(value)


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
                if passes_through(func):
                    return coro
                return run_without_suspending(coro, getattr(func, "__qualname__", repr(func)))
            captured: list[contextvars.Context] = []

            async def main() -> Any:
                try:
                    return await func(*args, **kwargs)
                finally:
                    captured.append(contextvars.copy_context())

            try:
                return asyncio.run_coroutine_threadsafe(main(), loop).result()
            finally:
                if captured:
                    restore_context(captured[0])

        run.__wrapped__ = func  # type: ignore[attr-defined]
        return run

    return async_to_sync
