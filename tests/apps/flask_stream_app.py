"""A Flask app exercising bodies, streams, disconnects and serving hooks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator

from flask import Flask, Response, current_app, g, jsonify, request, send_file
from flask import stream_with_context as flask_stream_with_context

from flask_async_worker import FlaskAsync, run_sync, stream_with_context

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = (
    int(os.environ.get("MAX_CONTENT_LENGTH", 4 * 1024 * 1024)) or None
)
app.config["ASYNC_WORKER_SPOOL_SIZE"] = 256 * 1024
app.config["ASYNC_WORKER_CANCEL_ON_DISCONNECT"] = os.environ.get("CANCEL") == "1"
serving = FlaskAsync(app)
EVENTS: list[str] = []
BIG_FILE = os.path.join(tempfile.gettempdir(), f"flask-async-worker-big-{os.getpid()}.bin")


@serving.before_serving
async def start() -> None:
    EVENTS.append(f"before_serving loop={id(asyncio.get_running_loop())}")
    current_app.extensions["resource_loop"] = asyncio.get_running_loop()


@serving.after_serving
async def stop() -> None:
    # The sparse file /file serves belongs to this worker: leave no trace.
    with contextlib.suppress(FileNotFoundError):
        os.remove(BIG_FILE)
    marker = os.environ.get("SERVING_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(
                f"after_serving {os.getpid()} same_loop="
                f"{current_app.extensions['resource_loop'] is asyncio.get_running_loop()}\n"
            )


@app.get("/events")
def events() -> Response:
    return jsonify(events=EVENTS, pid=os.getpid())


@app.get("/threads")
def threads() -> Response:
    return jsonify(count=threading.active_count())


@app.get("/sleep")
async def sleep() -> Response:
    await asyncio.sleep(float(request.args.get("s", "1")))
    return jsonify(
        ok=True,
        same_loop=current_app.extensions.get("resource_loop") is asyncio.get_running_loop(),
    )


@app.get("/sse")
async def sse() -> Response:
    interval = float(request.args.get("interval", "0.1"))
    tag = request.args.get("tag", "")

    @stream_with_context
    async def stream() -> AsyncIterator[str]:
        EVENTS.append(f"sse-open {tag} path={request.path}")
        try:
            n = 0
            while True:
                yield f"data: {n}\n\n"
                n += 1
                await asyncio.sleep(interval)
        finally:
            EVENTS.append(f"sse-closed {tag}")

    return Response(stream(), mimetype="text/event-stream")


@app.get("/sync-stream")
def sync_stream() -> Response:
    tag = request.args.get("tag", "")

    def stream() -> Iterator[str]:
        EVENTS.append(f"sync-open {tag} path={request.path}")
        try:
            n = 0
            while True:
                yield f"data: {n}\n\n"
                n += 1
                time.sleep(0.05)
        finally:
            EVENTS.append(f"sync-closed {tag}")

    return Response(flask_stream_with_context(stream()), mimetype="text/event-stream")


PRODUCED: dict[str, int] = {}


@app.get("/sync-download")
def sync_download() -> Response:
    """A large body from a sync generator: how far it runs ahead of a client
    that does not read is the download backpressure."""
    tag = request.args.get("tag", "")
    chunks = int(request.args.get("mb", "64")) * 16
    block = b"x" * 65536

    def stream() -> Iterator[bytes]:
        PRODUCED[tag] = 0
        try:
            for _ in range(chunks):
                PRODUCED[tag] += len(block)
                yield block
        finally:
            EVENTS.append(f"sync-download-closed {tag}")

    return Response(stream(), mimetype="application/octet-stream")


@app.get("/produced")
def produced() -> Response:
    return jsonify(produced=PRODUCED.get(request.args.get("tag", ""), -1))


@app.get("/async-sync-stream")
async def async_view_sync_stream() -> Response:
    """An async view returning a sync generator: pulled in the executor."""
    g.value = request.args.get("v", "")

    def stream() -> Iterator[str]:
        for i in range(3):
            yield f"{g.value}:{i};"

    return Response(flask_stream_with_context(stream()))


@app.post("/upload")
async def upload() -> Response:
    stream = request.environ["wsgi.input"]
    data = request.get_data()
    return jsonify(size=len(data), spooled=type(stream).__name__, form=dict(request.form))


@app.post("/upload-sync")
def upload_sync() -> Response:
    total = 0
    delay = float(request.args.get("delay", "0"))
    while True:
        chunk = request.stream.read(65536)
        if not chunk:
            break
        total += len(chunk)
        if delay:
            time.sleep(delay)
    tag = request.args.get("tag")
    if tag:
        EVENTS.append(f"upload-sync-complete {tag} {total}")
    return jsonify(size=total)


@app.get("/file")
def file() -> Response:
    size = int(request.args.get("mb", "20")) * 1024 * 1024
    if not os.path.exists(BIG_FILE) or os.path.getsize(BIG_FILE) != size:
        with open(BIG_FILE, "wb") as f:
            f.truncate(size)
    return send_file(BIG_FILE, mimetype="application/octet-stream")


@app.get("/slow-view")
async def slow_view() -> Response:
    tag = request.args.get("tag", "")
    try:
        await asyncio.sleep(1.0)
    except asyncio.CancelledError:
        EVENTS.append(f"view-cancelled {tag}")
        raise
    EVENTS.append(f"view-finished {tag}")
    return jsonify(done=True)


@app.get("/run-sync")
async def run_sync_view() -> Response:
    g.marker = request.args.get("m", "")
    loop_thread = threading.get_ident()

    def blocking() -> dict[str, object]:
        time.sleep(0.05)
        return {
            "marker": g.marker,
            "arg": request.args.get("m"),
            "off_loop": threading.get_ident() != loop_thread,
        }

    return jsonify(await run_sync(blocking))


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


@app.get("/block-in-async")
async def block_in_async() -> Response:
    time.sleep(float(request.args.get("s", "0.3")))  # the mistake the watchdog names
    return jsonify(ok=True)
