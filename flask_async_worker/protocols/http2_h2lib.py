"""HTTP/2 (RFC 9113) on h2, reduced to the events the server acts on.

The reference implementation beside :mod:`.http2`'s own frame layer
(``FLASK_ASYNC_WORKER_HTTP2_ENGINE=h2``): the same events, bounds and
refusals, with h2 doing the framing, HPACK and the stream state machines.
Slower per request, and kept so that the two can be run against the same
tests and a deployment can fall back to the well-worn library.  On top of
h2 this module adds:

- the field rules of RFC 9113 section 8.2/8.3 (:func:`.http2.build_request`
  instead of h2's much slower pipeline);
- gunicorn's request limits (field count, field size, request-line length)
  and the refusals the HTTP/1.1 drivers make (CONNECT, a target that is not
  origin-form ASCII), answered on the stream without touching the others;
- bounds on what a peer can make the server do for free: streams reset by
  the client (the "rapid reset" attack, CVE-2023-44487) and control frames
  (PING, SETTINGS, PRIORITY, empty DATA) are counted per second and the
  connection is ended with ENHANCE_YOUR_CALM past a limit;
- request bodies are acknowledged (the client's window re-opened) only when
  the application has taken them, so what one stream buffers is bounded by
  the initial window the server advertises.

No sockets and no clock of its own: the caller passes bytes and the current
time in and writes :meth:`H2LibDriver.data_to_send` out.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2.errors import ErrorCodes
from h2.stream import StreamState
from hyperframe.frame import GoAwayFrame

from .errors import ProtocolError
from .events import Headers
from .http2 import (
    _HOP_BY_HOP,
    FloodBounds,
    H2Event,
    H2Limits,
    PeerGoAway,
    StreamData,
    StreamEnd,
    StreamRefused,
    StreamRequest,
    StreamReset,
    WindowOpened,
    build_request,
)
from .http11_rules import Limits

_REMOTE_OPEN = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)
_CONTROL_EVENTS = (
    h2.events.PingReceived,
    h2.events.PingAckReceived,
    h2.events.RemoteSettingsChanged,
    h2.events.SettingsAcknowledged,
    h2.events.PriorityUpdated,
    h2.events.UnknownFrameReceived,
)


class _CompressionError(h2.exceptions.ProtocolError):
    """An undecodable header block (RFC 9113 section 4.3): the connection's
    HPACK state is lost, a connection error of type COMPRESSION_ERROR."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(hpack.Decoder):
    """hpack's decoder, whose failures h2 would report as PROTOCOL_ERROR."""

    def decode(self, data: bytes, raw: bool = False) -> Any:
        try:
            return super().decode(data, raw)
        except hpack.OversizedHeaderListError:
            raise  # h2 answers that one itself (a denial of service)
        except (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise _CompressionError(f"Error decoding header block: {exc}") from exc


class H2LibDriver(FloodBounds):
    """One server-side HTTP/2 connection, on h2."""

    __slots__ = (
        "_admitted",
        "_goaway",
        "_goaway_sent",
        "conn",
        "header_limits",
        "last_stream_id",
        "terminated",
    )

    def __init__(self, limits: H2Limits, header_limits: Limits) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # build_request checks and normalises in one pass (see there).
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.decoder = _Decoder()
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                # RFC 8441: WebSockets may open as extended CONNECT streams.
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        # h2 reads the frame size and header list bound from these, not
        # from the settings it announces.
        self.conn.max_inbound_frame_size = limits.max_frame_size
        self.conn.decoder.max_header_list_size = limits.max_header_list_size
        super().__init__(limits)
        self.header_limits = header_limits
        self._admitted = 0
        self.last_stream_id = 0
        self.terminated = False
        self._goaway = b""
        self._goaway_sent = False

    # -- set-up --------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the server preface (our SETTINGS)."""
        self.conn.initiate_connection()
        self._open_connection_window()
        self._lift_stream_limit()

    def _lift_stream_limit(self) -> None:
        # Announced as set, but h2 would end the whole connection for one
        # stream too many; _on_request refuses just that stream instead.
        codes = h2.settings.SettingCodes
        values = {codes(k): v for k, v in self.conn.local_settings.items()}
        values[codes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=values)

    def initiate_upgrade(self, settings_header: bytes) -> None:
        """Start after ``Upgrade: h2c``: stream 1 is the upgraded request,
        already complete on the client's side (RFC 7540 section 3.2)."""
        try:
            self.conn.initiate_upgrade_connection(settings_header)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            raise ProtocolError(f"invalid HTTP2-Settings header: {exc}") from None
        self._open_connection_window()
        self._lift_stream_limit()
        self.last_stream_id = 1

    def _open_connection_window(self) -> None:
        increment = self._limits.opened_connection_window() - self.conn.inbound_flow_control_window
        if increment > 0:
            self.conn.increment_flow_control_window(increment)

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[H2Event]:
        """The events in ``data``; raises :class:`ProtocolError` when the
        connection must end (a GOAWAY is then in :meth:`data_to_send`)."""
        self._new_second(now)
        # Streams open before this data; the ones it opens are admitted in
        # order, so the stream over the limit is refused, not an earlier one.
        self._admitted = self.conn.open_inbound_streams
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.terminated = True
            raise ProtocolError(f"HTTP/2 protocol error: {exc}") from None
        out: list[H2Event] = []
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self._on_request(event, out)  # type: ignore[arg-type]
            elif kind is h2.events.DataReceived:
                sid = event.stream_id  # type: ignore[attr-defined]
                data_ = event.data  # type: ignore[attr-defined]
                flow = event.flow_controlled_length  # type: ignore[attr-defined]
                if data_:
                    out.append(StreamData(sid, data_, flow))
                else:
                    if flow:
                        self.conn.acknowledge_received_data(flow, sid)
                    if not event.stream_ended:  # type: ignore[attr-defined]
                        self._count_control()
                if event.stream_ended is not None:  # type: ignore[attr-defined]
                    out.append(StreamEnd(sid))
            elif kind is h2.events.StreamEnded:
                # Reported with its DataReceived/RequestReceived above when it
                # came on one; alone only after trailers.
                pass
            elif kind is h2.events.TrailersReceived:
                if event.stream_ended is not None:  # type: ignore[attr-defined]
                    out.append(StreamEnd(event.stream_id))  # type: ignore[attr-defined]
            elif kind is h2.events.WindowUpdated:
                out.append(WindowOpened(event.stream_id or 0))  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                out.append(StreamReset(event.stream_id))  # type: ignore[attr-defined]
                self._count_reset()
            elif kind is h2.events.ConnectionTerminated:
                self.terminated = True
                out.append(PeerGoAway(event.error_code or 0))  # type: ignore[attr-defined]
            elif kind is h2.events.RemoteSettingsChanged:
                # A larger initial window opens every stream.
                out.append(WindowOpened(0))
                self._count_control()
            elif isinstance(event, _CONTROL_EVENTS):
                self._count_control()
        return out

    def _calm(self, why: str) -> None:
        self.terminated = True
        self.conn.close_connection(
            ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self.last_stream_id
        )
        raise ProtocolError(f"HTTP/2 flood: {why}", 0)

    def _on_request(self, event: h2.events.RequestReceived, out: list[H2Event]) -> None:
        sid = event.stream_id
        assert sid is not None
        self.last_stream_id = max(self.last_stream_id, sid)
        ended = event.stream_ended is not None
        if self._admitted >= self._limits.max_concurrent_streams:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            self._count_reset()
            return
        self._admitted += 1
        try:
            request = build_request(event.headers or [], ended, self.header_limits)
        except ProtocolError as exc:
            out.append(StreamRefused(sid, exc.status, exc.detail))
            return
        out.append(StreamRequest(sid, request, ended))
        if ended:
            out.append(StreamEnd(sid))

    # -- flow control and sending ----------------------------------------------

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application took ``size`` flow-controlled bytes of the body."""
        if size:
            self.conn.acknowledge_received_data(size, stream_id)

    def window(self, stream_id: int) -> int:
        """How many body bytes may be sent on the stream now."""
        stream = self.conn.streams.get(stream_id)
        if stream is None or stream.closed:
            return -1
        return self.conn.local_flow_control_window(stream_id)

    def send_headers(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool
    ) -> bool:
        """False when the stream is gone (the client reset it)."""
        block = [(b":status", b"%d" % status)]
        block.extend(h for h in headers if h[0] not in _HOP_BY_HOP)
        try:
            self.conn.send_headers(stream_id, block, end_stream=end_stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return False
        return True

    def send_data(self, stream_id: int, data: memoryview, end_stream: bool) -> int:
        """Send what the windows allow of ``data`` (END_STREAM with its last
        byte when ``end_stream``); the bytes sent, or -1 if the stream is gone."""
        conn = self.conn
        try:
            window = conn.local_flow_control_window(stream_id)
            frame = conn.max_outbound_frame_size
            sent = 0
            total = len(data)
            while sent < total and window > 0:
                size = min(window, frame, total - sent)
                last = end_stream and sent + size == total
                conn.send_data(stream_id, data[sent : sent + size].tobytes(), end_stream=last)
                sent += size
                window -= size
            if end_stream and total == 0:
                conn.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return -1
        return sent

    def reset(self, stream_id: int, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        try:
            self.conn.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            pass
        except h2.exceptions.ProtocolError:
            pass

    def remote_open(self, stream_id: int) -> bool:
        """The client may still send on the stream (its body is unread)."""
        stream = self.conn.streams.get(stream_id)
        return stream is not None and stream.state_machine.state in _REMOTE_OPEN

    def goaway(self) -> None:
        """No new streams past the last one seen (RFC 9113 section 6.8),
        while those already started carry on.

        Written as a bare frame: h2's ``close_connection`` also closes its
        state machine, after which the streams in flight could not answer.
        """
        if self.terminated or self._goaway:
            return
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._goaway = frame.serialize()

    def data_to_send(self) -> bytes:
        data = self.conn.data_to_send()
        if self._goaway and not self._goaway_sent:
            self._goaway_sent = True
            data += self._goaway
        return data
