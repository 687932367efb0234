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

Other Flask applications reached while the adapter serves a request — a
second app mounted with werkzeug's ``DispatcherMiddleware`` inside the
served one — get the same behaviour: :func:`install_class_bridge` replaces
``Flask.async_to_sync`` once with a function that bridges to the loop of
the adapter serving the current request (:data:`SERVING`, a context
variable set in the request's task and carried into its executor calls),
and is Flask's own everywhere else.  A Flask subclass that overrides
``async_to_sync`` keeps its override.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from flask import Flask


class Passthrough:
    """The view's own coroutine functions (unbound), while the adapter calls
    a sync wrapper around an async view on the loop thread: ``ensure_sync``
    hands their coroutines back un-awaited for the adapter to await, and
    records them so that one the wrapper dropped instead of returning is
    found and closed."""

    __slots__ = ("handed", "targets")

    def __init__(self, targets: frozenset[Any]) -> None:
        self.targets = targets
        self.handed: list[Coroutine[Any, Any, Any]] = []

    def dropped(self) -> list[Coroutine[Any, Any, Any]]:
        """Coroutines handed back that nobody started: the wrapper kept
        them instead of returning them.  They are closed."""
        left = [c for c in self.handed if inspect.getcoroutinestate(c) == inspect.CORO_CREATED]
        for coro in left:
            coro.close()
        return left


PASSTHROUGH: contextvars.ContextVar[Passthrough | None] = contextvars.ContextVar(
    "flask_async_worker.passthrough", default=None
)


def handed_back(func: Any, coro: Coroutine[Any, Any, Any]) -> bool:
    """If ``func`` (maybe a bound method) is one of the view's coroutine
    functions, record ``coro`` as handed back and say so."""
    passthrough = PASSTHROUGH.get()
    if passthrough is None or getattr(func, "__func__", func) not in passthrough.targets:
        return False
    passthrough.handed.append(coro)
    return True


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


#: The binding of the adapter serving the current request: set in the
#: request's task, it travels into every executor call the request makes.
SERVING: contextvars.ContextVar[LoopBinding | None] = contextvars.ContextVar(
    "flask_async_worker.serving", default=None
)

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


AsyncToSync = Callable[[Callable[..., Coroutine[Any, Any, Any]]], Callable[..., Any]]


def bridged(
    func: Callable[..., Coroutine[Any, Any, Any]],
    binding_of: Callable[[], LoopBinding | None],
    fallback: Callable[[], Callable[..., Any]],
) -> Callable[..., Any]:
    """``func`` made sync: run on the loop of ``binding_of()`` (decided at
    call time), or by ``fallback()`` when no worker loop is running."""

    def run(*args: Any, **kwargs: Any) -> Any:
        binding = binding_of()
        loop = binding.loop if binding is not None else None
        if binding is None or loop is None or not loop.is_running() or loop.is_closed():
            return fallback()(*args, **kwargs)
        if binding.on_loop_thread():
            coro = func(*args, **kwargs)
            if handed_back(func, coro):
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


def make_async_to_sync(app: Flask, binding: LoopBinding) -> AsyncToSync:
    """The served app's ``async_to_sync``: always the adapter's loop, also
    for code outside a request (a thread the app started, say)."""
    flask_default = _flask_async_to_sync.__get__(app)

    def async_to_sync(func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        return bridged(func, lambda: binding, lambda: flask_default(func))

    return async_to_sync


#: ``Flask.async_to_sync`` as it was before :func:`install_class_bridge`.
_flask_async_to_sync: Callable[..., Any] = Flask.async_to_sync


def _class_async_to_sync(
    self: Flask, func: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Any]:
    """``Flask.async_to_sync`` while the adapter is in use: the worker's loop
    inside a request it serves, Flask's own behaviour everywhere else."""
    if SERVING.get() is None:
        return _flask_async_to_sync(self, func)  # type: ignore[no-any-return]
    return bridged(func, SERVING.get, lambda: _flask_async_to_sync(self, func))


_installed = False


def install_class_bridge() -> None:
    """Make every Flask app reached by a served request use the worker's loop.

    Done once per process, by the first adapter; whatever ``Flask.async_to_sync``
    was then is what runs outside served requests.
    """
    global _flask_async_to_sync, _installed
    if not _installed:
        _installed = True
        _flask_async_to_sync = Flask.async_to_sync
        Flask.async_to_sync = _class_async_to_sync  # type: ignore[method-assign]


class BridgedApp:
    """An ASGI app (a plain WSGI app behind ``WSGIAdapter``) whose requests
    may reach Flask apps — ``DispatcherMiddleware`` mounting several, say —
    with those apps' async code bridged to the serving loop, as inside a
    Flask app served by the adapter."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.binding = LoopBinding()
        install_class_bridge()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.binding.loop is None:
            self.binding.bind(asyncio.get_running_loop())
        token = SERVING.set(self.binding)
        try:
            await self.app(scope, receive, send)
        finally:
            SERVING.reset(token)
