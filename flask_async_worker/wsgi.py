"""A WSGI application served from the executor, behind the ASGI seam.

Each request costs one executor hop in the common case: small request
bodies are read on the loop before the hop (so ``wsgi.input`` is a plain
``BytesIO``), and a response with a known, small length is collected in the
thread and handed back whole.  Larger or open-ended responses are streamed
from the same thread that ran the view, so every line of a request's sync
code (view, generator, ``close()``) sees one thread, as under gunicorn's
thread workers.  The thread hands chunks to one sender task on the loop
through a bounded outbox and waits only when the outbox is full: that is
the download backpressure, and it costs a loop wake-up per batch of chunks
rather than a round trip per chunk.  Large or unknown-length uploads are
read on demand from that thread, which is the upload backpressure, and
``Expect: 100-continue`` is answered only when the app reads.

gunicorn's WSGI environ keys are provided (``RAW_URI``, ``SERVER_SOFTWARE``,
``wsgi.input_terminated``, ``wsgi.file_wrapper``, ``wsgi.early_hints``,
``PROXY_*``), and a ``StopIteration`` raised by the app means "the app took
the connection over", as gunicorn's workers treat it.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Executor
from typing import IO, Any, TypeVar, cast
from urllib.parse import unquote_to_bytes

from .pool import run_in_pool
from .server import Message, Receive, Scope, Send

T = TypeVar("T")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Request bodies up to this size with a declared length are read on the
#: loop before the hop, so the app finds them in memory.
PREREAD_LIMIT = 64 * 1024
#: Responses that declare a length up to this size are collected in the
#: thread and sent in one piece.
COLLECT_LIMIT = 256 * 1024
FILE_BLOCK = 256 * 1024
#: Header names (lower-case bytes, as the server passes them) to environ
#: keys: a lookup instead of decode/upper/replace per header per request.
#: Bounded: names are chosen by clients.
_HEADER_KEYS: dict[bytes, str] = {}
_HEADER_KEYS_SIZE = 512


class FileWrapper:
    """``wsgi.file_wrapper``: reads in large blocks.

    Each block crosses from the thread to the loop, so werkzeug's default
    8 KiB block would cost one hop per 8 KiB of a download.
    """

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = max(blksize, FILE_BLOCK)
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


class InputStream(io.RawIOBase):
    """``wsgi.input`` that pulls the body from the loop as the app reads.

    The first read starts one receiver task on the loop (so ``Expect:
    100-continue`` is answered only when the app reads), which keeps up to
    ``limit`` bytes of body ready for the thread: the thread waits for the
    loop only when that store is empty, instead of a round trip per chunk.
    The limit is the upload backpressure: beyond it the receiver stops
    asking, the server stops reading the socket, and the client is slowed.

    A client that leaves in the middle raises werkzeug's
    ``ClientDisconnected`` rather than ending the stream, so a cut-short
    upload is never mistaken for a complete one.
    """

    def __init__(
        self, receive: Receive, loop: asyncio.AbstractEventLoop, limit: int = COLLECT_LIMIT
    ) -> None:
        self._receive = receive
        self._loop = loop
        self._limit = limit
        self._buf = bytearray()
        self._done = False
        # Shared with the receiver task, under the condition's lock.
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._stored = 0
        self._ended = False  # the receiver delivered the last chunk
        self._failed = False  # the client left
        self._space: asyncio.Event | None = None  # set when the store has room
        self._started = False
        self._task: asyncio.Task[None] | None = None

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Move received body into the read buffer; wait if there is none."""
        if self._done:
            return False
        cond = self._cond
        with cond:
            if not self._started:
                self._started = True
                self._loop.call_soon_threadsafe(self._start)
            ready = _wait_for_loop(
                cond, self._loop, lambda: bool(self._chunks) or self._ended or self._failed
            )
            if not ready:
                self._failed = True
            chunks = list(self._chunks)
            self._chunks.clear()
            was_full = self._stored >= self._limit
            self._stored = 0
            ended, failed = self._ended, self._failed
        for chunk in chunks:
            self._buf += chunk
        if was_full and not ended and not failed:
            self._loop.call_soon_threadsafe(self._make_room)
        if chunks:
            return True
        self._done = True
        if failed:
            from werkzeug.exceptions import ClientDisconnected

            raise ClientDisconnected()
        return False

    def _start(self) -> None:
        self._space = asyncio.Event()
        self._task = self._loop.create_task(self._run())

    def _make_room(self) -> None:
        if self._space is not None:
            self._space.set()

    async def _run(self) -> None:
        cond = self._cond
        space = self._space
        assert space is not None
        try:
            while True:
                message = await self._receive()
                with cond:
                    if message["type"] != "http.request":
                        self._failed = True
                        cond.notify_all()
                        return
                    body = message.get("body", b"")
                    if body:
                        self._chunks.append(body)
                        self._stored += len(body)
                    more = message.get("more_body", False)
                    if not more:
                        self._ended = True
                    full = self._stored >= self._limit
                    if full:
                        space.clear()
                    cond.notify_all()
                if not more:
                    return
                if full:
                    await space.wait()
        except BaseException:
            with cond:
                self._failed = True
                cond.notify_all()
            raise

    def stop(self) -> None:
        """The call is over: a receiver still waiting for body is cancelled."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buf)
            self._buf.clear()
            return data
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end != -1 or (size is not None and 0 <= size <= len(self._buf)):
                break
            if not self._fill():
                break
        limit = len(self._buf) if end == -1 else end + 1
        if size is not None and size >= 0:
            limit = min(limit, size)
        data = bytes(self._buf[:limit])
        del self._buf[:limit]
        return data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class _Hijacked(Exception):
    """The app raised StopIteration: it took the connection over."""


class WSGIAdapter:
    """An ASGI application running a WSGI application in an executor."""

    def __init__(
        self,
        app: WSGIApp,
        executor: Executor | None = None,
        *,
        errors: IO[str] | None = None,
        multiprocess: bool = False,
        server_software: str = "gunicorn",
        stream_buffer: int = COLLECT_LIMIT,
        input_buffer: int = COLLECT_LIMIT,
    ) -> None:
        self.app = app
        self.executor = executor
        # Response bytes a thread may queue ahead of the client, and request
        # bytes received ahead of a thread reading wsgi.input.
        self.stream_buffer = stream_buffer
        self.input_buffer = input_buffer
        self._base: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.errors": errors if errors is not None else sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            "SERVER_SOFTWARE": server_software,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await _plain_lifespan(receive, send)
        else:
            # WebSocket and other scopes have no WSGI equivalent.
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(self.environ(scope), scope, receive, send)

    async def serve(
        self, environ: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run the WSGI app on a prepared environ (``wsgi.input`` is set here)."""
        loop = asyncio.get_running_loop()
        length = environ.get("CONTENT_LENGTH")
        stream: InputStream | None = None
        if (
            length is None
            and "HTTP_TRANSFER_ENCODING" not in environ
            and scope["http_version"] != "2"
        ):
            environ["wsgi.input"] = io.BytesIO()
        elif (
            length is not None
            and length.isdigit()
            and int(length) <= PREREAD_LIMIT
            and "HTTP_EXPECT" not in environ
        ):
            environ["wsgi.input"] = io.BytesIO(await _read_body(receive))
        else:
            stream = InputStream(receive, loop, self.input_buffer)
            environ["wsgi.input"] = stream
        if "http.response.informational" in scope.get("extensions", {}):
            environ["wsgi.early_hints"] = _early_hints(send, loop)
        call = _Call(self.app, environ, (send, loop, self.stream_buffer))
        ctx = contextvars.copy_context()
        try:
            result = await run_in_pool(self.executor, ctx.run, call.run)
        finally:
            if stream is not None:
                stream.stop()
        if result is None:
            return  # streamed (or hijacked) from the thread
        status, headers, body = result
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def environ(self, scope: Scope) -> dict[str, Any]:
        environ = self._base.copy()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        path_info = (
            unquote_to_bytes(raw_path).decode("latin-1")
            if b"%" in raw_path
            else raw_path.decode("latin-1")
        )
        script_name = scope.get("root_path", "")
        if script_name:
            script_name = script_name.encode("utf-8").decode("latin-1")
            if path_info.startswith(script_name):
                path_info = path_info[len(script_name) :]
        environ["REQUEST_METHOD"] = scope["method"]
        environ["SCRIPT_NAME"] = script_name
        environ["PATH_INFO"] = path_info
        environ["QUERY_STRING"] = scope["query_string"].decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + scope["http_version"]
        environ["wsgi.url_scheme"] = scope.get("scheme", "http")
        server = scope.get("server")
        if server:
            environ["SERVER_NAME"] = server[0]
            environ["SERVER_PORT"] = str(server[1]) if server[1] is not None else ""
        else:
            environ["SERVER_NAME"], environ["SERVER_PORT"] = "localhost", "80"
        client = scope.get("client")
        if client:
            environ["REMOTE_ADDR"] = client[0]
            environ["REMOTE_PORT"] = str(client[1])
        ext = scope.get("extensions", {}).get("flask_async_worker") or {}
        raw_uri = ext.get("raw_uri")
        if raw_uri is None:
            query = scope["query_string"]
            raw_uri = raw_path + (b"?" + query if query else b"")
        environ["RAW_URI"] = raw_uri.decode("latin-1")
        proxy = ext.get("proxy")
        if proxy is not None:
            environ.update(proxy.environ())
        extra = ext.get("environ")
        if extra:
            # Keys a test harness passes through (werkzeug.debug.preserve_context).
            environ.update(extra)
        for name, value in scope["headers"]:
            if name == b"content-type":
                environ["CONTENT_TYPE"] = value.decode("latin-1")
            elif name == b"content-length":
                environ["CONTENT_LENGTH"] = value.decode("latin-1")
            else:
                key = _HEADER_KEYS.get(name)
                if key is None:
                    key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
                    if len(_HEADER_KEYS) < _HEADER_KEYS_SIZE:
                        _HEADER_KEYS[name] = key
                text = value.decode("latin-1")
                if key in environ:
                    # RFC 9110 section 5.3; cookies are joined with "; ".
                    sep = "; " if key == "HTTP_COOKIE" else ","
                    environ[key] = environ[key] + sep + text
                else:
                    environ[key] = text
        return environ


class _Outbox:
    """Response messages a pool thread streams to the loop.

    One sender task on the loop awaits ``send`` for each message in order;
    the thread waits only while more than ``limit`` body bytes are queued
    (the backpressure a client that reads slowly exerts on the app) and, at
    the end, until everything queued was sent, so that the ASGI call returns
    only once the response is complete.  An error from ``send`` (the client
    left) is raised in the thread on its next message, which stops the app's
    iteration as a failed socket write does under gunicorn's own workers.
    """

    __slots__ = (
        "_cond",
        "_error",
        "_loop",
        "_pending",
        "_queue",
        "_send",
        "_sending",
        "_task",
        "limit",
    )

    def __init__(self, send: Send, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._send = send
        self._loop = loop
        self.limit = limit
        self._queue: deque[Message] = deque()
        self._pending = 0
        self._sending = False
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._cond = threading.Condition()

    def put(self, message: Message) -> None:
        """Queue ``message`` (from the pool thread); block while the outbox is full."""
        with self._cond:
            self._raise_error()
            self._queue.append(message)
            self._pending += len(message.get("body", b""))
            if not self._sending:
                self._sending = True
                self._loop.call_soon_threadsafe(self._start)
            self._wait(lambda: self._pending <= self.limit)

    def flush(self) -> None:
        """Wait (in the pool thread) until everything queued was sent."""
        with self._cond:
            self._wait(lambda: not self._sending)
            self._raise_error()

    def settle(self) -> None:
        """Like :meth:`flush`, for clean-up paths: an error is not raised."""
        with self._cond:
            try:
                self._wait(lambda: not self._sending)
            except BaseException:
                return

    def _wait(self, ready: Callable[[], bool]) -> None:
        if not _wait_for_loop(self._cond, self._loop, lambda: ready() or self._error is not None):
            self._error = ConnectionError("the event loop is closed")
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _start(self) -> None:
        # Held here: the loop keeps only weak references to its tasks.
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                if not self._queue:
                    self._sending = False
                    cond.notify_all()
                    return
                message = self._queue.popleft()
            try:
                await self._send(message)
            except BaseException as exc:
                with cond:
                    self._error = (
                        exc
                        if isinstance(exc, Exception)
                        else ConnectionError("the response was cancelled")
                    )
                    self._queue.clear()
                    self._pending = 0
                    self._sending = False
                    cond.notify_all()
                if not isinstance(exc, Exception):
                    raise
                return
            size = len(message.get("body", b""))
            if size:
                with cond:
                    before = self._pending
                    self._pending -= size
                    if before > self.limit >= self._pending:
                        cond.notify_all()


class _Call:
    """One WSGI call, run in an executor thread."""

    __slots__ = ("_outbox", "app", "environ", "headers", "outbox_args", "started", "status")

    def __init__(
        self, app: WSGIApp, environ: dict[str, Any], outbox_args: tuple[Send, Any, int]
    ) -> None:
        self.app = app
        self.environ = environ
        # Made on the first streamed message: most responses are sent whole
        # and never need one (its condition variable costs per request).
        self.outbox_args = outbox_args
        self._outbox: _Outbox | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        self.status = int(status[:3])
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        return self._write

    def _write(self, data: bytes) -> None:
        # The legacy write() callable: stream it.
        self._start_stream()
        self._push(data, more=True)

    @property
    def outbox(self) -> _Outbox:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = _Outbox(*self.outbox_args)
        return outbox

    def _push(self, data: bytes, more: bool) -> None:
        self.outbox.put({"type": "http.response.body", "body": data, "more_body": more})

    def _start_stream(self) -> None:
        if not self.started:
            self.started = True
            self.outbox.put(
                {"type": "http.response.start", "status": self.status, "headers": self.headers}
            )

    def run(self) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        try:
            try:
                iterable = self.app(self.environ, self.start_response)
            except StopIteration:
                # gunicorn's convention: the app hijacked the connection.
                return None
            try:
                return self._respond(iterable)
            except StopIteration:
                return None
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        finally:
            if self.started:
                # Whatever happened, nothing queued may still be on its way
                # when the call returns: the server decides what follows.
                self.outbox.settle()

    def _respond(
        self, iterable: Iterable[bytes]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if self.started:
            for chunk in iterable:
                if chunk:
                    self._push(chunk, more=True)
            self._push(b"", more=False)
            self.outbox.flush()
            return None
        if isinstance(iterable, list | tuple) and len(iterable) <= 1:
            if not self.status:
                raise RuntimeError("WSGI app did not call start_response")
            return self.status, self.headers, iterable[0] if iterable else b""
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
        if length is not None and length <= COLLECT_LIMIT:
            chunks = [chunk for chunk in iterable if chunk]
            if not self.status:
                raise RuntimeError("WSGI app did not call start_response")
            return self.status, self.headers, b"".join(chunks)
        iterator = iter(iterable)
        for chunk in iterator:
            # start_response may be called lazily, on the first iteration.
            if chunk:
                self._start_stream()
                self._push(chunk, more=True)
        if not self.status:
            raise RuntimeError("WSGI app did not call start_response")
        return self._finish()

    def _finish(self) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if not self.started:
            # Nothing non-empty was produced: an empty body, sent whole.
            return self.status, self.headers, b""
        self._push(b"", more=False)
        self.outbox.flush()
        return None


def _wait_for_loop(
    cond: threading.Condition, loop: asyncio.AbstractEventLoop, ready: Callable[[], bool]
) -> bool:
    """Wait (in a pool thread, holding ``cond``) until ``ready()``, for the
    loop to make it so.  False when the loop closed for good first (a worker
    being torn down): the thread must not be left waiting forever."""
    while not ready():
        if not cond.wait(1.0) and loop.is_closed():
            return False
    return True


def call_in_loop(awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop) -> T:
    """Run ``awaitable`` on the loop from an executor thread and wait for it.

    The calling thread's context travels with it (``call_soon_threadsafe``
    copies it), so Flask's request context is visible to the coroutine.
    """
    coro = cast(Coroutine[Any, Any, T], awaitable)
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            from werkzeug.exceptions import ClientDisconnected

            raise ClientDisconnected()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _early_hints(send: Send, loop: asyncio.AbstractEventLoop) -> Callable[[list[Any]], None]:
    def early_hints(headers: list[tuple[str, str]]) -> None:
        message: Message = {
            "type": "http.response.informational",
            "status": 103,
            "headers": [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        }
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("wsgi.early_hints called from the event loop thread")
        call_in_loop(send(message), loop)

    return early_hints


async def _plain_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
