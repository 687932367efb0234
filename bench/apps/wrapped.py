"""The Flask app behind the WSGI-to-ASGI adapters the ASGI rows need."""

from __future__ import annotations

from a2wsgi import WSGIMiddleware
from asgiref.wsgi import WsgiToAsgi
from flask_app import app

#: gunicorn ``-k asgi`` row: the adapter Flask's documentation recommends.
wsgitoasgi = WsgiToAsgi(app)  # type: ignore[no-untyped-call]
#: uvicorn worker row: a2wsgi with its default thread pool (10 threads).
a2wsgi = WSGIMiddleware(app)  # type: ignore[arg-type]
