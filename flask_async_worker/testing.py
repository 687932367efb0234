"""Testing through the same path production takes.

``AdapterTestClient`` is a drop-in ``app.test_client_class``: a project's
existing tests written with ``app.test_client()`` keep their API (cookies,
``session_transaction``, ``follow_redirects``, ``with client:`` context
preservation) while every request goes through :class:`FlaskAdapter` on an
event loop — async views run natively, sync views in the thread pool —
instead of through Flask's own ``wsgi_app``::

    from flask_async_worker.testing import AdapterTestClient
    app.test_client_class = AdapterTestClient

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

from .adapter import FlaskAdapter
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


class AdapterTestClient(FlaskClient):
    """Flask's test client, sending every request through the adapter."""

    def __init__(self, app: Flask, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._asgi_wsgi = ASGIToWSGI(app)

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
