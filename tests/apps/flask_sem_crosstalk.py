"""Echo a request's own values after interleaving with other requests.

``/async`` and ``/sync`` read ``request.args["q"]``, ``g.tag`` (set in
``before_request`` from the ``X-Tag`` header) and ``session["sid"]`` (set by
``/login``) several times, sleeping between reads (awaiting in the async
view, blocking its pool thread in the sync one), and return every read.

``/leaky`` is the positive control: it keeps ``q`` in module state (as code
using ``threading.local`` on the loop thread would) and waits on a barrier
until ``n`` such requests are in flight, so all but one of them
deterministically echo another request's value.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from flask import Flask, g, jsonify, request, session

app = Flask("flask_sem_crosstalk")
app.secret_key = "flask-sem-crosstalk"

INFLIGHT = {"now": 0, "max": 0}
SHARED: dict[str, Any] = {}
BARRIERS: dict[int, asyncio.Barrier] = {}


def delays(q: str, scale: float) -> list[float]:
    """Deterministic per request: the same q always sleeps the same way."""
    rng = random.Random(q)
    return [rng.uniform(0.2, 1.0) * scale for _ in range(3)]


def read() -> list[Any]:
    return [request.args.get("q"), g.get("tag"), session.get("sid")]


@app.before_request
def set_tag() -> None:
    g.tag = request.headers.get("X-Tag")


@app.post("/login")
def login() -> str:
    session["sid"] = request.args["sid"]
    return "ok"


@app.get("/async")
async def async_echo() -> Any:
    INFLIGHT["now"] += 1
    INFLIGHT["max"] = max(INFLIGHT["max"], INFLIGHT["now"])
    try:
        reads = []
        for delay in delays(request.args["q"], 0.02):
            reads.append(read())
            await asyncio.sleep(delay)
        reads.append(read())
        return jsonify(view="async", reads=reads)
    finally:
        INFLIGHT["now"] -= 1


@app.get("/sync")
def sync_echo() -> Any:
    reads = []
    for delay in delays(request.args["q"], 0.002):
        reads.append(read())
        time.sleep(delay)
    reads.append(read())
    return jsonify(view="sync", reads=reads)


@app.get("/leaky")
async def leaky() -> Any:
    n = int(request.args["n"])
    barrier = BARRIERS.setdefault(n, asyncio.Barrier(n))
    SHARED["q"] = request.args["q"]
    async with asyncio.timeout(10):
        await barrier.wait()
    return jsonify(view="leaky", reads=[[SHARED["q"], g.tag, session.get("sid")]])


@app.get("/stats")
def stats() -> Any:
    return jsonify(INFLIGHT)
