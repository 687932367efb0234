"""HTTP/2 connections: many requests at once on one transport.

An :class:`HTTPConnection` (server.py) that negotiates ``h2`` by ALPN, opens
with the prior-knowledge preface or upgrades from ``h2c`` hands its bytes to
an :class:`H2Session`; each stream is an :class:`H2Stream`, the HTTP/1.1
:class:`RequestCycle` with the wire calls replaced, so scope building, the
ASGI error handling, gunicorn's hooks and the access log are the same code
for both versions.

What differs is where the waits are.  On HTTP/1.1 the connection's single
deadline covers the one request; here streams wait independently, so the
body and send timeouts of a stream are timers of its own and the
connection's deadline guards only the connection (its preface, idle time
between streams, a client that reads nothing).  Response bodies go through
a per-stream outbox bounded by ``write_buffer``: ``send()`` returns while
the outbox is under the bound and waits (up to ``send_timeout``) for the
client's flow-control window to drain it otherwise.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes

from .protocols.errors import ProtocolError
from .protocols.events import Headers, Request
from .protocols.http2 import (
    H2Driver,
    PeerGoAway,
    StreamData,
    StreamEnd,
    StreamFault,
    StreamRefused,
    StreamRequest,
    StreamReset,
    WindowOpened,
)
from .protocols.websocket import Closed, Handshake, accepted_headers, parse_h2_handshake
from .server import (
    DRAIN,
    HEAD,
    KEEPALIVE,
    NO_DEADLINE,
    SEND,
    ClientDisconnected,
    RequestCycle,
)
from .server_ws import CLOSE_SENT, CLOSED, OPEN, WS_SLOTS, WebSocketProtocol

if TYPE_CHECKING:
    from .protocols.http2_h2lib import H2LibDriver
    from .server import HTTPConnection


class H2Session:
    """The HTTP/2 side of one connection: its streams and their sending."""

    __slots__ = ("conn", "draining", "driver", "fault_logged", "flush_due", "pending", "streams")

    def __init__(self, conn: HTTPConnection, driver: H2Driver | H2LibDriver) -> None:
        self.conn = conn
        self.driver = driver
        self.streams: dict[int, H2Stream] = {}
        # Streams with response bytes waiting for window or a writable
        # transport, in the order they started waiting.
        self.pending: dict[int, H2Stream] = {}
        self.draining = False
        self.flush_due = False
        # Stream-level faults are logged once per connection: each one a
        # client commits costs it only a frame, and its flood bound (h2_max_
        # resets) ends the connection, which is logged too.
        self.fault_logged = False

    # -- input -------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        self.driver.initiate()
        self.flush()
        if data:
            self.data_received(data)

    def start_upgraded(self, settings_header: bytes, request: Request) -> None:
        """Serve ``request`` (already read over HTTP/1.1) as stream 1."""
        self.driver.initiate_upgrade(settings_header)
        self.flush()
        self._start_stream(1, request)
        stream = self.streams.get(1)
        if stream is not None:
            stream.feed_end()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = self.driver.receive_data(data, conn.loop.time())
        except ProtocolError as exc:
            conn.server.log.warning("Invalid HTTP/2 from ip=%s: %s", conn.client_ip, exc.detail)
            self.flush()
            self.close()
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is StreamData:
                sid = event.stream_id  # type: ignore[union-attr]
                stream = streams.get(sid)
                if stream is None or stream.disconnected or stream.body_complete:
                    # Nobody will read it: hand the window straight back.
                    self.driver.acknowledge(sid, event.flow)  # type: ignore[union-attr]
                else:
                    stream.feed_flow(event.data, event.flow)  # type: ignore[union-attr]
            elif kind is StreamRequest:
                self._start_stream(event.stream_id, event.request)  # type: ignore[union-attr]
            elif kind is StreamEnd:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream.feed_end()
            elif kind is WindowOpened:
                sid = event.stream_id  # type: ignore[union-attr]
                if sid == 0:
                    for stream in list(self.pending.values()):
                        self.pump(stream)
                else:
                    stream = self.pending.get(sid)
                    if stream is not None:
                        self.pump(stream)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    self.forget(stream)
                    stream.on_disconnect()
            elif kind is StreamRefused:
                self._refuse(event)  # type: ignore[arg-type]
            elif kind is StreamFault:
                if not self.fault_logged:
                    self.fault_logged = True
                    conn.server.log.warning(
                        "Invalid HTTP/2 stream from ip=%s: %s; stream %d reset",
                        conn.client_ip,
                        event.detail,  # type: ignore[union-attr]
                        event.stream_id,  # type: ignore[union-attr]
                    )
            elif kind is PeerGoAway:
                self.draining = True
        self.flush()
        if self.draining and not streams:
            self.close()

    def _start_stream(self, sid: int, request: Request) -> None:
        conn = self.conn
        if self.draining:
            # After our GOAWAY: the client retries it on a new connection.
            self.driver.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        if conn.deadline_kind != SEND:
            # Idle or preface deadline over; a client that does not read
            # keeps its send deadline.
            conn.deadline_kind = NO_DEADLINE
        stream: H2Stream
        if request.upgrade:
            try:
                handshake = parse_h2_handshake(request)
            except ProtocolError as exc:
                conn.server.log.warning(
                    "Invalid request from ip=%s: %s", conn.client_ip, exc.detail
                )
                self.answer(sid, exc.status, exc.headers)
                return
            stream = H2WebSocket(self, sid, request, handshake)
        else:
            stream = H2Stream(self, sid, request)
        self.streams[sid] = stream
        conn.server.launch(stream)

    def _refuse(self, event: StreamRefused) -> None:
        conn = self.conn
        conn.server.log.warning("Invalid request from ip=%s: %s", conn.client_ip, event.detail)
        self.answer(event.stream_id, event.status)

    def answer(self, sid: int, status: int, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """The server's own short error response on one stream."""
        body = b"%d %s\n" % (status, ProtocolError("", status).reason.encode())
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"date", self.conn.server.date),
            *extra,
        ]
        driver = self.driver
        if driver.send_headers(sid, status, headers, end_stream=False):
            if driver.send_data(sid, memoryview(body), end_stream=True) != len(body):
                # No window for even this: the client learns by a reset.
                driver.reset(sid, ErrorCodes.REFUSED_STREAM)
            elif driver.remote_open(sid):
                driver.reset(sid, ErrorCodes.NO_ERROR)

    # -- output ------------------------------------------------------------------

    def flush(self) -> None:
        self.flush_due = False
        data = self.driver.data_to_send()
        if data:
            self.conn.transport.write(data)

    def flush_soon(self) -> None:
        """Write at the end of this loop iteration: the responses of the
        streams that finish together leave in one write, not one each."""
        if not self.flush_due:
            self.flush_due = True
            self.conn.loop.call_soon(self._flush_due)

    def _flush_due(self) -> None:
        if self.flush_due and not self.conn.transport.is_closing():
            self.flush()

    def pump(self, stream: H2Stream) -> None:
        """Send what the windows allow of the stream's outbox."""
        sid = stream.stream_id
        if self.conn.write_paused:
            self.pending[sid] = stream
            return
        out = stream.outbox
        if out or stream.out_end:
            view = memoryview(out)
            sent = self.driver.send_data(sid, view, stream.out_end)
            view.release()
            if sent < 0:
                self.forget(stream)
                stream.on_disconnect()
                return
            del out[:sent]
        if out:
            self.pending[sid] = stream
        else:
            self.pending.pop(sid, None)
        self.flush_soon()
        stream.wake_sender()
        if not out and stream.out_end and not stream.finished:
            stream.finish()

    def writable(self) -> None:
        """The transport drained: go on with streams that waited for it."""
        for stream in list(self.pending.values()):
            if self.conn.write_paused:
                break
            self.pump(stream)

    def stream_complete(self, stream: H2Stream) -> None:
        conn = self.conn
        sid = stream.stream_id
        self.streams.pop(sid, None)
        self.pending.pop(sid, None)
        server = conn.server
        stream.log_finished()
        driver = self.driver
        if driver.remote_open(sid):
            # RFC 9113 section 8.1: answered before the body was sent; tell
            # the client to stop sending it.
            driver.reset(sid, ErrorCodes.NO_ERROR)
            self.flush()
        if not server.alive:
            self.begin_drain()
        elif not self.streams:
            self.idle()

    def forget(self, stream: H2Stream) -> None:
        """A stream ended without completing (reset, timed out, failed):
        with none left the connection is idle, as after a completed one."""
        self.streams.pop(stream.stream_id, None)
        self.pending.pop(stream.stream_id, None)
        if not self.streams and self.conn.deadline_kind == NO_DEADLINE:
            if self.conn.server.alive:
                self.idle()
            else:
                self.begin_drain()

    def idle(self) -> None:
        conn = self.conn
        if self.draining:
            self.close()
        elif conn.settings.keepalive > 0:
            conn.set_deadline(KEEPALIVE, conn.settings.keepalive)
        else:
            self.begin_drain()

    # -- ending ------------------------------------------------------------------

    def begin_drain(self) -> None:
        """GOAWAY: streams already started finish, no new ones are taken."""
        if not self.draining:
            self.draining = True
            self.driver.goaway()
            self.flush()
            for stream in list(self.streams.values()):
                stream.begin_drain()
        if not self.streams:
            self.close()

    def on_deadline(self, kind: int) -> None:
        conn = self.conn
        if kind == HEAD:
            conn.server.log.debug("Closing HTTP/2 connection from %s: no request", conn.client_ip)
        if kind in (HEAD, KEEPALIVE, DRAIN):
            self.driver.goaway()
            self.flush()
            self.close()

    def close(self) -> None:
        self.draining = True
        self.flush()
        self.conn.transport.close()

    def connection_lost(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.pending.clear()
        for stream in streams:
            stream.on_disconnect()


class H2Stream(RequestCycle):
    """ASGI ``receive``/``send`` for one HTTP/2 stream."""

    __slots__ = (
        "continue_sent",
        "finished",
        "flow_unacked",
        "out_end",
        "outbox",
        "send_waiter",
        "session",
        "stream_id",
    )

    def __init__(self, session: H2Session, stream_id: int, request: Request) -> None:
        super().__init__(session.conn, request)
        self.session = session
        self.stream_id = stream_id
        self.outbox = bytearray()
        self.out_end = False
        self.flow_unacked = 0
        self.continue_sent = False
        self.send_waiter: asyncio.Future[None] | None = None
        # response_complete: the app sent its last body message;
        # finished: END_STREAM went out to the client.
        self.finished = False

    # -- fed by the session --------------------------------------------------------

    def feed_flow(self, data: bytes, flow: int) -> None:
        # No read pause: the stream's window (acknowledged as the app reads)
        # bounds what is buffered here.
        self.body.append(data)
        self.body_size += len(data)
        self.flow_unacked += flow
        self._wake()

    def feed_end(self) -> None:
        self.body_complete = True
        self._wake()

    def on_disconnect(self) -> None:
        super().on_disconnect()
        self.wake_sender()

    def begin_drain(self) -> None:
        """Graceful stop: a request stream finishes as it is."""

    def wake_sender(self) -> None:
        waiter = self.send_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- waits with their own timers -------------------------------------------------

    async def _wait_for(self, seconds: float, what: str) -> None:
        loop = self.conn.loop
        waiter = loop.create_future()
        if what == "body":
            self.waiter = waiter
        else:
            self.send_waiter = waiter
        timer = loop.call_later(seconds, self._expire, waiter, what)
        try:
            await waiter
        finally:
            timer.cancel()
            if what == "body":
                self.waiter = None
            else:
                self.send_waiter = None

    def _expire(self, waiter: asyncio.Future[None], what: str) -> None:
        if waiter.done() or self.disconnected:
            return
        conn = self.conn
        if what == "send" and conn.write_paused:
            # The socket stalls, not this stream's window: the connection's
            # send deadline (one warning, progress-checked) is in charge.
            waiter.set_result(None)
            return
        extra = conn.settings.extra
        if what == "body":
            conn.server.log.warning(
                "Request body timeout from ip=%s: nothing received for %ss",
                conn.client_ip,
                extra.body_timeout,
            )
        else:
            conn.server.log.warning(
                "Send timeout to ip=%s: client read nothing for %ss",
                conn.client_ip,
                extra.send_timeout,
            )
        session = self.session
        if what == "body" and not self.wrote_head:
            # As on HTTP/1.1, the 408 is the server's, not the app's: the
            # app hears a disconnect.
            session.answer(self.stream_id, 408)
        else:
            session.driver.reset(self.stream_id, ErrorCodes.CANCEL)
        session.flush()
        session.forget(self)
        self.on_disconnect()

    # -- ASGI --------------------------------------------------------------------------

    def _body_taken(self) -> None:
        # Re-open the stream's window by what the app took.
        if self.flow_unacked:
            session = self.session
            session.driver.acknowledge(self.stream_id, self.flow_unacked)
            self.flow_unacked = 0
            session.flush()

    async def _wait_for_body(self) -> None:
        if self.request.expect_continue and not self.continue_sent:
            self.continue_sent = True
            if not self.response_started:
                self._write_informational(100, [])
        await self._wait_for(self.conn.settings.extra.body_timeout, "body")

    def _write_informational(self, status: int, headers: Headers) -> None:
        self.session.driver.send_headers(self.stream_id, status, headers, end_stream=False)
        self.session.flush()

    async def _backpressure(self) -> None:
        """Backpressure: wait while more than ``write_buffer`` bytes wait
        for the client's window or the transport."""
        limit = self.conn.settings.extra.write_buffer
        while len(self.outbox) > limit:
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            await self._wait_for(self.conn.settings.extra.send_timeout, "send")
        if self.disconnected:
            raise ClientDisconnected("client disconnected")

    def _write_head_and(self, body: bytes, more: bool) -> None:
        session = self.session
        self._prepare_head(body, more)
        end = not more and (not self.sends_body or not body)
        if not session.driver.send_headers(
            self.stream_id, self.status, self.response_headers, end_stream=end
        ):
            session.forget(self)
            self.on_disconnect()
            return
        if end:
            self._app_done()
            session.flush_soon()
            self.finish()
            return
        self._write_body(body, more)

    def _write_body(self, body: bytes, more: bool) -> None:
        if body and self.sends_body:
            self.outbox += body
            self.bytes_sent += len(body)
        if not more:
            self._app_done()
        self.session.pump(self)

    def _app_done(self) -> None:
        # Complete for the app (receive() says disconnect, returning is
        # fine) even while the tail waits for the client's window.
        self.out_end = True
        self.response_complete = True
        self._wake()

    def finish(self) -> None:
        self.finished = True
        self.session.stream_complete(self)

    def _abandon(self) -> None:
        self.session.driver.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        self.session.flush()
        self.session.forget(self)

    def _fail(self, exc: BaseException | None) -> None:
        log = self.conn.server.log
        if exc is not None:
            log.error("Error handling request %s", self._describe(), exc_info=exc)
        if self.disconnected or self.response_complete:
            return
        if not self.response_started or not self.wrote_head:
            self.response_started = False
            self._send_500()
        else:
            # Headers are out: a reset tells the client the response is cut.
            self._abandon()


def make_session(conn: HTTPConnection) -> H2Session:
    settings = conn.settings
    if settings.extra.http2_engine == "h2":
        from .protocols.http2_h2lib import H2LibDriver

        return H2Session(conn, H2LibDriver(settings.h2, settings.limits))
    return H2Session(conn, H2Driver(settings.h2, settings.limits))


class H2WebSocket(WebSocketProtocol, H2Stream):
    """A WebSocket on an HTTP/2 stream: RFC 8441's extended CONNECT.

    The stream's DATA carries the WebSocket frames both ways.  The stream
    window bounds what the client sends ahead: it is re-opened as the app
    takes messages (up to the body buffer).  Pings run on a timer of the
    stream's own, since the connection's deadline is shared.
    """

    __slots__ = (*WS_SLOTS, "last_seen", "logged", "ping_sent", "timer")

    def __init__(
        self, session: H2Session, stream_id: int, request: Request, handshake: Handshake
    ) -> None:
        super().__init__(session, stream_id, request)
        self._init_websocket(handshake)
        self.logged = False
        self.last_seen = 0.0
        self.ping_sent = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def log_finished(self) -> None:
        # Once: when the stream completes in order, or when the app ends
        # after a reset or a dropped connection.
        if not self.logged:
            self.logged = True
            super().log_finished()

    # -- fed by the session --------------------------------------------------------

    def feed_flow(self, data: bytes, flow: int) -> None:
        self.flow_unacked += flow
        if self.ws is None:
            # Before the answer: held (the stream window bounds it).
            self.body.append(data)
            return
        self.last_seen = self.conn.loop.time()
        self.frames_received(data)
        self._taken()

    def feed_end(self) -> None:
        self.body_complete = True
        if self.ws is None:
            self.on_disconnect()  # the client gave up before the answer
        elif self.state in (OPEN, CLOSE_SENT):
            # The client ended its side without a close frame.
            self.closed_info = self.closed_info or Closed(1006, "")
            self.state = CLOSED
            self._ended()
        self._wake()

    # -- the wire ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.out_end:
            self.outbox += data
            self.session.pump(self)

    def _write_accept(self, subprotocol: str | None, deflate: Any, headers: Headers) -> None:
        own = accepted_headers(subprotocol, deflate) + headers
        own.append((b"date", self.conn.server.date))
        session = self.session
        self.status = 200
        if not session.driver.send_headers(self.stream_id, 200, own, end_stream=False):
            session.forget(self)
            self.on_disconnect()
            return
        session.flush_soon()

    async def _send_wait(self) -> None:
        await self._backpressure()

    def _opened(self) -> None:
        if self.body:
            early = b"".join(self.body)
            self.body.clear()
            self.frames_received(early)
            self._taken()
        if self.state == OPEN:
            self.last_seen = self.conn.loop.time()
            self._arm(self.conn.settings.extra.ws_ping_interval, self._ping_due)

    def _ended(self) -> None:
        self._cancel_timer()
        self.response_complete = True
        if not self.out_end:
            self.out_end = True
            self.session.pump(self)

    def _closing(self) -> None:
        self._arm(self.conn.settings.extra.ws_close_timeout, self._close_expired)

    def _taken(self) -> None:
        """Re-open the stream's window while the app keeps up with the
        messages and the client with what the protocol owes it (pongs wait
        in the outbox like any send): a client that pings but grants no
        window stalls at its own window instead of growing the outbox."""
        extra = self.conn.settings.extra
        if (
            self.flow_unacked
            and self.ws is not None
            and not self.disconnected
            and self.inbox_size <= extra.body_buffer
            and len(self.outbox) <= extra.write_buffer
        ):
            session = self.session
            session.driver.acknowledge(self.stream_id, self.flow_unacked)
            self.flow_unacked = 0
            session.flush_soon()

    def wake_sender(self) -> None:
        super().wake_sender()
        self._taken()  # the outbox drained: the window may re-open

    # -- timers --------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._cancel_timer()
        if seconds > 0:
            self.timer = self.conn.loop.call_later(seconds, callback)

    def _cancel_timer(self) -> None:
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None

    def _ping_due(self) -> None:
        self.timer = None
        if self.state != OPEN or self.disconnected:
            return
        loop = self.conn.loop
        extra = self.conn.settings.extra
        idle = loop.time() - self.last_seen
        if idle < extra.ws_ping_interval:
            self._arm(extra.ws_ping_interval - idle, self._ping_due)
            return
        assert self.ws is not None
        self.ping_sent = loop.time()
        self._write(self.ws.send_ping(b"flask_async_worker"))
        self._arm(extra.ws_ping_timeout, self._pong_due)

    def _pong_due(self) -> None:
        self.timer = None
        if self.disconnected or self.state == CLOSED:
            return
        extra = self.conn.settings.extra
        if self.last_seen >= self.ping_sent:
            self._arm(extra.ws_ping_interval, self._ping_due)
            return
        self._log_ping_timeout()
        self._drop(Closed(1006, "ping timeout"))

    def _close_expired(self) -> None:
        self.timer = None
        if not self.disconnected and self.state == CLOSE_SENT:
            self.conn.server.log.debug("WebSocket close timeout from ip=%s", self.conn.client_ip)
            self._drop(None)

    def _drop(self, closed: Closed | None) -> None:
        if closed is not None and self.closed_info is None:
            self.closed_info = closed
        session = self.session
        session.driver.reset(self.stream_id, ErrorCodes.CANCEL)
        session.flush()
        session.forget(self)
        self.on_disconnect()

    def on_disconnect(self) -> None:
        self._cancel_timer()
        super().on_disconnect()
