"""A chat room over WebSockets.

    gunicorn -k flask_async_worker.UVLoopWorker chat:app

Open http://127.0.0.1:8000/ in two tabs.  Each member is an ``async def``
handler on the worker's loop, so a room of thousands costs coroutines, not
threads.  ``before_request`` runs for the handshake as for any request:
a name is required (``/ws?name=...``), and a missing one refuses the
WebSocket with 400.  A slow member cannot stall the room: each has a
bounded queue of its own, and what does not fit in it is dropped for that
member alone.  ``/stats`` reports the room.
"""

from __future__ import annotations

import asyncio
import json

from flask import Flask, Response, abort, g, jsonify, request

from flask_async_worker import ConnectionClosed, Sock, WebSocket

app = Flask(__name__)
sock = Sock(app)

#: Messages a member may be behind before it is dropped.
BACKLOG = 100
MEMBERS: dict[WebSocket, asyncio.Queue[str]] = {}
STATS = {"joined": 0, "left": 0, "messages": 0, "dropped": 0}

PAGE = """<!doctype html>
<title>chat</title>
<form id="form"><input id="text" autocomplete="off"><button>send</button></form>
<ul id="log"></ul>
<script>
  const name = "guest" + Math.floor(Math.random() * 1000);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws?name=${name}`);
  const log = document.getElementById("log");
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    const item = document.createElement("li");
    item.textContent = `${m.from}: ${m.text}`;
    log.appendChild(item);
  };
  document.getElementById("form").onsubmit = (e) => {
    e.preventDefault();
    const text = document.getElementById("text");
    ws.send(text.value);
    text.value = "";
  };
</script>
"""


@app.get("/")
def index() -> str:
    return PAGE


@app.get("/stats")
def stats() -> Response:
    return jsonify({**STATS, "members": len(MEMBERS)})


@app.before_request
def need_a_name() -> None:
    if request.path == "/ws":
        name = request.args.get("name", "").strip()
        if not name or len(name) > 32:
            abort(400, "a name of 1-32 characters is required")
        g.name = name


def broadcast(sender: str, text: str) -> None:
    message = json.dumps({"from": sender, "text": text})
    STATS["messages"] += 1
    for queue in MEMBERS.values():
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            STATS["dropped"] += 1


async def deliver(ws: WebSocket, queue: asyncio.Queue[str]) -> None:
    try:
        while True:
            await ws.send(await queue.get())
    except ConnectionClosed:
        pass


@sock.route("/ws")
async def chat(ws: WebSocket) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(BACKLOG)
    MEMBERS[ws] = queue
    STATS["joined"] += 1
    sender = asyncio.create_task(deliver(ws, queue))
    broadcast("server", f"{g.name} joined")
    try:
        async for text in ws:
            if isinstance(text, str):
                broadcast(g.name, text[:1000])
    finally:
        sender.cancel()
        del MEMBERS[ws]
        STATS["left"] += 1
        broadcast("server", f"{g.name} left")
