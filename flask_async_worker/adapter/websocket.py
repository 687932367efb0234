"""WebSocket routes in a Flask app: the worker's :class:`Sock`, and
flask-sock apps unchanged.

A WebSocket request goes through Flask like any request — URL map (its
rule has ``websocket=True``), ``before_request`` hooks, the view, teardown —
so ``request``, ``session``, ``g``, ``url_for`` and login checks work in a
handler as in a view.  The view the route registers accepts the handshake
and hands the handler a ``ws`` object; a hook that answers first (a 401,
a redirect) refuses the handshake with that HTTP response.

* ``async def`` handlers run on the loop as async views do (their hooks
  too), with :class:`WebSocket`: ``await ws.receive()``, ``await ws.send()``.
  Thousands of them cost no thread.
* sync handlers — :class:`Sock` routes with ``def`` and every flask-sock
  route — run with their hooks in one thread of their own pool, with
  :class:`SyncWebSocket`, whose blocking calls wait on the loop.  A thread
  is held for the life of the connection, so the pool's size
  (``ASYNC_WORKER_WEBSOCKET_THREADS``) caps how many are open at once;
  beyond it the handshake is refused with 503 rather than queued without
  bound.

flask-sock's route wrapper builds its ``ws`` with ``simple_websocket.Server``
from the WSGI environ, as does Flask-SocketIO's (python-engineio's threading
driver); that needs the raw socket, which an event loop does not hand out.
When an adapter is created, each module that imported that class has it
replaced by a function that returns a :class:`SyncWebSocket` for requests
this adapter serves and builds the original otherwise, so the route, its
hooks and its ``ConnectionClosed`` handling are the library's own.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import wraps
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, request

from ..pool import run_in_pool
from ..server import Receive, Scope, Send
from .dispatch import is_async_iterable

if TYPE_CHECKING:
    from .app import FlaskAdapter

    _ClosedBase = RuntimeError
else:
    try:  # flask-sock handlers catch simple_websocket's exception
        from simple_websocket import ConnectionClosed as _ClosedBase
    except ImportError:
        _ClosedBase = RuntimeError

T = TypeVar("T")
log = logging.getLogger("flask_async_worker")

#: Where the request's :class:`WebSocket` waits in the WSGI environ.
WS_KEY = "flask_async_worker.websocket"
#: Close code when none was received (RFC 6455 section 7.1.5).
NO_STATUS = 1005
#: Bytes of a refusing response's body kept from a sync route.
DENIAL_BODY_LIMIT = 64 * 1024

CONNECTING, OPEN, CLOSED = 0, 1, 2


class ConnectionClosed(_ClosedBase):
    """The WebSocket is closed; ``reason`` is the close code, ``message``
    the reason text.  A subclass of ``simple_websocket.ConnectionClosed``
    when that is installed, so flask-sock code catches it unchanged."""

    def __init__(self, reason: int = NO_STATUS, message: str | None = None) -> None:
        Exception.__init__(self, f"Connection closed: {reason} {message or ''}")
        self.reason = reason
        self.message = message


class WebSocket:
    """A WebSocket as an ``async def`` handler sees it: flask-sock's
    ``ws`` API with ``await`` (and ``async for message in ws``)."""

    #: What flask-sock's response class asks the ``ws`` it made.
    mode = "flask_async_worker"

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.loop = asyncio.get_running_loop()
        self.state = CONNECTING
        #: The subprotocol chosen at accept, if any.
        self.subprotocol: str | None = None
        self.close_reason = NO_STATUS
        self.close_message: str | None = None
        #: A per-app limit (``SOCK_SERVER_OPTIONS["max_message_size"]``),
        #: below the server's own.
        self.max_message_size: int | None = None

    @property
    def connected(self) -> bool:
        return self.state == OPEN

    async def accept(
        self, subprotocol: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        if self.state != CONNECTING:
            raise RuntimeError("the WebSocket handshake was already answered")
        await self._send(
            {"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers or []}
        )
        self.subprotocol = subprotocol
        self.state = OPEN

    async def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next message; ``None`` when ``timeout`` seconds pass first.
        Raises :class:`ConnectionClosed` once the connection is closed."""
        if self.state != OPEN:
            raise ConnectionClosed(self.close_reason, self.close_message)
        if timeout is None:
            message = await self._receive()
        else:
            try:
                message = await asyncio.wait_for(self._receive(), timeout)
            except TimeoutError:
                return None
        if message["type"] == "websocket.receive":
            text = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            limit = self.max_message_size
            if limit is not None and len(data) > limit:
                await self.close(1009, "message too big")
                raise ConnectionClosed(1009, "message too big")
            return data
        self.state = CLOSED
        self.close_reason = int(message.get("code") or NO_STATUS)
        self.close_message = message.get("reason") or None
        raise ConnectionClosed(self.close_reason, self.close_message)

    async def send(self, data: str | bytes) -> None:
        if self.state != OPEN:
            raise ConnectionClosed(self.close_reason, self.close_message)
        if isinstance(data, (bytes, bytearray, memoryview)):
            message = {"type": "websocket.send", "bytes": bytes(data)}
        else:
            message = {"type": "websocket.send", "text": str(data)}
        try:
            await self._send(message)
        except OSError:
            self.state = CLOSED
            self.close_reason = 1006
            raise ConnectionClosed(1006, None) from None

    async def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Close with ``reason`` (a close code, 1000 by default).  Raises
        :class:`ConnectionClosed` if it is closed already, as flask-sock's."""
        if self.state != OPEN:
            raise ConnectionClosed(self.close_reason, self.close_message)
        self.state = CLOSED
        self.close_reason = reason or 1000
        self.close_message = message
        await self._send(
            {"type": "websocket.close", "code": self.close_reason, "reason": message or ""}
        )

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            data = await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None
        assert data is not None
        return data


class SyncWebSocket:
    """flask-sock's blocking ``ws`` API for handlers in a pool thread;
    each call waits for the loop, where the connection lives."""

    mode = "flask_async_worker"

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.ws.loop).result()

    @property
    def connected(self) -> bool:
        return self.ws.connected

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    @property
    def close_reason(self) -> int:
        return self.ws.close_reason

    @property
    def close_message(self) -> str | None:
        return self.ws.close_message

    def accept(
        self, subprotocol: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self._call(self.ws.accept(subprotocol, headers))

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        return self._call(self.ws.receive(timeout))

    def send(self, data: str | bytes) -> None:
        self._call(self.ws.send(data))

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        self._call(self.ws.close(reason, message))


def _options() -> dict[str, Any]:
    return dict(current_app.config.get("SOCK_SERVER_OPTIONS") or {})


def _choose_subprotocol(ws: WebSocket, options: dict[str, Any]) -> str | None:
    """flask-sock's rule: the first protocol the client offers that the
    app lists in ``SOCK_SERVER_OPTIONS["subprotocols"]``."""
    accepted = options.get("subprotocols") or []
    if isinstance(accepted, str):
        accepted = [accepted]
    for offered in ws.scope.get("subprotocols") or ():
        if offered in accepted:
            return str(offered)
    return None


def _prepare(ws: WebSocket, options: dict[str, Any]) -> str | None:
    limit = options.get("max_message_size")
    if limit is not None:
        ws.max_message_size = int(limit)
    return _choose_subprotocol(ws, options)


def _current() -> WebSocket:
    ws = request.environ.get(WS_KEY)
    if ws is None:
        raise RuntimeError(
            "this WebSocket route is served by flask_async_worker's worker or adapter "
            "(gunicorn -k flask_async_worker.UVLoopWorker)"
        )
    return ws  # type: ignore[no-any-return]


def _sync_accept(options: dict[str, Any], ws: WebSocket | None = None) -> SyncWebSocket:
    ws = ws or _current()
    sync = SyncWebSocket(ws)
    sync.accept(_prepare(ws, options))
    return sync


class Sock:
    """WebSocket routes with flask-sock's API; handlers may be
    ``async def`` (run on the loop) or ``def`` (run in a thread)::

        sock = Sock(app)

        @sock.route("/echo")
        async def echo(ws):
            async for message in ws:
                await ws.send(message)
    """

    def __init__(self, app: Flask | None = None) -> None:
        self.app: Flask | None = None
        self.bp: Blueprint | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if self.bp is not None:
            app.register_blueprint(self.bp)
        self.app = app

    def route(
        self, path: str, bp: Blueprint | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``f(ws, **url_args)`` for WebSocket requests to ``path``
        (other route options as for ``app.route``)."""

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            view = _async_route(f) if iscoroutinefunction(f) else _sync_route(f)
            kwargs["websocket"] = True
            if bp is not None:
                bp.route(path, **kwargs)(view)
            elif self.app is not None:
                self.app.route(path, **kwargs)(view)
            else:
                if self.bp is None:
                    self.bp = Blueprint("__flask_async_worker_sock", __name__)
                self.bp.route(path, **kwargs)(view)
            return f

        return decorator


def _async_route(f: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(f)
    async def websocket_route(*args: Any, **kwargs: Any) -> Response:
        ws = _current()
        await ws.accept(_prepare(ws, _options()))
        try:
            await f(ws, *args, **kwargs)
        except ConnectionClosed:
            pass
        if ws.connected:
            await ws.close()
        return Response(status=101)

    return websocket_route


def _sync_route(f: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(f)
    def websocket_route(*args: Any, **kwargs: Any) -> Response:
        ws = _sync_accept(_options())
        try:
            f(ws, *args, **kwargs)
        except ConnectionClosed:
            pass
        if ws.connected:
            try:
                ws.close()
            except ConnectionClosed:
                pass
        return Response(status=101)

    return websocket_route


def install_simple_websocket_bridge() -> None:
    """Serve the libraries built on simple-websocket (see the module
    docstring): flask-sock, python-engineio's WSGI drivers (Flask-SocketIO),
    an app's own code.  ``simple_websocket.Server`` becomes a subclass whose
    constructor returns a :class:`SyncWebSocket` for a WebSocket this
    adapter serves and builds the original otherwise; modules that imported
    the class by name get the subclass too."""
    library = sys.modules.get("simple_websocket")
    original = getattr(library, "Server", None)
    if original is None or getattr(original, "_flask_async_worker", False):
        return

    class Server(original):  # type: ignore[misc,valid-type]
        _flask_async_worker = True

        def __new__(cls, environ: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            ws = environ.get(WS_KEY)
            if ws is not None:
                # Not an instance of cls: Python skips __init__.
                return _sync_accept(kwargs, ws)
            return super().__new__(cls)

    Server.__qualname__ = Server.__name__ = original.__name__
    Server.__module__ = original.__module__
    for module in list(sys.modules.values()):
        if getattr(module, "Server", None) is original:
            module.Server = Server  # type: ignore[attr-defined]


# -- serving ---------------------------------------------------------------------------


class WebSocketPool:
    """The threads of sync WebSocket handlers, apart from the sync views'
    pool: a handler holds its thread for the connection's life, and must
    not starve the views.  Counted on the loop, so no lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.active = 0
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="flask-async-ws")

    def full(self) -> bool:
        return self.active >= self.size

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a pool thread, counted until the thread is done
        with it (not until the awaiting task is: a task cancelled after its
        client left must not free a thread its handler still holds)."""
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        started = abandoned = False
        self.active += 1

        def call() -> T | None:
            nonlocal started
            with lock:
                if abandoned:
                    return None
                started = True
            try:
                return fn(*args)
            finally:
                try:
                    loop.call_soon_threadsafe(self._release)
                except RuntimeError:  # the loop is closed: the worker is leaving
                    pass

        try:
            return await run_in_pool(self.executor, contextvars.copy_context().run, call)
        except BaseException:
            with lock:
                if not started:
                    abandoned = True
                    self._release()
            raise

    def _release(self) -> None:
        self.active -= 1


async def serve_websocket(
    adapter: FlaskAdapter, scope: Scope, receive: Receive, send: Send
) -> None:
    """One WebSocket request through the Flask app (see the module docstring)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    environ = adapter.wsgi.environ(
        {**scope, "method": "GET", "scheme": "https" if scope.get("scheme") == "wss" else "http"}
    )
    environ["wsgi.input"] = io.BytesIO()
    # Werkzeug's URL map recognises a WebSocket request by these (HTTP/2's
    # extended CONNECT has neither): WebSocket rules match only then.
    environ["HTTP_UPGRADE"] = "websocket"
    environ["HTTP_CONNECTION"] = "Upgrade"
    ws = WebSocket(scope, receive, send)
    environ[WS_KEY] = ws
    # Routing errors (no match, a plain HTTP route) go to Flask's own
    # wsgi_app, which answers them as for any request.
    route = None if adapter.not_native else adapter.router.match(environ)
    if route is not None and adapter._is_async(route[0], "GET"):
        ctx = adapter._request_context(environ)
        ctx.request.url_rule, ctx.request.view_args = route
        response = await adapter.dispatch.handle(ctx)
        failed = response.status_code >= 500
        if ws.state == CONNECTING:
            # The refusal goes out in one message: a client that resets as
            # soon as it has read the status must not cut a streamed body.
            await _deny(scope, send, *await _collect(adapter, response, environ))
        else:
            await adapter._close(response)
    else:
        pool = adapter.websocket_pool()
        if pool.full():
            log.warning(
                "Refusing WebSocket %s with 503: all %d threads for sync WebSocket handlers "
                "are busy (ASYNC_WORKER_WEBSOCKET_THREADS)",
                environ["PATH_INFO"],
                pool.size,
            )
            text = [(b"content-type", b"text/plain; charset=utf-8")]
            await _deny(scope, send, 503, text, b"Too many WebSocket connections\n")
            return
        result = await pool.run(_run_wsgi, adapter.flask_app, environ)
        failed = result is not None and result[0] >= 500
        if ws.state == CONNECTING and result is not None:
            await _deny(scope, send, *result)
    if ws.state == OPEN:
        # The handler returned (1000) or raised: Flask logged it and made
        # a 500 nobody can see now, so the close code says it (1011).
        await ws.close(1011 if failed else 1000, "internal error" if failed else None)


async def _collect(
    adapter: FlaskAdapter, response: Response, environ: dict[str, Any]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A refusing response whole: status, headers, body (bounded)."""
    headers = _denial_headers(response.get_wsgi_headers(environ).to_wsgi_list())
    body = response.response
    if is_async_iterable(body):
        chunks: list[bytes] = []
        size = 0
        async for chunk in body:  # type: ignore[union-attr]
            data = chunk.encode() if isinstance(chunk, str) else chunk
            chunks.append(data)
            size += len(data)
            if size >= DENIAL_BODY_LIMIT:
                break
        await adapter._close(response)
        data = b"".join(chunks)[:DENIAL_BODY_LIMIT]
    elif response.is_sequence:
        data = _read_bounded(response)
    else:
        data = await run_in_pool(adapter.executor, _read_bounded, response)
    return response.status_code, headers, data


def _read_bounded(response: Response) -> bytes:
    try:
        return _bounded(response.iter_encoded())
    finally:
        response.close()


def _bounded(chunks: Iterable[bytes]) -> bytes:
    """The first DENIAL_BODY_LIMIT bytes of a refusing response's body."""
    kept: list[bytes] = []
    size = 0
    for chunk in chunks:
        kept.append(chunk)
        size += len(chunk)
        if size >= DENIAL_BODY_LIMIT:
            break
    return b"".join(kept)[:DENIAL_BODY_LIMIT]


def _denial_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """A refusal's headers as ASGI wants them, less the framing ones the
    server sets for the body it sends."""
    return [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in headers
        if k.lower() not in ("content-length", "transfer-encoding", "connection")
    ]


def _run_wsgi(app: Flask, environ: dict[str, Any]) -> tuple[int, list[Any], bytes] | None:
    """Flask's ``wsgi_app`` in a pool thread: the response if it refuses
    the handshake (a hook answered before the view), only its status once
    the handshake was accepted (a 500 means the handler raised)."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    result = app.wsgi_app(environ, start_response)
    try:
        if environ[WS_KEY].state != CONNECTING:
            # Accepted: only whether the handler failed matters.
            return (_status(started), [], b"") if started else None
        body = _bounded(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        return None
    return _status(started), _denial_headers(started[1]), body


def _status(started: list[Any]) -> int:
    return int(str(started[0]).split(" ", 1)[0])


def _denial(scope: Scope, send: Send) -> Send:
    """``send`` for an HTTP response refusing the handshake: the ASGI
    denial extension where the server has it, else a plain close (403)."""
    supported = "websocket.http.response" in (scope.get("extensions") or {})

    async def denial(message: dict[str, Any]) -> None:
        if supported:
            await send({**message, "type": "websocket." + message["type"]})
        elif message["type"] == "http.response.start":
            await send({"type": "websocket.close", "code": 1008})

    return denial  # type: ignore[return-value]


async def _deny(
    scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    denial = _denial(scope, send)
    await denial({"type": "http.response.start", "status": status, "headers": headers})
    await denial({"type": "http.response.body", "body": body})
