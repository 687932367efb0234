"""A Flask app for the HTTP/2 tests: sync and async views, bodies both ways,
streams that record when they are closed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
MARKS = Path(os.environ.get("H2_TEST_MARKS", "/tmp"))
CHUNK = bytes(range(256)) * 256  # 64 KiB, a pattern the client can check


def _mark(name: str) -> None:
    (MARKS / name).write_text(str(time.time()))


@app.get("/hello")
def hello() -> str:
    return "hello"


@app.get("/ahello")
async def ahello() -> str:
    return "ahello"


@app.get("/sleep")
async def sleep() -> Response:
    seconds = float(request.args.get("s", "0.5"))
    await asyncio.sleep(seconds)
    return jsonify(slept=seconds, thread=threading.current_thread().name)


@app.get("/sync-sleep")
def sync_sleep() -> Response:
    seconds = float(request.args.get("s", "0.5"))
    time.sleep(seconds)
    return jsonify(slept=seconds)


@app.post("/echo")
async def echo() -> Response:
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.post("/echo-sync")
def echo_sync() -> Response:
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = request.stream.read(65536)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
    return jsonify(size=size, sha256=digest.hexdigest())


@app.get("/download")
def download() -> Response:
    mib = int(request.args.get("mib", "1"))

    def chunks() -> Iterator[bytes]:
        for _ in range(mib * 16):
            yield CHUNK

    return Response(chunks(), mimetype="application/octet-stream")


@app.get("/adownload")
async def adownload() -> Response:
    mib = int(request.args.get("mib", "1"))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(mib * 16):
            yield CHUNK

    # Werkzeug's annotations know only sync iterables; the worker streams both.
    return Response(chunks(), mimetype="application/octet-stream")  # type: ignore[arg-type]


@app.get("/sse")
async def sse() -> Response:
    name = request.args.get("name", "sse")

    async def events() -> AsyncIterator[str]:
        try:
            for i in range(600):
                yield f"data: {i}\n\n"
                await asyncio.sleep(0.05)
        finally:
            _mark(name + ".closed")

    return Response(events(), mimetype="text/event-stream")  # type: ignore[arg-type]


@app.route("/scope", methods=["GET", "POST", "HEAD"])
def scope() -> Response:
    env = request.environ
    return jsonify(
        protocol=env.get("SERVER_PROTOCOL"),
        host=env.get("HTTP_HOST"),
        scheme=env.get("wsgi.url_scheme"),
        path=request.path,
        query=env.get("QUERY_STRING"),
        cookie=env.get("HTTP_COOKIE"),
        url=request.url,
        method=request.method,
    )


@app.get("/hop-by-hop")
def hop_by_hop() -> Response:
    response = Response("with hop-by-hop headers")
    response.headers["Connection"] = "close"
    response.headers["Keep-Alive"] = "timeout=5"
    return response


@app.get("/status/<int:code>")
def status(code: int) -> Response:
    return Response(status=code)


@app.get("/boom")
async def boom() -> str:
    raise RuntimeError("boom")
