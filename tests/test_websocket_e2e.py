"""WebSocket end to end: real gunicorn arbiters serving ``tests/apps/ws_app.py``
(the worker's ``Sock`` with async and sync handlers, and a flask-sock route)
to real clients — the ``websockets`` library, and raw sockets where the
bytes on the wire are the point.

Arbiters shared by the module: ``main`` (defaults, access log, room for
1,000 connections), ``asyncio`` (AsyncioWorker), ``small`` (a 64 KiB
message limit, permessage-deflate off, 4 threads for sync handlers) and
``tls``.  Tests that stop or recycle their worker start their own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import signal
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from .conftest import EXAMPLES, Gunicorn, serving, tls_files

pytestmark = pytest.mark.timeout(60)

ASYNC_WORKER = "flask_async_worker.AsyncioWorker"
SMALL_LIMIT = 64 * 1024
MiB = 1024 * 1024
ECHO_ROUTES = ["/ws/echo", "/ws/sync-echo", "/ws/flask-sock-echo"]
#: Opening handshakes of a busy test may queue behind each other.
OPEN_TIMEOUT = 20


class NoRedirect(connect):
    """A client that reports a redirect instead of following it."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tls = tls_files(tmp_path_factory.mktemp("wscerts"))
    return tls.ca, tls.cert, tls.key


@pytest.fixture(scope="module")
def servers(
    certs: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Gunicorn]]:
    # 1,000 WebSockets take 1,000 descriptors on each side; the arbiters
    # inherit the limit from this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    _, cert, key = certs
    access = tmp_path_factory.mktemp("wslogs") / "access.log"
    small_env = {
        "WS_THREADS": "4",
        "FLASK_ASYNC_WORKER_WS_MAX_MESSAGE_SIZE": str(SMALL_LIMIT),
        "FLASK_ASYNC_WORKER_WS_PER_MESSAGE_DEFLATE": "0",
    }
    started = {
        "main": Gunicorn(
            "ws_app:app",
            "--threads",
            "4",
            "--worker-connections",
            "2000",
            "--access-logfile",
            str(access),
            wait=False,
        ),
        "asyncio": Gunicorn("ws_app:app", "--threads", "4", worker=ASYNC_WORKER, wait=False),
        "small": Gunicorn("ws_app:app", "--threads", "4", env=small_env, wait=False),
        "tls": Gunicorn(
            "ws_app:app", "--threads", "4", "--certfile", str(cert), "--keyfile", str(key),
            wait=False,
        ),
    }  # fmt: skip
    started["main"].access_log = access  # type: ignore[attr-defined]
    with serving(started):
        yield started


@pytest.fixture(params=["uvloop", "asyncio"])
def any_worker(request: pytest.FixtureRequest, servers: dict[str, Gunicorn]) -> Gunicorn:
    return servers["main" if request.param == "uvloop" else "asyncio"]


def ws_url(server: Gunicorn, path: str, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}{path}"


def open_ws(server: Gunicorn, path: str, **kwargs: Any) -> connect:
    kwargs.setdefault("open_timeout", OPEN_TIMEOUT)
    kwargs.setdefault("max_size", None)
    return connect(ws_url(server, path), **kwargs)


async def closed_code(ws: ClientConnection, timeout: float = 5.0) -> tuple[int, str]:
    """Read until the server closes: (code, reason) of its close frame."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            closed = exc
    assert closed.rcvd is not None, f"no close frame received: {closed!r}"
    return closed.rcvd.code, closed.rcvd.reason


def extensions(ws: ClientConnection) -> str:
    """The Sec-WebSocket-Extensions the server answered with, "" if none."""
    assert ws.response is not None
    return str(ws.response.headers.get("Sec-WebSocket-Extensions", ""))


def events(server: Gunicorn) -> list[str]:
    return list(httpx.get(f"{server.url}/events", timeout=5).json()["events"])


async def wait_for_events(server: Gunicorn, *wanted: str, timeout: float = 3.0) -> float:
    """Poll ``/events`` until every one of ``wanted`` was recorded; seconds taken."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        while True:
            seen = (await client.get("/events")).json()["events"]
            if all(w in seen for w in wanted):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{wanted} not all recorded in {timeout}s: {seen}")
            await asyncio.sleep(0.05)


def worker_pid(server: Gunicorn) -> int:
    return int(httpx.get(f"{server.url}/events", timeout=5).json()["pid"])


def login_cookie(server: Gunicorn, user: str) -> str:
    response = httpx.get(f"{server.url}/login", params={"user": user}, timeout=5)
    assert response.status_code == 200
    return f"session={response.cookies['session']}"


# -- echo ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ECHO_ROUTES)
async def test_echo_text_and_binary(any_worker, path):
    async with open_ws(any_worker, path) as ws:
        for message in ("hello", "héllo ✓ 🌍", "", b"\x00\x01\xff" * 100, bytes(range(256))):
            await ws.send(message)
            echoed = await asyncio.wait_for(ws.recv(), 5)
            assert echoed == message
            assert type(echoed) is type(message)
        await ws.close()
    assert ws.close_code == 1000


def test_handshake_and_frames_on_the_wire(servers):
    """Raw bytes: the 101 with RFC 6455's accept token, an unmasked text
    frame, the close frame (1000) when the handler returns, TCP closed
    once the client answered the close."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET /ws/bye HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", servers["main"].port), timeout=5) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        status = reader.readline()
        assert status.startswith(b"HTTP/1.1 101 "), status
        headers: dict[bytes, bytes] = {}
        while (line := reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        assert headers[b"sec-websocket-accept"] == expected
        assert headers[b"upgrade"].lower() == b"websocket"
        assert b"upgrade" in headers[b"connection"].lower()
        assert b"sec-websocket-extensions" not in headers  # none offered
        assert b"sec-websocket-protocol" not in headers
        assert read_frame(reader) == (0x1, b"bye")
        opcode, payload = read_frame(reader)
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1000
        # The client answers the close (masked, as clients must).
        mask = os.urandom(4)
        body = struct.pack("!H", 1000)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
        sock.sendall(bytes([0x88, 0x80 | len(body)]) + mask + masked)
        assert reader.read() == b""  # the server closed the TCP connection


def read_frame(reader: Any) -> tuple[int, bytes]:
    """One unfragmented server frame: (opcode, payload); server frames are unmasked."""
    first, second = reader.read(2)
    assert first & 0x80, "FIN expected"
    assert not second & 0x80, "a server must not mask"
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", reader.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", reader.read(8))[0]
    return first & 0x0F, reader.read(length)


# -- Flask request semantics -------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/ws/context", "/ws/sync-context", "/ws/flask-sock-context"]
)  # fmt: skip
async def test_handler_sees_args_g_session_and_url_for(servers, path):
    server = servers["main"]
    cookie = login_cookie(server, "carol")
    headers = {"Cookie": cookie, "X-User": "bob"}
    async with open_ws(server, f"{path}?a=1&b=%C3%A9", additional_headers=headers) as ws:
        seen = json.loads(await asyncio.wait_for(ws.recv(), 5))
    base = f"127.0.0.1:{server.port}"
    assert seen["args"] == {"a": "1", "b": "é"}
    assert seen["user"] == "bob"  # g, set by a before_request hook
    assert seen["session_user"] == "carol"  # the cookie of an earlier HTTP response
    assert seen["path"] == path
    assert seen["scheme"] == "http"
    # url_for builds WebSocket URLs for WebSocket rules, as under Werkzeug.
    assert seen["echo_url"] == f"ws://{base}/ws/echo"
    assert seen["double_url"] == f"ws://{base}/ws/3"
    assert seen["plain_url"] == f"http://{base}/plain"


async def test_route_variables_are_converted(servers):
    async with open_ws(servers["main"], "/ws/21") as ws:
        assert json.loads(await ws.recv()) == {"n": 21, "double": 42, "type": "int"}
    with pytest.raises(InvalidStatus) as info:
        await open_ws(servers["main"], "/ws/twenty-one")
    assert info.value.response.status_code == 404


async def test_before_request_abort_refuses_the_handshake(servers):
    server = servers["main"]
    with pytest.raises(InvalidStatus) as info:
        await open_ws(server, "/ws/private")
    assert info.value.response.status_code == 401
    assert b"Unauthorized" in info.value.response.body
    async with open_ws(server, "/ws/private?token=s3cret") as ws:
        assert await ws.recv() == "secret"


async def test_login_redirect_refuses_the_handshake(servers):
    server = servers["main"]
    with pytest.raises(InvalidStatus) as info:
        await NoRedirect(ws_url(server, "/ws/members"), open_timeout=OPEN_TIMEOUT)
    response = info.value.response
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/ws/members"
    cookie = login_cookie(server, "dave")
    async with open_ws(server, "/ws/members", additional_headers={"Cookie": cookie}) as ws:
        assert await ws.recv() == "welcome dave"


async def test_unknown_path_404_and_plain_route_400(servers):
    server = servers["main"]
    for path, status in (("/ws/nope", 404), ("/plain", 400), ("/nowhere", 404)):
        with pytest.raises(InvalidStatus) as info:
            await open_ws(server, path)
        assert info.value.response.status_code == status, path
    # ... and plain HTTP to a WebSocket route is a 400 too (Werkzeug's rule).
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/ws/echo")).status_code == 400
        assert (await client.get("/plain")).text == "plain"


@pytest.mark.parametrize("path", ["/ws/proto", "/ws/flask-sock-context"])
async def test_subprotocol_from_sock_server_options(servers, path):
    """SOCK_SERVER_OPTIONS["subprotocols"] = ["v2.chat", "v1.chat"]: the
    first protocol the client offers that the app lists is chosen."""
    server = servers["main"]

    async def chosen(offer: list[str] | None) -> tuple[str | None, str]:
        async with open_ws(server, path, subprotocols=offer) as ws:
            messages = [await ws.recv() for _ in range(2 if "context" in path else 1)]
            return ws.subprotocol, str(messages[-1])

    assert await chosen(["x.chat", "v1.chat", "v2.chat"]) == ("v1.chat", "v1.chat")
    assert await chosen(["v2.chat"]) == ("v2.chat", "v2.chat")
    assert await chosen(["x.chat"]) == (None, "")
    assert await chosen(None) == (None, "")


# -- sizes and compression ---------------------------------------------------------------


@pytest.mark.parametrize("size", [MiB, 10 * MiB], ids=["1MiB", "10MiB"])
async def test_large_messages_both_directions(servers, size):
    blob = os.urandom(size)
    text = (uuid.uuid4().hex * (size // 32 + 1))[:size]
    async with open_ws(servers["main"], "/ws/echo") as ws:
        assert extensions(ws).startswith("permessage-deflate")
        await ws.send(blob)
        assert await asyncio.wait_for(ws.recv(), 20) == blob
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), 20) == text


async def test_sync_handler_echoes_large_messages(servers):
    blob = os.urandom(2 * MiB)
    async with open_ws(servers["main"], "/ws/sync-echo") as ws:
        await ws.send(blob)
        assert await asyncio.wait_for(ws.recv(), 20) == blob


async def test_message_over_the_server_limit_closes_1009(servers):
    server = servers["small"]
    async with open_ws(server, "/ws/echo") as ws:
        exact = os.urandom(SMALL_LIMIT)
        await ws.send(exact)
        assert await asyncio.wait_for(ws.recv(), 5) == exact
        await ws.send(os.urandom(SMALL_LIMIT + 1))
        code, _ = await closed_code(ws)
    assert code == 1009
    assert worker_pid(server) == server.worker_pids()[-1]


async def test_compressed_message_over_the_default_limit_closes_1009(servers):
    """17 MiB of zeros deflate to a few kilobytes: the inflated size is
    what the 16 MiB default limit bounds."""
    async with open_ws(servers["main"], "/ws/echo") as ws:
        await ws.send(bytes(16 * MiB + 1))
        code, _ = await closed_code(ws, timeout=10)
    assert code == 1009


async def test_permessage_deflate_negotiated_by_default_and_off_when_disabled(servers):
    message = "compressible " * 1000
    async with open_ws(servers["main"], "/ws/echo") as ws:
        assert extensions(ws).startswith("permessage-deflate"), extensions(ws)
        await ws.send(message)
        assert await ws.recv() == message
    async with open_ws(servers["small"], "/ws/echo") as ws:  # ..._PER_MESSAGE_DEFLATE=0
        assert extensions(ws) == ""
        await ws.send(message)
        assert await ws.recv() == message


# -- how a handler ends ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/boom", "/ws/sync-boom", "/ws/flask-sock-boom"])
async def test_handler_exception_closes_1011_and_is_logged_once(servers, path):
    server = servers["main"]
    pid = worker_pid(server)
    tag = uuid.uuid4().hex
    async with open_ws(server, path) as ws:
        await ws.send(tag)
        code, _ = await closed_code(ws)
    assert code == 1011
    server.wait_for_log(f"RuntimeError: boom '{tag}'")
    time.sleep(0.2)
    assert server.log().count(f"RuntimeError: boom '{tag}'") == 1
    # The worker is the same one, and serving.
    assert worker_pid(server) == pid
    async with open_ws(server, "/ws/echo") as ws:
        await ws.send("still alive")
        assert await ws.recv() == "still alive"


async def test_handler_returning_closes_1000(servers):
    async with open_ws(servers["main"], "/ws/bye") as ws:
        assert await ws.recv() == "bye"
        assert await closed_code(ws) == (1000, "")


@pytest.mark.parametrize("path", ["/ws/track", "/ws/sync-track"])
@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_leaving_raises_connection_closed_in_the_handler(servers, path, how):
    """The handler's receive raises ConnectionClosed with the client's
    close code (1006 when the TCP connection just went away), and its
    finally runs."""
    server = servers["main"]
    tag = uuid.uuid4().hex
    async with open_ws(server, f"{path}?tag={tag}") as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        if how == "close":
            await ws.close(4000, "done")
        else:
            ws.transport.abort()
    code = 4000 if how == "close" else 1006
    elapsed = await wait_for_events(server, f"closed {tag} {code}", f"finally {tag}")
    assert elapsed < 2.0


async def test_server_push_while_the_client_only_reads(servers):
    server = servers["main"]
    tag = uuid.uuid4().hex
    async with open_ws(server, f"/ws/ticks?tag={tag}&interval=0.02") as ws:
        ticks = [await asyncio.wait_for(ws.recv(), 5) for _ in range(10)]
    assert ticks == [f"tick {n}" for n in range(10)]
    # A handler that only sends learns the client left at its next send.
    started = time.monotonic()
    while not any(e.startswith(f"ticks-finally {tag}") for e in events(server)):
        assert time.monotonic() - started < 2.0, events(server)
        time.sleep(0.05)


# -- many at once, limits ---------------------------------------------------------------


def worker_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise KeyError("Threads")


async def test_thousand_concurrent_websockets_echo(servers):
    """1,000 WebSockets open at once on one worker, each echoing its own
    messages; async handlers hold no thread."""
    server = servers["main"]
    pid = server.worker_pids()[-1]
    count = 1000
    started = time.monotonic()
    async with asyncio.timeout(45):
        sockets: list[ClientConnection] = list(
            await asyncio.gather(
                *(
                    open_ws(server, "/ws/echo", compression=None, ping_interval=None)
                    for _ in range(count)
                )
            )
        )
        try:
            opened = time.monotonic() - started
            threads = worker_threads(pid)

            async def exchange(i: int, ws: ClientConnection) -> list[str | bytes]:
                got = []
                for n in range(3):
                    await ws.send(f"{i}:{n}")
                    got.append(await ws.recv())
                return got

            replies = await asyncio.gather(*(exchange(i, ws) for i, ws in enumerate(sockets)))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    elapsed = time.monotonic() - started
    assert replies == [[f"{i}:{n}" for n in range(3)] for i in range(count)]
    assert all(ws.close_code == 1000 for ws in sockets)
    assert threads < 40, threads
    assert elapsed < 30, (opened, elapsed)


async def test_sync_handlers_beyond_the_thread_limit_get_503(servers):
    """ASYNC_WORKER_WEBSOCKET_THREADS=4: a 5th sync WebSocket is refused
    with 503 while sync views and async handlers keep being served; a
    slot freed is usable again."""
    server = servers["small"]
    held = [await open_ws(server, "/ws/sync-echo") for _ in range(4)]
    try:
        for i, ws in enumerate(held):
            await ws.send(f"held {i}")
            assert await asyncio.wait_for(ws.recv(), 5) == f"held {i}"
        with pytest.raises(InvalidStatus) as info:
            await open_ws(server, "/ws/sync-echo")
        assert info.value.response.status_code == 503
        with pytest.raises(InvalidStatus) as info:
            await open_ws(server, "/ws/flask-sock-echo")
        assert info.value.response.status_code == 503
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            replies = await asyncio.gather(*(client.get("/sync-ping") for _ in range(10)))
        assert [r.status_code for r in replies] == [200] * 10
        assert all(r.json()["pong"] for r in replies)
        async with open_ws(server, "/ws/echo") as ws:
            await ws.send("async is not limited")
            assert await ws.recv() == "async is not limited"
        for ws in held:  # still echoing
            await ws.send("again")
            assert await asyncio.wait_for(ws.recv(), 5) == "again"
        # One slot is free again once its handler returned.
        await held.pop().close()
        deadline = time.monotonic() + 3
        while True:
            try:
                async with open_ws(server, "/ws/sync-echo") as ws:
                    await ws.send("fifth")
                    assert await ws.recv() == "fifth"
                break
            except InvalidStatus as exc:
                status = exc.response.status_code
            assert status == 503
            assert time.monotonic() < deadline, "the slot was not released"
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)


async def test_keepalive_http_unaffected_by_open_websockets(servers):
    """Busy WebSockets on other connections do not disturb HTTP/1.1
    keep-alive: one client connection serves every request in turn."""
    server = servers["main"]
    tags = [uuid.uuid4().hex for _ in range(10)]
    streams = [await open_ws(server, f"/ws/ticks?tag={t}&interval=0.01") for t in tags]
    echo = await open_ws(server, "/ws/sync-echo")
    try:
        ports = set()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            for i in range(30):
                response = await client.get("/conn")
                assert response.status_code == 200
                ports.add(response.json()["port"])
                await echo.send(str(i))
                assert await asyncio.wait_for(echo.recv(), 5) == str(i)
            plain = await client.get("/plain")
            assert plain.text == "plain"
            assert plain.headers.get("connection", "keep-alive") != "close"
        assert len(ports) == 1, ports
        for ws in streams:  # each still pushing
            first = int(str(await asyncio.wait_for(ws.recv(), 5)).split()[1])
            assert str(await asyncio.wait_for(ws.recv(), 5)) == f"tick {first + 1}"
    finally:
        await asyncio.gather(*(ws.close() for ws in [*streams, echo]))


# -- TLS, access log ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/echo", "/ws/sync-echo", "/ws/flask-sock-echo"])
async def test_wss_over_tls(servers, certs, path):
    server = servers["tls"]
    context = ssl.create_default_context(cafile=str(certs[0]))
    url = ws_url(server, path, scheme="wss")
    async with connect(url, ssl=context, open_timeout=OPEN_TIMEOUT, max_size=None) as ws:
        big = os.urandom(300 * 1024)
        for message in ("over tls", big):
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), 10) == message


async def test_wss_context_reports_https_and_wss_urls(servers, certs):
    server = servers["tls"]
    context = ssl.create_default_context(cafile=str(certs[0]))
    url = ws_url(server, "/ws/context", scheme="wss")
    async with connect(url, ssl=context, open_timeout=OPEN_TIMEOUT) as ws:
        seen = json.loads(await ws.recv())
    assert seen["scheme"] == "https"
    assert seen["echo_url"] == f"wss://127.0.0.1:{server.port}/ws/echo"
    assert seen["plain_url"] == f"https://127.0.0.1:{server.port}/plain"


async def test_access_log_line_written_when_the_websocket_ends(servers):
    """One line with status 101 (gunicorn's default format), written when
    the WebSocket ends, not at the handshake."""
    server = servers["main"]
    log: Path = server.access_log
    tag = uuid.uuid4().hex
    line = re.compile(rf'"GET /ws/echo\?tag={tag} HTTP/1\.1" 101 (\d+) ')
    async with open_ws(server, f"/ws/echo?tag={tag}") as ws:
        await ws.send("logged")
        assert await ws.recv() == "logged"
        await asyncio.sleep(0.3)
        assert not line.search(log.read_text()), "logged before it ended"
    deadline = time.monotonic() + 3
    while not line.search(log.read_text()):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    assert len(line.findall(log.read_text())) == 1
    entry = next(e for e in log.read_text().splitlines() if line.search(e))
    assert entry.startswith("127.0.0.1 - - [")
    assert "websockets/" in entry  # the user agent, as for any request


@pytest.mark.parametrize("path", ["/ws/private", "/ws/private-sync"], ids=["async", "sync"])
async def test_refused_handshakes_are_logged_with_their_status(servers, path):
    """Each refusal is one access log line with the hook's status, also
    when the client drops the connection as soon as it read the response
    (as the websockets client does)."""
    server = servers["main"]
    log: Path = server.access_log
    tag = uuid.uuid4().hex
    for i in range(5):
        with pytest.raises(InvalidStatus) as info:
            await open_ws(server, f"{path}?tag={tag}&i={i}")
        assert info.value.response.status_code == 401
    await asyncio.sleep(0.3)
    logged = re.findall(rf'"GET {path}\?tag={tag}&i=(\d) HTTP/1\.1" 401 ', log.read_text())
    assert sorted(logged) == ["0", "1", "2", "3", "4"]


# -- the worker's life -----------------------------------------------------------------


async def test_graceful_stop_closes_websockets_with_1001(gunicorn):
    server = gunicorn("ws_app:app", "--graceful-timeout", "5")
    clients = [await open_ws(server, path) for path in ECHO_ROUTES]
    for ws in clients:
        await ws.send("before")
        assert await ws.recv() == "before"
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed_code(ws) for ws in clients))
    assert [code for code, _ in codes] == [1001] * len(clients)
    await asyncio.to_thread(server.proc.wait, 10)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed
    assert server.proc.returncode == 0
    assert "Error" not in server.log(), server.log()[-3000:]


async def test_max_requests_counts_websockets(gunicorn):
    server = gunicorn("ws_app:app", "--max-requests", "3")
    first = server.worker_pids()[-1]

    async def pid_over_websocket() -> int:
        async with open_ws(server, "/ws/pid") as ws:
            return int(await asyncio.wait_for(ws.recv(), 10))

    assert [await pid_over_websocket() for _ in range(3)] == [first] * 3
    server.wait_for_log("Autorestarting worker after current request")
    server.wait_for_log(r"Booting worker with pid", count=2)
    second = server.worker_pids()[-1]
    assert second != first
    deadline = time.monotonic() + 10
    while True:
        try:
            pid = await pid_over_websocket()
            break
        except (OSError, InvalidStatus, ConnectionClosedError):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert pid == second


# -- the chat example --------------------------------------------------------------------


async def test_chat_example_broadcasts_and_refuses_nameless_members(gunicorn):
    """``examples/chat.py``: every member gets every message in order, a
    handshake without a name is refused by the app's before_request hook,
    and members that leave are counted."""
    server = gunicorn("chat:app", cwd=EXAMPLES)
    base = f"ws://127.0.0.1:{server.port}/ws"

    async def next_text(ws: ClientConnection) -> dict[str, str]:
        message = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(message, str)
        return dict(json.loads(message))

    with pytest.raises(InvalidStatus) as refused:
        async with connect(base):
            pass
    assert refused.value.response.status_code == 400
    async with connect(f"{base}?name=ann") as ann:
        assert await next_text(ann) == {"from": "server", "text": "ann joined"}
        async with connect(f"{base}?name=bob") as bob:
            assert await next_text(bob) == {"from": "server", "text": "bob joined"}
            assert await next_text(ann) == {"from": "server", "text": "bob joined"}
            for n in range(3):
                await bob.send(f"hello {n}")
            for member in (ann, bob):
                got = [await next_text(member) for _ in range(3)]
                assert got == [{"from": "bob", "text": f"hello {n}"} for n in range(3)]
        assert await next_text(ann) == {"from": "server", "text": "bob left"}
    deadline = time.monotonic() + 3
    async with httpx.AsyncClient(base_url=server.url) as client:
        while True:
            stats = (await client.get("/stats")).json()
            if stats["left"] == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert stats["joined"] == 2 and stats["left"] == 2 and stats["members"] == 0, stats
