"""A Flask app with WebSocket routes: the worker's :class:`Sock` (async and
sync handlers) and a flask-sock route, with hooks, session and ``g``.

What the handlers saw and when they ended is recorded in ``EVENTS``
(``GET /events``), so that tests can tell that a handler's ``finally`` ran.
``WS_THREADS`` (environment) sets ``ASYNC_WORKER_WEBSOCKET_THREADS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

import flask_sock  # type: ignore[import-untyped]
import simple_websocket  # type: ignore[import-untyped]
from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    request,
    session,
    url_for,
)

from flask_async_worker import ConnectionClosed, Sock, SyncWebSocket, WebSocket

app = Flask(__name__)
app.secret_key = "ws-test-secret"
app.config["SOCK_SERVER_OPTIONS"] = {"subprotocols": ["v2.chat", "v1.chat"]}
if os.environ.get("WS_THREADS"):
    app.config["ASYNC_WORKER_WEBSOCKET_THREADS"] = int(os.environ["WS_THREADS"])

sock = Sock(app)
fsock = flask_sock.Sock(app)
EVENTS: list[str] = []
EVENTS_LOCK = threading.Lock()
#: Endpoints the login check guards.
LOGIN_REQUIRED = frozenset(("members",))


def record(event: str) -> None:
    with EVENTS_LOCK:
        EVENTS.append(event)


@app.before_request
def hooks() -> Any:
    g.user = request.headers.get("X-User", "anonymous")
    g.hook_thread = threading.current_thread().name
    if request.path.startswith("/ws/private") and request.args.get("token") != "s3cret":
        abort(401)
    if request.endpoint in LOGIN_REQUIRED and "user" not in session:
        return redirect(url_for("login", next=request.path))
    return None


# -- plain HTTP ---------------------------------------------------------------------


@app.get("/")
def index() -> str:
    return PAGE


@app.get("/login")
def login() -> Response:
    session["user"] = request.args.get("user", "alice")
    return jsonify(ok=True)


@app.get("/plain")
def plain() -> str:
    return "plain"


@app.get("/sync-ping")
def sync_ping() -> Response:
    return jsonify(pong=True, thread=threading.current_thread().name)


@app.get("/conn")
def conn() -> Response:
    return jsonify(port=request.environ.get("REMOTE_PORT"), pid=os.getpid())


@app.get("/events")
def events() -> Response:
    with EVENTS_LOCK:
        return jsonify(events=list(EVENTS), pid=os.getpid())


# -- the worker's Sock: async handlers ------------------------------------------------


@sock.route("/ws/echo")
async def ws_echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


@sock.route("/ws/context")
async def ws_context(ws: WebSocket) -> None:
    await ws.send(json.dumps(context()))


@sock.route("/ws/<int:n>")
async def ws_double(ws: WebSocket, n: int) -> None:
    await ws.send(json.dumps({"n": n, "double": n * 2, "type": type(n).__name__}))


@sock.route("/ws/private")
async def ws_private(ws: WebSocket) -> None:
    await ws.send("secret")


@sock.route("/ws/members")
async def members(ws: WebSocket) -> None:
    await ws.send(f"welcome {session['user']}")


@sock.route("/ws/proto")
async def ws_proto(ws: WebSocket) -> None:
    await ws.send(ws.subprotocol or "")


@sock.route("/ws/boom")
async def ws_boom(ws: WebSocket) -> None:
    message = await ws.receive()
    raise RuntimeError(f"boom {message!r}")


@sock.route("/ws/bye")
async def ws_bye(ws: WebSocket) -> None:
    await ws.send("bye")


@sock.route("/ws/track")
async def ws_track(ws: WebSocket) -> None:
    tag = request.args["tag"]
    record(f"open {tag}")
    try:
        while True:
            message = await ws.receive()
            await ws.send(message)  # type: ignore[arg-type]
    except ConnectionClosed as exc:
        record(f"closed {tag} {exc.reason}")
        raise
    finally:
        record(f"finally {tag}")


@sock.route("/ws/ticks")
async def ws_ticks(ws: WebSocket) -> None:
    """Server push: ticks until the client leaves; never receives."""
    tag = request.args.get("tag", "")
    interval = float(request.args.get("interval", "0.05"))
    n = 0
    try:
        while True:
            await ws.send(f"tick {n}")
            n += 1
            await asyncio.sleep(interval)
    finally:
        record(f"ticks-finally {tag} sent={n}")


@sock.route("/ws/pid")
async def ws_pid(ws: WebSocket) -> None:
    await ws.send(str(os.getpid()))
    await ws.receive(timeout=5)


# -- the worker's Sock: sync handlers -------------------------------------------------


@sock.route("/ws/sync-echo")
def ws_sync_echo(ws: SyncWebSocket) -> None:
    while True:
        message = ws.receive()
        ws.send(message)  # type: ignore[arg-type]


@sock.route("/ws/sync-context")
def ws_sync_context(ws: SyncWebSocket) -> None:
    ws.send(json.dumps(context()))


@sock.route("/ws/private-sync")
def ws_private_sync(ws: SyncWebSocket) -> None:
    ws.send("secret")


@sock.route("/ws/sync-boom")
def ws_sync_boom(ws: SyncWebSocket) -> None:
    message = ws.receive()
    raise RuntimeError(f"boom {message!r}")


@sock.route("/ws/sync-track")
def ws_sync_track(ws: SyncWebSocket) -> None:
    tag = request.args["tag"]
    record(f"open {tag} thread={threading.current_thread().name}")
    try:
        while True:
            message = ws.receive(timeout=0.2)
            if message is not None:
                ws.send(message)
    except simple_websocket.ConnectionClosed as exc:  # what flask-sock code catches
        record(f"closed {tag} {exc.reason}")
        raise
    finally:
        record(f"finally {tag}")


# -- flask-sock, unchanged -------------------------------------------------------------


@fsock.route("/ws/flask-sock-echo")  # type: ignore[untyped-decorator]
def ws_flask_sock_echo(ws: Any) -> None:
    while True:
        ws.send(ws.receive())


@fsock.route("/ws/flask-sock-boom")  # type: ignore[untyped-decorator]
def ws_flask_sock_boom(ws: Any) -> None:
    message = ws.receive()
    raise RuntimeError(f"boom {message!r}")


@fsock.route("/ws/flask-sock-context")  # type: ignore[untyped-decorator]
def ws_flask_sock_context(ws: Any) -> None:
    ws.send(json.dumps(context()))
    ws.send(ws.subprotocol or "")


def context() -> dict[str, Any]:
    return {
        "args": request.args.to_dict(),
        "user": g.user,
        "session_user": session.get("user"),
        "echo_url": url_for("ws_echo"),
        "double_url": url_for("ws_double", n=3),
        "plain_url": url_for("plain", _external=True),
        "scheme": request.scheme,
        "path": request.path,
        "time": time.time(),
    }


PAGE = """<!doctype html>
<html>
<head><title>ws</title></head>
<body>
<ul id="echoes"></ul>
<script>
  const tag = new URLSearchParams(location.search).get("tag") || "page";
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws/track?tag=${tag}`);
  window.wsState = "connecting";
  ws.onopen = () => {
    window.wsState = "open";
    for (let i = 0; i < 3; i++) ws.send(`hello ${i}`);
  };
  ws.onmessage = (event) => {
    const li = document.createElement("li");
    li.textContent = event.data;
    document.getElementById("echoes").appendChild(li);
  };
  ws.onclose = (event) => { window.wsState = `closed ${event.code}`; };
  window.sendText = (text) => ws.send(text);
</script>
</body>
</html>
"""
