"""HTTP/2 (RFC 9113) on h2, reduced to the events the server acts on.

h2 does the framing, HPACK and the stream state machines.  This module adds
what decides whether a stream reaches the application:

- the field rules of RFC 9113 section 8.2/8.3 (checked in one pass in
  :meth:`H2Driver.build_request` instead of h2's much slower pipeline);
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
time in and writes :meth:`H2Driver.data_to_send` out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
from .events import Headers, Request
from .http11_rules import HOST, Limits

#: RFC 9113 section 3.4: what a prior-knowledge client sends first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TARGET_INVALID = bytes(range(0x21, 0x7F))  # deletechars: what remains is invalid
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Field names: lower-case tokens (RFC 9113 section 8.2.1 refuses upper case).
_NAME_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_OWS = (b" ", b"\t")
_CONNECTION_SPECIFIC, _TE, _HOST_FIELD, _EXPECT, _COOKIE = range(5)
_SPECIAL = {
    b"connection": _CONNECTION_SPECIFIC,
    b"keep-alive": _CONNECTION_SPECIFIC,
    b"proxy-connection": _CONNECTION_SPECIFIC,
    b"transfer-encoding": _CONNECTION_SPECIFIC,
    b"upgrade": _CONNECTION_SPECIFIC,
    b"te": _TE,
    b"host": _HOST_FIELD,
    b"expect": _EXPECT,
    b"cookie": _COOKIE,
}
_REMOTE_OPEN = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)


@dataclass(frozen=True, slots=True)
class H2Limits:
    """gunicorn's ``http2_*`` settings and the worker's flood bounds."""

    max_concurrent_streams: int = 100
    initial_window_size: int = 65535
    max_frame_size: int = 16384
    max_header_list_size: int = 65536
    #: What the connection window opens to: the request body bytes one
    #: connection may have buffered across all its streams.
    connection_window: int = 1024 * 1024
    #: Streams the client may reset (or have refused) per second.
    max_resets: int = 200
    #: PING/SETTINGS/PRIORITY/empty DATA/unknown frames per second.
    max_control_frames: int = 1000


class StreamRequest:
    """A request head arrived on a new stream."""

    __slots__ = ("ended", "request", "stream_id")

    def __init__(self, stream_id: int, request: Request, ended: bool) -> None:
        self.stream_id = stream_id
        self.request = request
        self.ended = ended


class StreamData:
    """Body bytes; ``flow`` is what to acknowledge once they are consumed."""

    __slots__ = ("data", "flow", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow = flow


class StreamEnd:
    """The client finished sending on this stream."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset:
    """The client reset this stream (or h2 did, for a stream-level error)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamRefused:
    """A request the server answers itself with ``status``; it never
    reaches the application."""

    __slots__ = ("detail", "status", "stream_id")

    def __init__(self, stream_id: int, status: int, detail: str) -> None:
        self.stream_id = stream_id
        self.status = status
        self.detail = detail


class WindowOpened:
    """Sending may go on: ``stream_id`` 0 means every stream."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class PeerGoAway:
    """The client announced it is done with the connection."""

    __slots__ = ("error_code",)

    def __init__(self, error_code: int) -> None:
        self.error_code = error_code


H2Event = (
    StreamRequest
    | StreamData
    | StreamEnd
    | StreamReset
    | StreamRefused
    | WindowOpened
    | PeerGoAway
)

_CONTROL_EVENTS = (
    h2.events.PingReceived,
    h2.events.PingAckReceived,
    h2.events.RemoteSettingsChanged,
    h2.events.SettingsAcknowledged,
    h2.events.PriorityUpdated,
    h2.events.UnknownFrameReceived,
)
# RFC 9113 section 8.2.2: meaningful only to the HTTP/1.1 hop; h2 refuses
# them inbound and outbound, so an application setting them (Werkzeug never
# does, a proxying view might) has them dropped rather than failing.
_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
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


class H2Driver:
    """One server-side HTTP/2 connection."""

    __slots__ = (
        "_admitted",
        "_control",
        "_goaway",
        "_goaway_sent",
        "_limits",
        "_period",
        "_resets",
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
        self._limits = limits
        self.header_limits = header_limits
        self._period = 0.0
        self._resets = 0
        self._control = 0
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
        # The connection window starts at 65,535 whatever SETTINGS say
        # (RFC 9113 section 6.9.2); opened wider, parallel uploads are not
        # throttled by one shared 64 KiB window, and it still bounds what
        # one connection buffers (streams times their window would not).
        limits = self._limits
        target = min(
            max(limits.connection_window, limits.initial_window_size),
            limits.initial_window_size * limits.max_concurrent_streams,
            2**31 - 1,
        )
        increment = target - self.conn.inbound_flow_control_window
        if increment > 0:
            self.conn.increment_flow_control_window(increment)

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[H2Event]:
        """The events in ``data``; raises :class:`ProtocolError` when the
        connection must end (a GOAWAY is then in :meth:`data_to_send`)."""
        if now - self._period >= 1.0:
            self._period = now
            self._resets = 0
            self._control = 0
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

    def _count_reset(self) -> None:
        self._resets += 1
        if self._resets > self._limits.max_resets:
            self._calm("too many streams reset")

    def _count_control(self) -> None:
        self._control += 1
        if self._control > self._limits.max_control_frames:
            self._calm("too many control frames")

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
            request = self.build_request(event.headers or [], ended)
        except ProtocolError as exc:
            out.append(StreamRefused(sid, exc.status, exc.detail))
            return
        out.append(StreamRequest(sid, request, ended))
        if ended:
            out.append(StreamEnd(sid))

    def build_request(self, raw: list[tuple[bytes, bytes]], ended: bool) -> Request:
        """The :class:`Request` of a decoded header block, or the refusal
        (:class:`ProtocolError` with its status) for a malformed one.

        RFC 9113 section 8.2/8.3 checked in one pass here rather than by h2's
        validation pipeline (a chain of generators and per-byte loops that
        cost more than the rest of the request): names lower-case tokens,
        values free of control bytes and surrounding whitespace, pseudo
        fields known, single and first, no connection-specific fields, Host
        agreeing with :authority, Cookie crumbs joined.  A malformed request
        is answered 400 on its stream (section 8.1.1 allows a response
        before the reset); the connection goes on.
        """
        limits = self.header_limits
        method = target = authority = scheme = b""
        protocol: bytes | None = None
        headers: Headers = []
        host: bytes | None = None
        cookies: list[bytes] | None = None
        expect = False
        regular = False
        max_field = limits.max_field_size
        for name, value in raw:
            if name[:1] == b":":
                if regular:
                    raise ProtocolError("pseudo-header field after a regular field")
                if name == b":method":
                    if method:
                        raise ProtocolError("repeated :method")
                    method = value
                elif name == b":path":
                    if target:
                        raise ProtocolError("repeated :path")
                    target = value
                elif name == b":scheme":
                    if scheme:
                        raise ProtocolError("repeated :scheme")
                    scheme = value
                elif name == b":authority":
                    if authority:
                        raise ProtocolError("repeated :authority")
                    authority = value
                elif name == b":protocol":
                    if protocol is not None:
                        raise ProtocolError("repeated :protocol")
                    protocol = value
                else:
                    raise ProtocolError("unknown pseudo-header field")
                continue
            regular = True
            if not name or name.translate(None, _NAME_CHARS):
                raise ProtocolError("invalid header field name")
            if value and (
                _BAD_VALUE.search(value) is not None or value[:1] in _OWS or value[-1:] in _OWS
            ):
                raise ProtocolError("invalid header field value")
            if max_field and len(name) + len(value) + 2 > max_field:
                raise ProtocolError("header field too large", 431)
            special = _SPECIAL.get(name)
            if special is not None:
                if special == _CONNECTION_SPECIFIC:
                    raise ProtocolError("connection-specific header field")
                if special == _TE:
                    if value != b"trailers":
                        raise ProtocolError("TE other than trailers")
                elif special == _HOST_FIELD:
                    if host is not None:
                        raise ProtocolError("more than one Host header")
                    host = value
                elif special == _EXPECT:
                    if value.lower() != b"100-continue":
                        raise ProtocolError("unsupported expectation", 417)
                    expect = True
                else:  # cookie: crumbs are joined (RFC 9113 section 8.2.3)
                    if cookies is None:
                        cookies = []
                    cookies.append(value)
                    continue
            headers.append((name, value))
        if cookies is not None:
            headers.append((b"cookie", b"; ".join(cookies)))
        if len(headers) > limits.max_fields:
            raise ProtocolError("too many header fields", 431)
        if protocol is not None:
            # RFC 8441 section 4: extended CONNECT, a WebSocket's only use.
            if method != b"CONNECT":
                raise ProtocolError(":protocol in a request other than CONNECT")
            if protocol.lower() != b"websocket":
                raise ProtocolError("extended CONNECT for another protocol than websocket", 501)
        elif method == b"CONNECT":
            raise ProtocolError("CONNECT is not supported", 501)
        if not method or not scheme or not target:
            raise ProtocolError("missing :method, :scheme or :path")
        if method.translate(None, _TOKEN_CHARS):
            raise ProtocolError("invalid method")
        if limits.max_request_line and len(target) + len(method) + 10 > limits.max_request_line:
            raise ProtocolError("request target too long", 414)
        if target.translate(None, _TARGET_INVALID):
            raise ProtocolError("invalid byte in request target")
        if target[:1] == b"/":
            path, _, query = target.partition(b"?")
        elif target == b"*" and method == b"OPTIONS":
            path, query = b"*", b""
        else:
            raise ProtocolError("invalid request target")
        if b"#" in path:
            path, query = path.partition(b"#")[0], b""
        elif b"#" in query:
            query = query.partition(b"#")[0]
        if authority:
            if host is not None and host != authority:
                raise ProtocolError(":authority and Host differ")
            if HOST.fullmatch(authority) is None:
                raise ProtocolError("invalid :authority")
            if host is None:
                # RFC 9113 section 8.3.1: :authority takes Host's place; WSGI
                # and most ASGI code look for Host.
                headers.insert(0, (b"host", authority))
        elif host is not None:
            if HOST.fullmatch(host) is None:
                raise ProtocolError("invalid Host header")
            authority = host
        else:
            raise ProtocolError("missing :authority and Host")
        return Request(
            method,
            target,
            path,
            query,
            authority,
            "2",
            headers,
            keep_alive=True,
            expect_continue=expect and not ended,
            has_body=not ended,
            upgrade=protocol is not None,
        )

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
