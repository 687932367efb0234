"""WebSocket routes through :class:`FlaskAdapter` in process, no server.

The adapter is driven as an ASGI application with a fake ``receive``/``send``
pair and a ``websocket`` scope, with the ``websocket.http.response``
extension (the worker's server has it) and without (a plain ASGI server):
the exact message sequence each handler produces, refusals, the sync
handler path, and the flask-sock bridge.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask_sock  # type: ignore[import-untyped]
import pytest
import simple_websocket  # type: ignore[import-untyped]
from flask import Flask, abort, g, request, session
from werkzeug.serving import make_server

from flask_async_worker import ConnectionClosed, FlaskAdapter, Sock, SyncWebSocket, WebSocket
from flask_async_worker.adapter.websocket import install_simple_websocket_bridge
from flask_async_worker.server import Message

pytestmark = pytest.mark.timeout(30)

DENIAL = "websocket.http.response"


def create_app(**config: Any) -> Flask:
    app = Flask("ws_adapter_app")
    app.secret_key = "adapter-secret"
    app.config.update(config)
    sock = Sock(app)
    fsock = flask_sock.Sock(app)
    log: list[str] = []
    app.extensions["test_log"] = log

    @app.before_request
    def before() -> None:
        log.append(f"before {request.path} {threading.current_thread().name}")
        g.who = request.args.get("who", "nobody")
        if request.args.get("deny"):
            abort(int(request.args["deny"]))

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        log.append(f"teardown {request.path}")

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @sock.route("/echo")
    async def echo(ws: WebSocket) -> None:
        log.append(f"handler {g.who}")
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            log.append("handler done")

    @sock.route("/close")
    async def close(ws: WebSocket) -> None:
        await ws.send("closing")
        await ws.close(4001, "bye")
        with pytest.raises(ConnectionClosed):
            await ws.send("after close")

    @sock.route("/return")
    async def returns(ws: WebSocket) -> None:
        await ws.send("returning")

    @sock.route("/timeout")
    async def timeout(ws: WebSocket) -> None:
        await ws.send(repr(await ws.receive(timeout=0.05)))
        await ws.send(repr(await ws.receive(timeout=5)))

    @sock.route("/proto")
    async def proto(ws: WebSocket) -> None:
        await ws.send(repr(ws.subprotocol))

    @sock.route("/boom")
    async def boom(ws: WebSocket) -> None:
        await ws.receive()
        raise RuntimeError("boom")

    @sock.route("/sync-boom")
    def sync_boom(ws: SyncWebSocket) -> None:
        ws.receive()
        raise RuntimeError("boom")

    @sock.route("/sync-echo")
    def sync_echo(ws: SyncWebSocket) -> None:
        log.append(f"sync handler {g.who} {threading.current_thread().name}")
        while True:
            ws.send(ws.receive())  # type: ignore[arg-type]

    @sock.route("/sync-timeout")
    def sync_timeout(ws: SyncWebSocket) -> None:
        ws.send(repr(ws.receive(timeout=0.05)))
        ws.send(repr(ws.receive(timeout=5)))

    @sock.route("/sync-closed")
    def sync_closed(ws: SyncWebSocket) -> None:
        try:
            ws.receive()
        except simple_websocket.ConnectionClosed as exc:  # as flask-sock code catches it
            log.append(f"sync closed {exc.reason} {exc.message}")
            raise

    @fsock.route("/flask-sock")  # type: ignore[untyped-decorator]
    def flask_sock_echo(ws: Any) -> None:
        log.append(f"flask-sock {type(ws).__name__} {session.get('x', '-')}")
        while True:
            ws.send(ws.receive())

    return app


class FakeServer:
    """One WebSocket connection as an ASGI server presents it."""

    def __init__(
        self,
        path: str,
        query: bytes = b"",
        *,
        denial: bool = True,
        subprotocols: list[str] | None = None,
    ) -> None:
        extensions: dict[str, Any] = {DENIAL: {}} if denial else {}
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-version", b"13"),
                (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "subprotocols": subprotocols or [],
            "extensions": extensions,
        }
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: Message) -> None:
        await self.sent.put(dict(message))

    def start(self, adapter: FlaskAdapter) -> FakeServer:
        self.task = asyncio.create_task(adapter(self.scope, self.receive, self.send))
        return self

    def client_sends(self, data: str | bytes) -> None:
        key = "text" if isinstance(data, str) else "bytes"
        self.incoming.put_nowait({"type": "websocket.receive", key: data})

    def client_leaves(self, code: int = 1000, reason: str = "") -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 5)

    async def finish(self) -> list[dict[str, Any]]:
        """Wait for the application to return; what it sent meanwhile."""
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)
        return self.drain()

    def drain(self) -> list[dict[str, Any]]:
        rest = []
        while not self.sent.empty():
            rest.append(self.sent.get_nowait())
        return rest


def accepted(subprotocol: str | None = None) -> dict[str, Any]:
    return {"type": "websocket.accept", "subprotocol": subprotocol, "headers": []}


def text(data: str) -> dict[str, Any]:
    return {"type": "websocket.send", "text": data}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4, thread_name_prefix="test-sync")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def make_adapter(
    executor: ThreadPoolExecutor,
) -> AsyncIterator[Callable[..., FlaskAdapter]]:
    """``make_adapter(**config)``: an adapter for a new app; the threads of
    its sync handlers are stopped after the test."""
    made: list[FlaskAdapter] = []

    def make(**config: Any) -> FlaskAdapter:
        made.append(FlaskAdapter(create_app(**config), executor=executor))
        return made[-1]

    yield make
    for adapter in made:
        pool = adapter._websocket_pool
        if pool is not None:
            await asyncio.to_thread(pool.executor.shutdown, True)


@pytest.fixture
def adapter(make_adapter: Callable[..., FlaskAdapter]) -> FlaskAdapter:
    return make_adapter()


def log_of(adapter: FlaskAdapter) -> list[str]:
    return adapter.flask_app.extensions["test_log"]  # type: ignore[no-any-return]


# -- async handlers --------------------------------------------------------------------


async def test_async_echo_message_sequence(adapter):
    conn = FakeServer("/echo", b"who=ann").start(adapter)
    assert await conn.next() == accepted()
    conn.client_sends("hello")
    assert await conn.next() == text("hello")
    conn.client_sends(b"\x00\xff")
    assert await conn.next() == {"type": "websocket.send", "bytes": b"\x00\xff"}
    conn.client_leaves(1001, "gone")
    # The client closed: nothing more is sent, not even a close.
    assert await conn.finish() == []
    log = log_of(adapter)
    assert [e.split()[0] for e in log] == ["before", "handler", "handler", "teardown"]
    assert log[1] == "handler ann"  # g from before_request
    assert log[2] == "handler done"


async def test_handler_closing_sends_its_code_and_nothing_after(adapter):
    conn = FakeServer("/close").start(adapter)
    assert await conn.next() == accepted()
    assert await conn.next() == text("closing")
    assert await conn.next() == {"type": "websocket.close", "code": 4001, "reason": "bye"}
    assert await conn.finish() == []


async def test_handler_returning_closes_1000(adapter):
    conn = FakeServer("/return").start(adapter)
    assert await conn.finish() == [
        accepted(),
        text("returning"),
        {"type": "websocket.close", "code": 1000, "reason": ""},
    ]


@pytest.mark.parametrize("path", ["/timeout", "/sync-timeout"])
async def test_receive_timeout_returns_none(adapter, path):
    conn = FakeServer(path).start(adapter)
    assert await conn.next() == accepted()
    assert await conn.next() == text("None")
    conn.client_sends("late")
    assert await conn.next() == text("'late'")
    assert (await conn.finish())[0]["code"] == 1000


async def test_subprotocol_chosen_from_sock_server_options(make_adapter):
    adapter = make_adapter(SOCK_SERVER_OPTIONS={"subprotocols": ["b", "c"]})
    conn = FakeServer("/proto", subprotocols=["a", "c", "b"]).start(adapter)
    assert await conn.next() == accepted("c")
    assert await conn.next() == text("'c'")
    await conn.finish()
    conn = FakeServer("/proto", subprotocols=["a"]).start(adapter)
    assert await conn.next() == accepted(None)
    assert await conn.next() == text("None")
    await conn.finish()


@pytest.mark.parametrize("path", ["/echo", "/sync-echo", "/flask-sock"])
async def test_app_message_limit_closes_1009(make_adapter, path):
    """SOCK_SERVER_OPTIONS["max_message_size"] is the app's own limit,
    below the server's."""
    adapter = make_adapter(SOCK_SERVER_OPTIONS={"max_message_size": 10})
    conn = FakeServer(path).start(adapter)
    assert await conn.next() == accepted()
    conn.client_sends("0123456789")
    assert await conn.next() == text("0123456789")
    conn.client_sends("0123456789+")
    assert await conn.next() == {
        "type": "websocket.close",
        "code": 1009,
        "reason": "message too big",
    }
    assert await conn.finish() == []


@pytest.mark.parametrize("path", ["/boom", "/sync-boom"])
async def test_handler_exception_closes_1011(adapter, path):
    """An exception after accept is an internal error: the adapter closes
    with 1011, or raises so that the server does; never a normal 1000."""
    conn = FakeServer(path).start(adapter)
    assert await conn.next() == accepted()
    conn.client_sends("go")
    assert conn.task is not None
    raised: BaseException | None = None
    try:
        await asyncio.wait_for(conn.task, 5)
    except RuntimeError as exc:
        raised = exc
    closes = [(m["type"], m["code"]) for m in conn.drain()]
    if raised is not None:
        assert str(raised) == "boom"
        assert closes == []  # the server's to close, with 1011
    else:
        assert closes == [("websocket.close", 1011)]


# -- refusing the handshake ----------------------------------------------------------------


def http_response(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    """The refusing response the denial messages carry: (status, headers, body)."""
    start, *bodies = sent
    assert start["type"] == "websocket.http.response.start"
    assert bodies and all(m["type"] == "websocket.http.response.body" for m in bodies)
    assert [bool(m.get("more_body")) for m in bodies] == [True] * (len(bodies) - 1) + [False]
    return start["status"], dict(start["headers"]), b"".join(m["body"] for m in bodies)


@pytest.mark.parametrize("path", ["/echo", "/sync-echo", "/flask-sock"])
async def test_hook_answer_refuses_with_http_response(adapter, path):
    conn = FakeServer(path, b"deny=401").start(adapter)
    status, headers, body = http_response(await conn.finish())
    assert status == 401
    assert headers[b"content-type"].startswith(b"text/html")
    assert b"Unauthorized" in body
    assert not any(
        e.startswith("handler") or e.startswith("sync handler") for e in log_of(adapter)
    )


@pytest.mark.parametrize("path", ["/echo", "/sync-echo", "/flask-sock"])
async def test_refusal_without_the_extension_is_a_close(adapter, path):
    """A server without websocket.http.response: the refusal is a
    websocket.close before accept (the server answers 403)."""
    conn = FakeServer(path, b"deny=401", denial=False).start(adapter)
    sent = await conn.finish()
    assert len(sent) == 1
    assert sent[0]["type"] == "websocket.close"


async def test_routing_errors_refuse_the_handshake(adapter):
    conn = FakeServer("/nowhere").start(adapter)
    assert http_response(await conn.finish())[0] == 404
    conn = FakeServer("/plain").start(adapter)  # not a WebSocket rule
    assert http_response(await conn.finish())[0] == 400


async def test_sync_pool_full_refuses_with_503(make_adapter):
    adapter = make_adapter(ASYNC_WORKER_WEBSOCKET_THREADS=1)
    held = FakeServer("/sync-echo").start(adapter)
    assert await held.next() == accepted()
    refused = FakeServer("/sync-echo").start(adapter)
    status, _, body = http_response(await refused.finish())
    assert status == 503
    assert body == b"Too many WebSocket connections\n"
    held.client_leaves()
    await held.finish()
    again = FakeServer("/sync-echo").start(adapter)
    assert await again.next() == accepted()
    again.client_leaves()
    await again.finish()


# -- sync handlers ---------------------------------------------------------------------


async def test_sync_handler_runs_in_its_pool_with_the_blocking_api(adapter):
    conn = FakeServer("/sync-echo", b"who=bo").start(adapter)
    assert await conn.next() == accepted()
    for message in ("one", b"two", "three"):
        conn.client_sends(message)
        key = "text" if isinstance(message, str) else "bytes"
        assert await conn.next() == {"type": "websocket.send", key: message}
    conn.client_leaves()
    assert await conn.finish() == []
    log = log_of(adapter)
    handler = next(e for e in log if e.startswith("sync handler"))
    assert handler.startswith("sync handler bo flask-async-ws")
    # Hooks run with the handler, in the same thread; teardown after it.
    thread = handler.split()[-1]
    assert log[0] == f"before /sync-echo {thread}"
    assert log[-1] == "teardown /sync-echo"


async def test_sync_receive_raises_simple_websocket_connection_closed(adapter):
    assert issubclass(ConnectionClosed, simple_websocket.ConnectionClosed)
    conn = FakeServer("/sync-closed").start(adapter)
    assert await conn.next() == accepted()
    conn.client_leaves(4002, "see you")
    assert await conn.finish() == []
    assert "sync closed 4002 see you" in log_of(adapter)


def test_connection_closed_matches_simple_websocket():
    exc = ConnectionClosed(1001, "away")
    assert isinstance(exc, simple_websocket.ConnectionClosed)
    assert (exc.reason, exc.message) == (1001, "away")
    assert ConnectionClosed().reason == 1005


# -- flask-sock --------------------------------------------------------------------------


async def test_flask_sock_route_gets_a_sync_websocket(adapter):
    conn = FakeServer("/flask-sock").start(adapter)
    assert await conn.next() == accepted()
    conn.client_sends("via flask-sock")
    assert await conn.next() == text("via flask-sock")
    conn.client_leaves()
    # flask-sock's route closes the ws itself; closing a closed one is quiet.
    assert await conn.finish() == []
    assert "flask-sock SyncWebSocket -" in log_of(adapter)


def test_flask_sock_server_replaced_only_once(executor):
    FlaskAdapter(create_app(), executor)
    bridge = flask_sock.Server
    assert getattr(bridge, "_flask_async_worker", False)
    FlaskAdapter(create_app(), executor)
    install_simple_websocket_bridge()
    assert flask_sock.Server is bridge
    # Code that looks the class up at call time (python-engineio) gets it too,
    # and it is still simple-websocket's Server for everything else.
    assert simple_websocket.Server is bridge
    assert issubclass(bridge, simple_websocket.ws.Server)


def test_flask_sock_under_another_server_uses_the_original(executor):
    """Werkzeug's own server in this process (no worker WebSocket in the
    environ): the bridge hands flask-sock simple-websocket's Server, which
    takes Werkzeug's socket and serves the route as before."""
    from websockets.sync.client import connect

    app = create_app()
    FlaskAdapter(app, executor)  # installs the bridge
    assert getattr(flask_sock.Server, "_flask_async_worker", False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{server.server_port}/flask-sock"
        with connect(url, open_timeout=5, close_timeout=2) as ws:
            ws.send("werkzeug")
            assert ws.recv(timeout=5) == "werkzeug"
    finally:
        server.shutdown()
        thread.join(5)
    # simple-websocket's Server object, not the worker's SyncWebSocket.
    assert "flask-sock Server -" in app.extensions["test_log"]


# -- the test client's WebSockets ---------------------------------------------------------


def client_for(**config: Any) -> Any:
    from flask_async_worker.testing import AdapterTestClient

    app = create_app(**config)

    @app.get("/login")
    def login() -> str:
        session["x"] = "alice"
        return "ok"

    app.test_client_class = AdapterTestClient
    return app, app.test_client()


@pytest.mark.parametrize("path", ["/echo", "/sync-echo", "/flask-sock"])
def test_test_client_websocket_echoes_through_the_adapter(path):
    app, client = client_for()
    with client.websocket(f"{path}?who=tester") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
        ws.send(b"\x00\x01")
        assert ws.receive() == b"\x00\x01"
    log = app.extensions["test_log"]
    assert f"teardown {path}" in log
    if path == "/echo":
        assert "handler tester" in log and "handler done" in log


def test_test_client_websocket_carries_the_session_cookie():
    app, client = client_for()
    assert client.get("/login").status_code == 200
    with client.websocket("/flask-sock") as ws:
        ws.send("x")
        assert ws.receive() == "x"
    assert "flask-sock SyncWebSocket alice" in app.extensions["test_log"]


def test_test_client_websocket_refusal_and_close_codes():
    from flask_async_worker.testing import WebSocketRefused

    _, client = client_for(SOCK_SERVER_OPTIONS={"subprotocols": ["b", "a"]})
    with pytest.raises(WebSocketRefused) as refused:
        client.websocket("/echo?deny=401")
    assert refused.value.status == 401 and b"Unauthorized" in refused.value.body
    with pytest.raises(WebSocketRefused) as missing:
        client.websocket("/nowhere")
    assert missing.value.status == 404
    with client.websocket("/close") as ws:
        assert ws.receive() == "closing"
        with pytest.raises(ConnectionClosed):
            ws.receive()
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
    with client.websocket("/proto", subprotocols=["a", "c"]) as ws:
        assert ws.subprotocol == "a" and ws.receive() == "'a'"


def test_test_client_websocket_close_ends_a_handler_that_only_sends():
    """A handler pushing messages hears the client leave from its next send."""
    app, client = client_for()
    sock = Sock(app)

    @sock.route("/push")
    async def push(ws: WebSocket) -> None:
        try:
            while True:
                await ws.send("tick")
                await asyncio.sleep(0.01)
        finally:
            app.extensions["test_log"].append("push done")

    ws = client.websocket("/push")
    assert ws.receive() == "tick"
    ws.close(timeout=2)
    assert "push done" in app.extensions["test_log"]
