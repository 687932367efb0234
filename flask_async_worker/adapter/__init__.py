"""The Flask side of the seam: an ASGI application wrapping a Flask app."""

from __future__ import annotations

from .app import AdapterConfig, FlaskAdapter
from .extension import FlaskAsync, run_sync, stream_with_context
from .templating import (
    render_template_async,
    render_template_string_async,
    stream_template_async,
)
from .websocket import ConnectionClosed, Sock, SyncWebSocket, WebSocket

__all__ = [
    "AdapterConfig",
    "ConnectionClosed",
    "FlaskAdapter",
    "FlaskAsync",
    "Sock",
    "SyncWebSocket",
    "WebSocket",
    "render_template_async",
    "render_template_string_async",
    "run_sync",
    "stream_template_async",
    "stream_with_context",
]
