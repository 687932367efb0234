"""Server-Sent Events from an async generator.

    gunicorn -k flask_async_worker.UVLoopWorker sse:app

Each subscriber of ``/events`` costs a coroutine, not a thread.  When a
subscriber goes away, the worker cancels its generator at once: the
``finally`` block runs (here it counts the closed streams, which ``/stats``
shows), so nothing keeps producing for a client that left.  ``/`` is a page
that subscribes with ``EventSource``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator

from flask import Flask, Response, jsonify, request

from flask_async_worker import stream_with_context

app = Flask(__name__)

STATS = {"opened": 0, "closed": 0, "sent": 0}

PAGE = """<!doctype html>
<title>SSE</title>
<ul id="events"></ul>
<script>
  const list = document.getElementById("events");
  const source = new EventSource("/events?interval=0.2");
  source.onmessage = (e) => {
    const item = document.createElement("li");
    item.textContent = e.data;
    list.appendChild(item);
    document.title = "received " + list.children.length;
  };
</script>
"""


@app.get("/")
def index() -> str:
    return PAGE


@app.get("/events")
async def events() -> Response:
    interval = min(float(request.args.get("interval", "1")), 60.0)
    client = request.remote_addr

    @stream_with_context
    async def stream() -> AsyncIterator[str]:
        STATS["opened"] += 1
        try:
            for n in itertools.count():
                yield f"id: {n}\ndata: tick {n} for {client}\n\n"
                STATS["sent"] += 1
                await asyncio.sleep(interval)
        finally:
            STATS["closed"] += 1

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/stats")
def stats() -> Response:
    return jsonify(pid=os.getpid(), **STATS)
