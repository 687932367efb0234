"""A Flask-SocketIO app (python-engineio's threading driver, the one it
picks under any gunicorn worker without eventlet or gevent)."""

from __future__ import annotations

import threading

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_socketio import SocketIO, emit, join_room  # type: ignore[import-untyped]

app = Flask(__name__)
app.secret_key = "socketio-test"
socketio = SocketIO(app, async_mode="threading")
SEEN: list[str] = []
SEEN_LOCK = threading.Lock()


def seen(event: str) -> None:
    with SEEN_LOCK:
        SEEN.append(event)


@app.get("/seen")
def seen_view() -> ResponseReturnValue:
    with SEEN_LOCK:
        return jsonify(SEEN)


@app.get("/async")
async def async_view() -> ResponseReturnValue:
    return "async view"


@socketio.on("connect")  # type: ignore[untyped-decorator]
def connect() -> None:
    seen(f"connect {request.args.get('who', '-')}")
    emit("welcome", {"sid": request.sid})  # type: ignore[attr-defined]


@socketio.on("disconnect")  # type: ignore[untyped-decorator]
def disconnect(*args: object) -> None:
    seen(f"disconnect {request.args.get('who', '-')}")


@socketio.on("echo")  # type: ignore[untyped-decorator]
def echo(data: object) -> object:
    emit("echo", data)
    return {"ack": data}


@socketio.on("join")  # type: ignore[untyped-decorator]
def join(room: str) -> None:
    join_room(room)
    emit("joined", room)


@socketio.on("shout")  # type: ignore[untyped-decorator]
def shout(message: dict[str, str]) -> None:
    emit("shout", message, to=message["room"])
