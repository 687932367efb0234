"""Fan-out: one async view calls several slow backends at once.

    gunicorn -k flask_async_worker.UVLoopWorker fanout:app

``/dashboard`` asks three services (here: routes of this same app that
answer after 200 ms) concurrently with one shared ``httpx.AsyncClient`` and
returns in about 200 ms, not 600.  The client is created once per worker,
on the worker's loop, by a ``before_serving`` hook, and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from flask import Flask, Response, current_app, jsonify, request

from flask_async_worker import FlaskAsync

app = Flask(__name__)
serving = FlaskAsync(app)

SERVICES = ("users", "orders", "recommendations")
SERVICE_DELAY = 0.2


@serving.before_serving
async def open_client() -> None:
    current_app.extensions["http"] = httpx.AsyncClient(timeout=5.0)


@serving.after_serving
async def close_client() -> None:
    await current_app.extensions["http"].aclose()


def http() -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = current_app.extensions.get("http")
    if client is None:  # not under the worker (e.g. flask run): one per request
        client = httpx.AsyncClient(timeout=5.0)
    return client


@app.get("/service/<name>")
async def service(name: str) -> Response:
    await asyncio.sleep(SERVICE_DELAY)
    return jsonify(service=name, items=[f"{name}-{i}" for i in range(3)])


@app.get("/dashboard")
async def dashboard() -> Response:
    started = time.perf_counter()
    base = request.host_url.rstrip("/")
    client = http()
    replies = await asyncio.gather(*(client.get(f"{base}/service/{s}") for s in SERVICES))
    data: dict[str, Any] = {s: r.json() for s, r in zip(SERVICES, replies, strict=True)}
    data["elapsed"] = round(time.perf_counter() - started, 3)
    return jsonify(data)
