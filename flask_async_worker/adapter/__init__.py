"""The Flask side of the seam: an ASGI application wrapping a Flask app."""

from __future__ import annotations

from .app import AdapterConfig, FlaskAdapter
from .extension import FlaskAsync, run_sync, stream_with_context

__all__ = ["AdapterConfig", "FlaskAdapter", "FlaskAsync", "run_sync", "stream_with_context"]
