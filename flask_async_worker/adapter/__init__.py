"""The Flask side of the seam: an ASGI application wrapping a Flask app."""

from __future__ import annotations

from .app import FlaskAdapter

__all__ = ["FlaskAdapter"]
