"""Serve a Flask application as ASGI.

Every request currently runs through Flask's own ``wsgi_app`` in the
executor (one hop), with ``async_to_sync`` replaced so that a coroutine
met in a thread (an ``async def`` view, hook or error handler) is awaited
on the worker's loop instead of in a fresh event loop per call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from flask import Flask

from ..server import Receive, Scope, Send
from ..wsgi import WSGIAdapter


class FlaskAdapter:
    """An ASGI application serving ``app``."""

    def __init__(self, app: Flask, executor: Executor | None = None, **wsgi_options: Any) -> None:
        self.flask_app = app
        self.executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wsgi = WSGIAdapter(app, executor, **wsgi_options)
        app.async_to_sync = self._async_to_sync  # type: ignore[method-assign]

    def _async_to_sync(self, func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            loop = self._loop
            if loop is None or not loop.is_running():
                # Not under the worker (a test client, a CLI command):
                # behave like Flask.
                return asyncio.run(func(*args, **kwargs))
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError(
                    "an async function was called synchronously on the event loop thread"
                )
            # run_coroutine_threadsafe carries this thread's context (the
            # request and app contexts) into the coroutine.
            return asyncio.run_coroutine_threadsafe(func(*args, **kwargs), loop).result()

        return run

    _loop_thread: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        await self._wsgi(scope, receive, send)
