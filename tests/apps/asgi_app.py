"""A small raw ASGI application exercising the server half of the worker."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

State = dict[str, Any]
EVENTS: list[str] = []


async def read_body(receive: Any) -> tuple[bytes, bool]:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body, False
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body, True


async def respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            EVENTS.append("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            marker = os.environ.get("SHUTDOWN_MARKER")
            if marker:
                with open(marker, "a") as f:
                    f.write(f"shutdown {os.getpid()}\n")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: State, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    if path == "/":
        await respond(send, 200, b"hello")
    elif path == "/sleep":
        await asyncio.sleep(float(query.get("s", ["1"])[0]))
        await respond(send, 200, b"slept")
    elif path == "/echo":
        body, complete = await read_body(receive)
        if complete:
            await respond(send, 200, body)
    elif path == "/length":
        body, complete = await read_body(receive)
        EVENTS.append(f"length complete={complete} n={len(body)}")
        if complete:
            await respond(send, 200, str(len(body)).encode())
    elif path == "/scope":
        info = {
            k: (v.decode("latin-1") if isinstance(v, bytes) else v)
            for k, v in scope.items()
            if k not in ("headers", "state", "extensions", "asgi")
        }
        info["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        ext = scope.get("extensions", {}).get("flask_async_worker", {})
        info["raw_uri"] = ext.get("raw_uri", b"").decode("latin-1")
        info["pid"] = os.getpid()
        await respond(
            send, 200, json.dumps(info).encode(), [(b"x-pid", str(os.getpid()).encode())]
        )
    elif path == "/pid":
        await respond(send, 200, str(os.getpid()).encode())
    elif path == "/block":
        # Blocks the event loop: the heartbeat stops.
        time.sleep(float(query.get("s", ["5"])[0]))
        await respond(send, 200, b"blocked")
    elif path == "/error":
        raise RuntimeError("boom from /error")
    elif path == "/error-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after start")
    elif path == "/no-response":
        return
    elif path == "/crlf-header":
        await respond(send, 200, b"x", [(b"x-bad", b"a\r\nSet-Cookie: evil=1")])
    elif path == "/padded-header":
        await respond(send, 200, b"x", [(b"x-padded", b" \tvalue \t")])
    elif path == "/bad-header-name":
        await respond(send, 200, b"x", [(b"x bad", b"a")])
    elif path == "/stream":
        count = int(query.get("n", ["5"])[0])
        delay = float(query.get("d", ["0"])[0])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(count):
            await send({"type": "http.response.body", "body": b"chunk%d\n" % i, "more_body": True})
            if delay:
                await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        size = int(query.get("mb", ["20"])[0]) * 1024 * 1024
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        block = b"x" * 65536
        sent = 0
        try:
            while sent < size:
                await send({"type": "http.response.body", "body": block, "more_body": True})
                sent += len(block)
            await send({"type": "http.response.body", "body": b""})
        finally:
            EVENTS.append(f"big sent={sent}")
    elif path == "/events":
        await respond(send, 200, "\n".join(EVENTS).encode())
    elif path == "/hit":
        # Records that the app was reached (with a tag from the query), then
        # reads the body: tests of bad input assert the tag never appears.
        tag = query.get("tag", ["-"])[0]
        EVENTS.append(f"hit {tag}")
        body, complete = await read_body(receive)
        EVENTS.append(f"hit {tag} complete={complete} n={len(body)}")
        if complete:
            await respond(send, 200, b"hit")
    elif path == "/slow-read":
        # Reads the body slowly and keeps none of it: the server must stop
        # reading from the socket instead of buffering the upload.
        delay = float(query.get("d", ["0.01"])[0])
        total = 0
        complete = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                complete = True
                break
            await asyncio.sleep(delay)
        EVENTS.append(f"slow-read complete={complete} n={total}")
        if complete:
            await respond(send, 200, str(total).encode())
    elif path == "/early-hints":
        await send(
            {
                "type": "http.response.informational",
                "status": 103,
                "headers": [(b"link", b"</style.css>; rel=preload; as=style")],
            }
        )
        await respond(send, 200, b"after hints")
    elif path == "/wait-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
        message = await receive()
        EVENTS.append(f"wait-disconnect got {message['type']}")
    else:
        await respond(send, 404, b"not found")
