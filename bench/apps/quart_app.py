"""The Quart app the Quart rows serve: the routes of ``flask_app.py``.

Sync views stay sync (Quart runs them in its thread pool, as it would an
unported Flask view); everything that touches the body or waits is async,
as Quart requires. ``/ws/echo`` (scenario 10) is a ``@app.websocket`` route.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from quart import Quart, Response, jsonify, request, websocket

app = Quart(__name__)

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
async def upload() -> Response:
    size = 0
    async for chunk in request.body:
        size += len(chunk)
    return Response(str(size).encode(), mimetype="text/plain")


@app.get("/download")
async def download() -> Response:
    mb = min(int(request.args.get("mb", "100")), 1024)
    chunks = mb * MIB // len(CHUNK)

    async def generate() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield CHUNK

    response = Response(generate(), mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(chunks * len(CHUNK))
    return response


@app.get("/sse")
async def sse() -> Response:
    interval = min(float(request.args.get("interval", "1")), 60.0)
    count = min(int(request.args.get("n", "30")), 10_000)

    async def events() -> AsyncIterator[bytes]:
        for n in range(count):
            yield b"data: tick %d\n\n" % n
            await asyncio.sleep(interval)

    response = Response(events(), mimetype="text/event-stream")
    response.timeout = None
    return response


app.add_url_rule("/sse-async", "sse_async", sse)


@app.websocket("/ws/echo")
async def ws_echo() -> None:
    while True:
        message = await websocket.receive()
        await websocket.send(message)
