"""The request body of a request to an async view.

Sync code reads the body — ``request.get_json()``, ``request.form``, a
hook, the view — and on the loop a read must never wait for the network.
So the adapter receives the body before user code needs it, up to the
limit in effect at that moment, and keeps what it has received here:

* before the request's hooks run, up to the app-wide limit
  (``MAX_CONTENT_LENGTH``, or ``ASYNC_WORKER_MAX_BODY`` when that is not
  set);
* again after each ``url_value_preprocessor`` pass and ``before_request``
  hook, and after a sync decorator around the view has run, up to
  ``request.max_content_length`` as it is then — Flask 3.1 lets a hook or a
  decorator change it for one request.

A body larger than the limit is not refused here: it stays unread on the
connection, and only a read of it fails with 413 (werkzeug's
``RequestEntityTooLarge``, through the app's error handlers), as under
Flask where the limit is checked when the body is accessed.  A view that
never reads the body answers normally.  A declared ``Content-Length`` over
the limit is not received at all, so ``Expect: 100-continue`` is never
answered for it.  A chunked body over the limit is refused with 413 when
read, where werkzeug would silently cut it at the limit.
"""

from __future__ import annotations

import io
import tempfile
from typing import Any

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from ..server import Receive


class RequestBody(io.RawIOBase):
    """``wsgi.input`` of a body not (yet) received in full.

    While incomplete, the body is larger than a limit that was in effect
    when it was received, so any read raises ``RequestEntityTooLarge`` (or
    ``ClientDisconnected`` when the client left); once a later
    :meth:`fill` completes it, it reads as the whole body.  A body complete
    from the start is handed to the request as a plain ``BytesIO`` or
    spooled file instead (:meth:`complete_stream`).
    """

    def __init__(self, receive: Receive, declared: int | None, spool_size: int) -> None:
        self._receive = receive
        self._declared = declared
        self._spool_size = spool_size
        self._chunks: list[bytes] = []
        self._spool: Any = None
        self._reader: Any = None
        self.size = 0
        self.complete = False
        self.disconnected = False

    # -- receiving, on the loop ---------------------------------------------------------

    async def fill(self, limit: int) -> bool:
        """Receive until the body is complete or larger than ``limit``.

        False when the client left.  A declared length over ``limit`` is
        not received at all.
        """
        if self.complete or self.disconnected:
            return not self.disconnected
        if self._declared is not None and self._declared > limit:
            return True
        while self.size <= limit:
            message = await self._receive()
            if message["type"] != "http.request":
                self.disconnected = True
                return False
            self._store(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
                break
        return True

    def _store(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self._spool is None and self.size > self._spool_size:
            # Closed by whoever takes it (complete_stream) or by discard().
            self._spool = tempfile.SpooledTemporaryFile(max_size=self._spool_size)  # noqa: SIM115
            self._spool.write(b"".join(self._chunks))
            self._chunks = []
        if self._spool is not None:
            self._spool.seek(0, io.SEEK_END)
            self._spool.write(data)
        else:
            self._chunks.append(data)

    def complete_stream(self) -> Any:
        """The whole body (once complete) as a stream the caller owns."""
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.seek(0)
            return spool
        data = b"".join(self._chunks)
        self._chunks = []
        return io.BytesIO(data)

    def discard(self) -> None:
        """Drop what was received (a spooled file is closed)."""
        for stream in (self._spool, self._reader):
            if stream is not None:
                stream.close()
        self._spool = self._reader = None
        self._chunks = []

    # -- reading, from the request's code -------------------------------------------------

    def readable(self) -> bool:
        return True

    def _stream(self) -> Any:
        """The complete body to read from; while the body is incomplete it
        is larger than a limit in effect, and any read is refused."""
        if self._reader is None:
            if not self.complete:
                if self.disconnected:
                    raise ClientDisconnected()
                raise RequestEntityTooLarge()
            self._reader = self.complete_stream()
        return self._reader

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream().read(size)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        count: int = self._stream().readinto(buffer)
        return count

    def readline(self, size: int | None = -1) -> bytes:
        line: bytes = self._stream().readline(size)
        return line

    def close(self) -> None:
        self.discard()
        super().close()
