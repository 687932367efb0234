"""A gunicorn worker that serves Flask apps (and any ASGI app) on an event loop.

    gunicorn -k flask_async_worker.UVLoopWorker app:app

The worker classes are imported lazily so that importing the package (for
the adapter or the settings) does not import gunicorn's worker machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .adapter import (
        ConnectionClosed,
        FlaskAdapter,
        FlaskAsync,
        Sock,
        SyncWebSocket,
        WebSocket,
        render_template_async,
        render_template_string_async,
        run_sync,
        stream_template_async,
        stream_with_context,
    )
    from .workers import AsyncioWorker, UVLoopWorker

__all__ = [
    "AsyncioWorker",
    "ConnectionClosed",
    "FlaskAdapter",
    "FlaskAsync",
    "Sock",
    "SyncWebSocket",
    "UVLoopWorker",
    "WebSocket",
    "__version__",
    "render_template_async",
    "render_template_string_async",
    "run_sync",
    "stream_template_async",
    "stream_with_context",
]

_ADAPTER_NAMES = (
    "ConnectionClosed",
    "FlaskAdapter",
    "FlaskAsync",
    "render_template_async",
    "render_template_string_async",
    "Sock",
    "SyncWebSocket",
    "WebSocket",
    "run_sync",
    "stream_template_async",
    "stream_with_context",
)


def __getattr__(name: str) -> Any:
    if name in ("AsyncioWorker", "UVLoopWorker"):
        from . import workers

        return getattr(workers, name)
    if name in _ADAPTER_NAMES:
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(name)
