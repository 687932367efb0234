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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from flask import Flask, Response, jsonify, request

app = Flask(__name__)

HELLO = b"Hello, World!"
CHUNK = b"x" * (64 * 1024)
MIB = 1024 * 1024


@app.get("/plaintext")
def plaintext() -> Response:
    return Response(HELLO, mimetype="text/plain")


@app.get("/json")
def json_view() -> Response:
    return jsonify(message="Hello, World!")


@app.get("/async-plaintext")
async def async_plaintext() -> Response:
    return Response(HELLO, mimetype="text/plain")


@app.get("/await")
async def await_view() -> Response:
    ms = min(float(request.args.get("ms", "50")), 10_000.0)
    await asyncio.sleep(ms / 1000.0)
    return Response(b"awaited", mimetype="text/plain")


@app.get("/fanout")
async def fanout() -> Response:
    await asyncio.gather(asyncio.sleep(0.1), asyncio.sleep(0.1), asyncio.sleep(0.1))
    return Response(b"fanned out", mimetype="text/plain")


@app.post("/upload")
def upload() -> Response:
    stream = request.stream
    size = 0
    while True:
        chunk = stream.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
    return Response(str(size).encode(), mimetype="text/plain")


@app.get("/download")
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


@app.get("/sse")
def sse() -> Response:
    interval, count = _sse_params()

    def events() -> Iterator[bytes]:
        for n in range(count):
            yield b"data: tick %d\n\n" % n
            time.sleep(interval)

    return Response(events(), mimetype="text/event-stream")


@app.get("/sse-async")
async def sse_async() -> Response:
    interval, count = _sse_params()

    async def events() -> AsyncIterator[bytes]:
        for n in range(count):
            yield b"data: tick %d\n\n" % n
            await asyncio.sleep(interval)

    return Response(events(), mimetype="text/event-stream")  # type: ignore[arg-type]
