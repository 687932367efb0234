"""Testing through the same path production takes.

``AdapterTestClient`` is a drop-in ``app.test_client_class``: a project's
existing tests written with ``app.test_client()`` keep their API (cookies,
``session_transaction``, ``follow_redirects``, ``with client:`` context
preservation) while every request goes through :class:`FlaskAdapter` on an
event loop — async views run natively, sync views in the thread pool —
instead of through Flask's own ``wsgi_app``::

    from flask_async_worker.testing import AdapterTestClient
    app.test_client_class = AdapterTestClient

It also opens WebSockets to the app's routes, with the client's cookies
(a ``session`` a login request set), through the same adapter::

    with client.websocket("/echo") as ws:
        ws.send("hi")
        assert ws.receive() == "hi"

:class:`LiveServer` runs an app under a real gunicorn arbiter with the
worker, on a free loopback port, for end-to-end tests; the pytest fixture
``flask_async_worker_server`` (enable with ``pytest_plugins =
["flask_async_worker.testing"]``) starts them and stops them after the test.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask
from flask.testing import FlaskClient

from .adapter import ConnectionClosed, FlaskAdapter
from .server import Message

_DONE = object()


class _LoopThread:
    """An event loop in a daemon thread, shared by one app's test clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="flask-async-worker-test-loop", daemon=True
        )
        self.thread.start()


def adapter_for(app: Flask) -> tuple[FlaskAdapter, asyncio.AbstractEventLoop]:
    """The app's test adapter and its loop, created on first use."""
    state = app.extensions.get("flask_async_worker.testing")
    if state is None:
        runner = _LoopThread()
        executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="flask-async-test")
        existing = app.extensions.get("flask_async_worker")
        adapter = existing if isinstance(existing, FlaskAdapter) else FlaskAdapter(app, executor)
        asyncio.run_coroutine_threadsafe(_bind(adapter), runner.loop).result()
        state = app.extensions["flask_async_worker.testing"] = (adapter, runner.loop)
    return state


async def _bind(adapter: FlaskAdapter) -> None:
    adapter._bind()


class ASGIToWSGI:
    """A WSGI callable that runs the adapter on its loop for each call."""

    def __init__(self, app: Flask) -> None:
        self.adapter, self.loop = adapter_for(app)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        scope = _scope_from_environ(environ)
        messages: queue.Queue[Any] = queue.Queue()
        disconnected = asyncio.Event()
        request_sent = False

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if disconnected.is_set():
                raise OSError("client disconnected")
            messages.put(message)

        async def run() -> None:
            try:
                await self.adapter(scope, receive, send)
            except BaseException as exc:
                messages.put(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                messages.put(_DONE)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        first = messages.get()
        if isinstance(first, BaseException):
            raise first
        if first is _DONE:
            raise RuntimeError("the application sent no response")
        status = first["status"]
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in first["headers"]]
        start_response(f"{status} {_reason(status)}", headers)

        def body_iter() -> Iterator[bytes]:
            try:
                while True:
                    item = messages.get()
                    if item is _DONE:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    if item.get("body"):
                        yield item["body"]
                    if not item.get("more_body", False):
                        return
            finally:
                self.loop.call_soon_threadsafe(disconnected.set)
                future.result()

        return body_iter()


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _scope_from_environ(environ: dict[str, Any]) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower().encode("latin-1")
            headers.append((name, value.encode("latin-1")))
    for key, field in (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length")):
        if environ.get(key):
            headers.append((field, environ[key].encode("latin-1")))
    path = environ.get("PATH_INFO", "/")
    root = environ.get("SCRIPT_NAME", "")
    raw_path = quote((root + path).encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    extra = {
        k: v
        for k, v in environ.items()
        if k in ("werkzeug.debug.preserve_context", "REMOTE_USER") or k.startswith("flask.")
    }
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
        "method": environ["REQUEST_METHOD"],
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": root + path,
        "raw_path": raw_path.encode("ascii"),
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": root,
        "headers": headers,
        "client": (environ.get("REMOTE_ADDR", "127.0.0.1"), int(environ.get("REMOTE_PORT") or 0)),
        "server": (environ.get("SERVER_NAME", "localhost"), int(environ.get("SERVER_PORT") or 80)),
        "extensions": {"flask_async_worker": {"environ": extra}},
    }


class WebSocketRefused(Exception):
    """The app answered the handshake with an HTTP response."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"WebSocket refused with {status}")
        self.status = status
        self.headers = headers
        self.body = body


class TestWebSocket:
    """The client's end of a WebSocket to the app, served by the adapter on
    the test loop (:meth:`AdapterTestClient.websocket`)."""

    __test__ = False  # not a pytest test class

    def __init__(self, adapter: FlaskAdapter, loop: asyncio.AbstractEventLoop, scope: Any) -> None:
        self._loop = loop
        self._inbox: asyncio.Queue[Message] | None = None
        self._outbox: queue.Queue[Any] = queue.Queue()
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._open = False
        self._left = False

        async def run() -> None:
            self._inbox = asyncio.Queue()
            self._inbox.put_nowait({"type": "websocket.connect"})
            try:
                await adapter(scope, self._inbox.get, self._from_app)
            except BaseException as exc:
                self._outbox.put(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._outbox.put(_DONE)

        self._future = asyncio.run_coroutine_threadsafe(run(), loop)

    async def _from_app(self, message: Message) -> None:
        if self._left:
            raise OSError("client disconnected")  # as the server's send does
        self._outbox.put(message)

    def _next(self, timeout: float) -> Any:
        try:
            item = self._outbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing from the app in {timeout}s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def _to_app(self, message: Message) -> None:
        def put() -> None:
            assert self._inbox is not None
            self._inbox.put_nowait(message)

        self._loop.call_soon_threadsafe(put)

    def accept(self, timeout: float = 5.0) -> None:
        """Wait for the handshake's answer; :class:`WebSocketRefused` if it
        was an HTTP response (``websocket.close`` first is a 403)."""
        item = self._next(timeout)
        if item is _DONE or item["type"] == "websocket.close":
            raise WebSocketRefused(403, [], b"")
        if item["type"] == "websocket.http.response.start":
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in item["headers"]]
            body = b""
            while True:
                part = self._next(timeout)
                if part is _DONE:
                    break
                body += part.get("body", b"")
                if not part.get("more_body", False):
                    break
            raise WebSocketRefused(item["status"], headers, body)
        assert item["type"] == "websocket.accept", item
        self.subprotocol = item.get("subprotocol")
        self._open = True

    def send(self, data: str | bytes) -> None:
        key = "bytes" if isinstance(data, bytes) else "text"
        self._to_app({"type": "websocket.receive", key: data})

    def receive(self, timeout: float = 5.0) -> str | bytes:
        """The app's next message; :class:`~flask_async_worker.ConnectionClosed`
        when it closed (``close_code`` says how)."""
        if not self._open:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
        item = self._next(timeout)
        if item is _DONE:
            self._open = False
            self.close_code = self.close_code or 1006
        elif item["type"] == "websocket.close":
            self._open = False
            self.close_code = item.get("code") or 1000
            self.close_reason = item.get("reason") or ""
        else:
            text = item.get("text")
            return text if text is not None else bytes(item.get("bytes") or b"")
        raise ConnectionClosed(self.close_code, self.close_reason)

    def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Close from the client's side and wait for the handler to end."""
        if self._future.done():
            return
        self._left = True
        self._to_app({"type": "websocket.disconnect", "code": code, "reason": ""})
        self._open = False
        self._future.result(timeout)

    def __enter__(self) -> TestWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AdapterTestClient(FlaskClient):
    """Flask's test client, sending every request through the adapter."""

    def __init__(self, app: Flask, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._asgi_wsgi = ASGIToWSGI(app)

    def websocket(
        self,
        path: str,
        *,
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> TestWebSocket:
        """Open a WebSocket to ``path`` (query string included) with this
        client's cookies; accepted on return, or :class:`WebSocketRefused`."""
        request = self._request_from_builder_args((path,), {"headers": headers or {}})
        environ = request.environ
        self._add_cookies_to_wsgi(environ)
        scope = _scope_from_environ(environ)
        scope["type"] = "websocket"
        del scope["method"]
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        scope["subprotocols"] = list(subprotocols or [])
        scope["headers"].append((b"sec-websocket-version", b"13"))
        scope["extensions"]["websocket.http.response"] = {}
        adapter, loop = adapter_for(self.application)
        ws = TestWebSocket(adapter, loop, scope)
        try:
            ws.accept(timeout)
        except BaseException:
            ws._future.result(timeout)
            raise
        return ws

    def run_wsgi_app(self, environ: Any, buffered: bool = False) -> Any:
        # werkzeug's Client handles cookies around calling self.application;
        # swap the adapter in for that call only (FlaskClient uses
        # self.application as the Flask app everywhere else).
        app = self.application
        self.application = self._asgi_wsgi  # type: ignore[assignment]
        try:
            return super().run_wsgi_app(environ, buffered)
        finally:
            self.application = app


class LiveServer:
    """``app`` (a gunicorn app spec, ``"module:app"``) under a real arbiter."""

    def __init__(
        self,
        app: str,
        *args: str,
        worker: str = "flask_async_worker.UVLoopWorker",
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="flask-async-worker-", suffix=".log")[1])
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "--no-control-socket",
            "-k",
            worker,
            "-b",
            "127.0.0.1:0",
            "--error-logfile",
            str(self.log_path),
            *args,
            app,
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True
        )
        self.port = self._wait(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        port = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log()}")
            if not port:
                match = re.search(r"Listening at: \S+?:(\d+)", self.log())
                port = int(match.group(1)) if match else 0
            if port and "Booting worker" in self.log():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return port
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not start within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pass
else:

    @pytest.fixture
    def flask_async_worker_server() -> Iterator[Callable[..., LiveServer]]:
        """Start ``LiveServer``s; each is stopped when the test ends."""
        started: list[LiveServer] = []

        def start(app: str, *args: str, **kwargs: Any) -> LiveServer:
            server = LiveServer(app, *args, **kwargs)
            started.append(server)
            return server

        yield start
        for server in started:
            server.__exit__()
