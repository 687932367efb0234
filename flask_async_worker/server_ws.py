"""WebSocket connections: the ASGI ``websocket`` scope.

:class:`WebSocketProtocol` is the ASGI side, whatever carries it;
:class:`WebSocketCycle` carries it over an HTTP/1.1 connection (the 101
handshake) and ``server_h2.H2WebSocket`` over an HTTP/2 stream (RFC 8441).

A :class:`WebSocketCycle` starts as any request does (``server.py`` sees
the upgrade and checks the handshake); it is a :class:`RequestCycle`, so the
scope, gunicorn's hooks, the access log and the error handling are shared.
Until the application sends ``websocket.accept`` nothing is written; a
refusal is an HTTP response (``websocket.close`` before accepting is a 403,
``websocket.http.response.*`` any response the app builds).  After the 101
the connection feeds its bytes here.

Every wait is bounded: received messages queue up to the body buffer
before reading pauses, a send waits for a client that reads (the send
timeout), a silent peer is pinged and dropped when the pong does not come,
and the close handshake has its own timeout.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .protocols.events import Headers, Request
from .protocols.websocket import (
    PONG,
    Closed,
    Handshake,
    WSDriver,
    accept_response,
    negotiate_deflate,
)
from .server import (
    CLOSING,
    NO_DEADLINE,
    PING,
    PONG_DUE,
    ClientDisconnected,
    HTTPConnection,
    Message,
    RequestCycle,
    _check_response_headers,
)

CONNECTING = 0  # the app has not answered the handshake yet
OPEN = 1
CLOSE_SENT = 2  # this side sent its close frame; the reply is due
CLOSED = 3
DENIED = 4  # the app answered with an HTTP response

#: Headers the handshake answer sets itself; an application's are dropped.
_OWN_HEADERS = frozenset(
    (
        b"upgrade",
        b"connection",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"content-length",
        b"transfer-encoding",
    )
)


class WebSocketProtocol(RequestCycle):
    """The ASGI side of a WebSocket, whatever carries it: the handshake's
    answer, messages in and out, the close handshake.  Subclasses put the
    bytes on the wire (an HTTP/1.1 connection, an HTTP/2 stream).

    No ``__slots__`` here: a class combining it with another slotted
    subclass of :class:`RequestCycle` (``H2Stream``) could not exist; the
    concrete classes declare the fields, and the instance dict CPython
    allows for stays unallocated.
    """

    handshake: Handshake
    ws: WSDriver | None
    state: int
    # Received messages the app has not taken; None while there are none
    # (an empty deque costs half a kilobyte, and most sockets idle).
    inbox: deque[str | bytes] | None
    inbox_size: int
    connect_sent: bool
    closed_info: Closed | None

    def _init_websocket(self, handshake: Handshake) -> None:
        scope = self.scope
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        del scope["method"]
        scope["subprotocols"] = handshake.subprotocols
        extensions = scope["extensions"]
        del extensions["http.response.informational"]
        extensions["websocket.http.response"] = {}
        self.handshake = handshake
        self.ws = None
        self.state = CONNECTING
        self.inbox = None
        self.inbox_size = 0
        self.connect_sent = False
        self.closed_info = None

    # -- the wire (subclasses) ---------------------------------------------------

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _write_accept(self, subprotocol: str | None, deflate: Any, headers: Headers) -> None:
        raise NotImplementedError

    async def _send_wait(self) -> None:
        """Wait while the client is behind with what was written."""
        raise NotImplementedError

    def _opened(self) -> None:
        """The handshake was answered: frames flow from now on."""

    def _ended(self) -> None:
        """Close handshake done, or failed: release the wire."""
        raise NotImplementedError

    def _closing(self) -> None:
        """This side sent its close frame: bound the wait for the reply."""

    def _taken(self) -> None:
        """The app took a message: the client may send more."""

    def _log_ping_timeout(self) -> None:
        conn = self.conn
        conn.server.log.info(
            "WebSocket ping timeout from ip=%s: no pong in %ss",
            conn.client_ip,
            conn.settings.extra.ws_ping_timeout,
        )

    # -- ASGI ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self.ws is not None:
                # Accepted: one request, logged when the app is done with
                # it, however the socket ended (a refused one was logged
                # with its response).
                self.log_finished()

    def _app_returned(self) -> None:
        state = self.state
        if state == OPEN:
            self._close(1000, "")
        elif state == CONNECTING and not self.disconnected:
            # ASGI: an app that returns without accepting refuses with 403.
            self._send_status(403)
        elif state == DENIED:
            super()._app_returned()

    def _fail(self, exc: BaseException | None) -> None:
        if self.state in (CONNECTING, DENIED):
            super()._fail(exc)
            return
        if exc is not None:
            self.conn.server.log.error("Error in WebSocket %s", self._describe(), exc_info=exc)
        if self.state == OPEN:
            self._close(1011, "internal error")

    def _describe(self) -> str:
        return f"WebSocket {self.request.target.decode('latin-1')}"

    async def receive(self) -> Message:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            inbox = self.inbox
            if inbox is not None:
                data = inbox.popleft()
                if not inbox:
                    self.inbox = None
                self.inbox_size -= _size(data)
                self._taken()
                if type(data) is str:
                    return {"type": "websocket.receive", "text": data}
                return {"type": "websocket.receive", "bytes": data}
            closed = self.closed_info
            if closed is not None:
                code, reason = closed.code, closed.reason
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            if self.disconnected:
                return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
            await self._wait()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        state = self.state
        if kind == "websocket.send":
            if state != OPEN:
                if state == CONNECTING:
                    raise RuntimeError("websocket.send before websocket.accept")
                raise ClientDisconnected("WebSocket closed")
            text = message.get("text")
            payload: str | bytes
            if text is not None:
                if type(text) is not str:
                    raise TypeError("websocket.send text must be str")
                payload = text
            else:
                data = message.get("bytes")
                if data is None:
                    raise ValueError("websocket.send without text or bytes")
                payload = bytes(data)
            assert self.ws is not None
            self._write(self.ws.send_message(payload))
            self.bytes_sent += len(payload)
            await self._send_wait()
        elif kind == "websocket.accept":
            if state != CONNECTING:
                raise RuntimeError("websocket.accept after the handshake was answered")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            self._accept(message)
        elif kind == "websocket.close":
            if state == CONNECTING:
                if not self.disconnected:
                    self._send_status(403)
            elif state == OPEN:
                self._close(int(message.get("code") or 1000), message.get("reason") or "")
            # Closing what is closed, or closed by a response, is a no-op.
        elif kind == "websocket.http.response.start" or kind == "websocket.http.response.body":
            if state not in (CONNECTING, DENIED):
                raise RuntimeError(f"{kind} after the handshake was answered")
            self.state = DENIED
            self.keep_alive = False
            await super().send({**message, "type": kind[10:]})
        else:
            raise ValueError(f"unexpected ASGI message {kind!r}")

    # -- the handshake's answer -----------------------------------------------------

    def _accept(self, message: Message) -> None:
        conn = self.conn
        handshake = self.handshake
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in handshake.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        headers = [
            (n, v)
            for n, v in _check_response_headers(message.get("headers") or ())[0]
            if n not in _OWN_HEADERS
        ]
        extra = conn.settings.extra
        deflate = (
            negotiate_deflate(handshake.extensions, extra.ws_max_message_size)
            if extra.ws_per_message_deflate and handshake.extensions
            else None
        )
        self.ws = WSDriver(extra.ws_max_message_size, deflate)
        self._write_accept(subprotocol, deflate, headers)
        self.response_headers = [*headers]
        self.response_started = self.wrote_head = True
        self.keep_alive = False
        self.state = OPEN
        self._opened()
        if self.state == OPEN and conn.server.closing:
            # Accepted during a graceful stop: going away at once.
            self._close(1001, "server shutting down")

    def _send_status(self, status: int) -> None:
        """Refuse the handshake with a bodiless response."""
        self.state = DENIED
        self.keep_alive = False
        self.status = status
        self.response_headers = [(b"content-length", b"0")]
        self.response_has_length = True
        self.response_has_date = False
        self.response_started = True
        self._write_head_and(b"", more=False)

    # -- frames in -------------------------------------------------------------------

    def frames_received(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        events = ws.receive_data(data)
        if ws.output:
            self._write(bytes(ws.output))
            ws.output.clear()
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                inbox = self.inbox
                if inbox is None:
                    inbox = self.inbox = deque()
                inbox.append(event)
                self.inbox_size += _size(event)
            elif event is not PONG:
                self._peer_closed(event)
        self._wake()

    def _peer_closed(self, event: Closed) -> None:
        if self.closed_info is None:
            self.closed_info = event
        if event.fail:
            conn = self.conn
            conn.server.log.warning(
                "WebSocket protocol error from ip=%s: %s (close %d)",
                conn.client_ip,
                event.reason or "-",
                event.code,
            )
        # Whoever closed first, the close handshake is over (or failed).
        self.state = CLOSED
        self._ended()

    # -- frames out ------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        ws = self.ws
        assert ws is not None
        self.state = CLOSE_SENT
        if self.closed_info is None:
            # What receive() reports if the app asks after closing.
            self.closed_info = Closed(code, reason)
        if self.disconnected:
            return
        self._write(ws.send_close(code, reason))
        self._closing()

    def begin_drain(self) -> None:
        """Graceful stop: tell the client the server is going away; the
        app hears websocket.disconnect when the client answers."""
        if self.state == OPEN:
            self._close(1001, "server shutting down")

    def on_disconnect(self) -> None:
        if self.closed_info is None and self.state != CONNECTING:
            self.closed_info = Closed(1006, "")
        if self.state != DENIED:
            self.state = CLOSED
        super().on_disconnect()


def _size(message: str | bytes) -> int:
    """A received message's size in bytes, as BODY_BUFFER counts it: a
    text message is UTF-8 on the wire (``isascii`` is O(1) on CPython)."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


#: The fields of WebSocketProtocol, declared by each concrete class.
WS_SLOTS = ("closed_info", "connect_sent", "handshake", "inbox", "inbox_size", "state", "ws")


class WebSocketCycle(WebSocketProtocol):
    """A WebSocket over an HTTP/1.1 connection (the 101 handshake)."""

    __slots__ = WS_SLOTS

    def __init__(self, conn: HTTPConnection, request: Request, handshake: Handshake) -> None:
        super().__init__(conn, request)
        self._init_websocket(handshake)

    # -- the wire ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.conn.transport.write(data)

    def _write_accept(self, subprotocol: str | None, deflate: Any, headers: Headers) -> None:
        self.conn.transport.write(accept_response(self.handshake, subprotocol, deflate, headers))
        self.status = 101

    async def _send_wait(self) -> None:
        conn = self.conn
        if conn.write_paused:
            await conn.drain()
            self._arm_ping()

    def _opened(self) -> None:
        self.conn.switch_to_websocket(self)
        if self.state == OPEN:
            self._arm_ping()

    def _ended(self) -> None:
        # The server closes the TCP connection (RFC 6455 section 7.1.1).
        conn = self.conn
        conn.deadline_kind = NO_DEADLINE
        conn.transport.close()

    def _closing(self) -> None:
        conn = self.conn
        conn.set_deadline(CLOSING, conn.settings.extra.ws_close_timeout)
        conn.resume_reading()  # the reply must be read even if the app is behind

    def _taken(self) -> None:
        conn = self.conn
        if conn.read_paused and self.may_read():
            conn.resume_reading()

    # -- fed by the connection -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.frames_received(data)
        if self.state == OPEN:
            conn = self.conn
            if not self.may_read():
                conn.pause_reading()
            if conn.deadline_kind in (NO_DEADLINE, PING, PONG_DUE):
                self._arm_ping()

    def may_read(self) -> bool:
        """Read more: the app keeps up with the messages and the client
        with what the protocol owes it (pongs to its pings)."""
        return (
            self.inbox_size <= self.conn.settings.extra.body_buffer and not self.conn.write_paused
        )

    def writable(self) -> None:
        """The client read what was queued for it."""
        if self.state == OPEN:
            if self.may_read():
                self.conn.resume_reading()
            if self.conn.deadline_kind == NO_DEADLINE:
                self._arm_ping()

    def _arm_ping(self) -> None:
        # Only while open: after a close frame the connection's deadline
        # is the close reply's (CLOSING), and it must stay.
        interval = self.conn.settings.extra.ws_ping_interval
        if interval > 0 and self.state == OPEN:
            self.conn.set_deadline(PING, interval)

    def on_deadline(self, kind: int) -> None:
        conn = self.conn
        extra = conn.settings.extra
        if kind == PING and self.state == OPEN:
            assert self.ws is not None
            conn.transport.write(self.ws.send_ping(b"flask_async_worker"))
            conn.set_deadline(PONG_DUE, extra.ws_ping_timeout)
        elif kind == PONG_DUE:
            self._log_ping_timeout()
            self.closed_info = self.closed_info or Closed(1006, "ping timeout")
            conn.abort()
        elif kind == CLOSING:
            conn.server.log.debug("WebSocket close timeout from ip=%s", conn.client_ip)
            conn.transport.close()
