"""The Flask app every Flask row of the benchmark serves (same routes, same code).

Routes (the scenario numbers are those of docs/benchmarks.rst):

* ``/plaintext``        sync view, a short text body              (scenario 1)
* ``/json``             sync view, a small JSON object            (scenario 1)
* ``/async-plaintext``  ``async def`` view, the same short text   (scenario 2)
* ``/await?ms=50``      ``async def`` view awaiting ``asyncio.sleep`` (scenarios 3, 4)
* ``/fanout``           ``async def`` view awaiting three 100 ms calls at once (5)
* ``/upload``           sync view reading the request body as a stream (6)
* ``/download?mb=100``  sync view streaming a body from a generator (6)
* ``/sse``              Server-Sent Events from a sync generator (8, WSGI rows)
* ``/sse-async``        the same from an async generator (8, rows that iterate
  async bodies natively: our worker)
* ``/ws/echo``          WebSocket echo (10): ``flask_async_worker.Sock`` with an
  ``async def`` handler in ``app``; flask-sock (simple-websocket) with a sync
  handler in ``flask_sock_app.app``, the same app made by
  ``create_app("flask-sock")`` for the gunicorn gthread and gevent rows

Every row loads the same views: ``create_app`` registers them (in this order)
on a new Flask app, and only the WebSocket route differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

HELLO = b"Hello, World!"
CHUNK = b"x" * (64 * 1024)
MIB = 1024 * 1024


def plaintext() -> Response:
    return Response(HELLO, mimetype="text/plain")


def json_view() -> Response:
    return jsonify(message="Hello, World!")


async def async_plaintext() -> Response:
    return Response(HELLO, mimetype="text/plain")


async def await_view() -> Response:
    ms = min(float(request.args.get("ms", "50")), 10_000.0)
    await asyncio.sleep(ms / 1000.0)
    return Response(b"awaited", mimetype="text/plain")


async def fanout() -> Response:
    await asyncio.gather(asyncio.sleep(0.1), asyncio.sleep(0.1), asyncio.sleep(0.1))
    return Response(b"fanned out", mimetype="text/plain")


def upload() -> Response:
    stream = request.stream
    size = 0
    while True:
        chunk = stream.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
    return Response(str(size).encode(), mimetype="text/plain")


def download() -> Response:
    mb = min(int(request.args.get("mb", "100")), 1024)
    chunks = mb * MIB // len(CHUNK)

    def generate() -> Iterator[bytes]:
        for _ in range(chunks):
            yield CHUNK

    return Response(
        generate(),
        mimetype="application/octet-stream",
        headers={"Content-Length": str(chunks * len(CHUNK))},
    )


def _sse_params() -> tuple[float, int]:
    interval = min(float(request.args.get("interval", "1")), 60.0)
    count = min(int(request.args.get("n", "30")), 10_000)
    return interval, count


def sse() -> Response:
    interval, count = _sse_params()

    def events() -> Iterator[bytes]:
        for n in range(count):
            yield b"data: tick %d\n\n" % n
            time.sleep(interval)

    return Response(events(), mimetype="text/event-stream")


async def sse_async() -> Response:
    interval, count = _sse_params()

    async def events() -> AsyncIterator[bytes]:
        for n in range(count):
            yield b"data: tick %d\n\n" % n
            await asyncio.sleep(interval)

    return Response(events(), mimetype="text/event-stream")  # type: ignore[arg-type]


async def ws_echo(ws: Any) -> None:
    """``flask_async_worker.Sock``'s handler: on the worker's loop, no thread held."""
    while True:
        await ws.send(await ws.receive())


def ws_echo_sync(ws: Any) -> None:
    """flask-sock's handler: one thread (or greenlet) per WebSocket."""
    while True:
        ws.send(ws.receive())


def create_app(websocket: str = "worker") -> Flask:
    """The benchmark's Flask app; ``websocket`` picks what serves ``/ws/echo``.

    ``"worker"``: ``flask_async_worker.Sock`` (no route if it is not
    importable); ``"flask-sock"``: flask-sock.
    """
    app = Flask(__name__)
    app.add_url_rule("/plaintext", view_func=plaintext, methods=["GET"])
    app.add_url_rule("/json", view_func=json_view, methods=["GET"])
    app.add_url_rule("/async-plaintext", view_func=async_plaintext, methods=["GET"])
    app.add_url_rule("/await", view_func=await_view, methods=["GET"])
    app.add_url_rule("/fanout", view_func=fanout, methods=["GET"])
    app.add_url_rule("/upload", view_func=upload, methods=["POST"])
    app.add_url_rule("/download", view_func=download, methods=["GET"])
    app.add_url_rule("/sse", view_func=sse, methods=["GET"])
    app.add_url_rule("/sse-async", view_func=sse_async, methods=["GET"])
    if websocket == "flask-sock":
        import flask_sock

        flask_sock.Sock(app).route("/ws/echo")(ws_echo_sync)
    elif websocket == "worker":
        try:
            from flask_async_worker import Sock
        except ImportError:  # a flask_async_worker without WebSocket support
            pass
        else:
            Sock(app).route("/ws/echo")(ws_echo)
    else:
        raise ValueError(f"websocket={websocket!r}")
    return app


app = create_app()
