"""Flask-SocketIO apps under the worker, unchanged.

Flask-SocketIO (python-engineio's threading driver) builds each WebSocket
with ``simple_websocket.Server`` from the WSGI environ, which needs the raw
socket; the adapter's bridge hands it the worker's blocking WebSocket
instead.  A real gunicorn arbiter serves ``tests/apps/socketio_app.py`` to
python-socketio's own client, over WebSocket alone and upgrading from
long-polling, as a browser's socket.io client does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import socketio  # type: ignore[import-untyped]

from .conftest import Gunicorn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[Gunicorn]:
    server = Gunicorn("socketio_app:app", "--threads", "8")
    try:
        yield server
    finally:
        server.close()


def client(server: Gunicorn, who: str, transports: list[str]) -> Any:
    sio = socketio.SimpleClient()
    sio.connect(f"{server.url}?who={who}", transports=transports, wait_timeout=5)
    return sio


def seen(server: Gunicorn, wanted: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        events: list[str] = httpx.get(f"{server.url}/seen").json()
        if wanted in events or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]])
def test_events_round_trip_over_the_websocket(server, transports):
    who = "-".join(transports)
    sio = client(server, who, transports)
    try:
        assert sio.receive(timeout=5)[0] == "welcome"
        for n in range(3):
            sio.emit("echo", {"n": n})
            assert sio.receive(timeout=5) == ["echo", {"n": n}]
        assert sio.call("echo", "ack me", timeout=5) == {"ack": "ack me"}
        sio.receive(timeout=5)  # the emitted copy
        # Upgraded (or opened) as a WebSocket: the worker carries it.
        assert sio.transport == "websocket"
    finally:
        sio.disconnect()
    assert f"disconnect {who}" in seen(server, f"disconnect {who}")
    assert f"connect {who}" in seen(server, f"connect {who}")


def test_rooms_broadcast_to_every_member(server):
    members = [client(server, f"member{n}", ["websocket"]) for n in range(3)]
    try:
        for sio in members:
            assert sio.receive(timeout=5)[0] == "welcome"
            sio.emit("join", "lobby")
            assert sio.receive(timeout=5) == ["joined", "lobby"]
        members[0].emit("shout", {"room": "lobby", "text": "hello all"})
        for sio in members:
            assert sio.receive(timeout=5) == ["shout", {"room": "lobby", "text": "hello all"}]
    finally:
        for sio in members:
            sio.disconnect()


def test_async_views_still_answer_beside_socketio(server):
    """Flask-SocketIO wraps wsgi_app, so every request takes the thread
    path; async views run on the worker's loop through the bridge."""
    sio = client(server, "beside", ["websocket"])
    try:
        assert httpx.get(f"{server.url}/async").text == "async view"
        sio.emit("echo", "still here")
        assert sio.receive(timeout=5)[0] == "welcome"
        assert sio.receive(timeout=5) == ["echo", "still here"]
    finally:
        sio.disconnect()
