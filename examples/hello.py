"""Sync and async views side by side, served by one worker.

    gunicorn -k flask_async_worker.UVLoopWorker --threads 4 hello:app

``/sync`` runs in the worker's thread pool, exactly as Flask runs it;
``/async`` is awaited on the worker's event loop, so a thousand of them
waiting at once hold no threads.
"""

from __future__ import annotations

import asyncio
import threading

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "Hello from flask_async_worker. Try /sync and /async?delay=0.5\n"


@app.get("/sync")
def sync_view() -> Response:
    return jsonify(view="sync", thread=threading.current_thread().name)


@app.get("/async")
async def async_view() -> Response:
    delay = float(request.args.get("delay", "0"))
    await asyncio.sleep(min(delay, 10.0))
    return jsonify(view="async", thread=threading.current_thread().name, slept=delay)
