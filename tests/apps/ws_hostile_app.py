"""A raw ASGI app for the hostile WebSocket tests (tests/test_websocket_hostile.py).

HTTP: ``/hello`` answers ``hello``; ``/events`` lists, one a line, what the
WebSocket handlers went through (``connect <tag>``, ``disconnect <tag>
<code>``, ``push-end <tag> <exception>``), so a test can tell whether a
handshake ever reached the application and what close code it heard.

WebSocket (``?tag=...`` names the connection in the events):

* ``/echo``: accepts (with the first offered subprotocol), sends every
  message back.
* ``/push``: accepts, waits for one message (a size in bytes) and then
  sends messages of that size until sending fails.
* ``/close``: accepts and closes at once with 4000 "bye", then waits for
  the client's answer.
* ``/hold``: accepts and reads nothing until ``/release?tag=...`` is
  requested; then counts the messages up to the close (``held <tag> <n>``).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

EVENTS: list[str] = []
RELEASE: dict[str, asyncio.Event] = {}


async def respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/hello":
        await respond(send, 200, b"hello")
    elif path == "/release":
        tag = parse_qs(scope["query_string"].decode()).get("tag", ["-"])[0]
        RELEASE.setdefault(tag, asyncio.Event()).set()
        await respond(send, 200, b"released")
    elif path == "/events":
        await respond(send, 200, "".join(e + "\n" for e in EVENTS).encode())
    else:
        await respond(send, 404, b"not found")


async def wait_closed(tag: str, receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            EVENTS.append(f"disconnect {tag} {message.get('code')}")
            return


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    query = parse_qs(scope["query_string"].decode())
    tag = query.get("tag", ["-"])[0]
    path = scope["path"]
    EVENTS.append(f"connect {tag}")
    message = await receive()
    assert message["type"] == "websocket.connect", message
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    if path == "/close":
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        await wait_closed(tag, receive)
        return
    if path == "/hold":
        await RELEASE.setdefault(tag, asyncio.Event()).wait()
        count = 0
        while (await receive())["type"] == "websocket.receive":
            count += 1
        EVENTS.append(f"held {tag} {count}")
        return
    if path == "/push":
        message = await receive()
        if message["type"] == "websocket.disconnect":
            EVENTS.append(f"disconnect {tag} {message.get('code')}")
            return
        chunk = b"p" * int(message.get("text") or message.get("bytes") or b"0")
        try:
            while True:
                await send({"type": "websocket.send", "bytes": chunk})
                await asyncio.sleep(0)  # a client that keeps up must not starve the loop
        except Exception as exc:
            EVENTS.append(f"push-end {tag} {type(exc).__name__}")
            raise
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            EVENTS.append(f"disconnect {tag} {message.get('code')}")
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await http(scope, receive, send)
    else:
        await websocket(scope, receive, send)
