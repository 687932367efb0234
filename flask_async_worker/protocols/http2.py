"""HTTP/2 (RFC 9113): the server side of the protocol, sans-IO.

The worker's own frame layer, with hpack for header compression.  It was
written because h2's general-purpose machinery (an event object, a state
machine transition and a validation pass per frame, hyperframe objects for
every frame in and out) cost more per request than the application did:
measured in process, 35 µs to take in and 29 µs to answer one small
request, against ~8 µs here (``bench/h2_micro.py``).  The h2-based driver
stays as the reference implementation (``FLASK_ASYNC_WORKER_HTTP2_ENGINE=h2``,
:mod:`.http2_h2lib`); both pass the same protocol and hostile-client tests.

What the module decides:

- framing, the stream states and flow control of RFC 9113, and the frame
  and stream errors it prescribes (connection errors end with GOAWAY and
  :class:`ProtocolError`; stream errors reset only their stream);
- the field rules of RFC 9113 section 8.2/8.3 (:func:`build_request`, one
  pass), gunicorn's request limits and the refusals the HTTP/1.1 drivers
  make (CONNECT, a target that is not origin-form ASCII), answered on the
  stream without touching the others;
- bounds on what a peer can make the server do for free: streams reset by
  the client (the "rapid reset" attack, CVE-2023-44487) and control frames
  (PING, SETTINGS, PRIORITY, empty DATA, unknown frames) are counted per
  second and the connection is ended with ENHANCE_YOUR_CALM past a limit;
  a header block is bounded in size and in CONTINUATION frames; what is
  buffered of a partial frame is bounded by the frame size announced;
- request bodies are acknowledged (the client's window re-opened) only when
  the application has taken them, so what one stream buffers is bounded by
  the initial window the server advertises.

No sockets and no clock of its own: the caller passes bytes and the current
time in and writes :meth:`H2Driver.data_to_send` out.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass
from typing import cast

import hpack
from h2.errors import ErrorCodes

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
_CONNECTION_SPECIFIC, _TE, _HOST_FIELD, _EXPECT, _COOKIE, _CONTENT_LENGTH = range(6)
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
    b"content-length": _CONTENT_LENGTH,
}


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

    def opened_connection_window(self) -> int:
        """What the server opens the connection window to.

        It starts at 65,535 whatever SETTINGS say (RFC 9113 section 6.9.2);
        opened wider, parallel uploads are not throttled by one shared
        64 KiB window, and it still bounds what one connection buffers
        (streams times their window would not)."""
        return min(
            max(self.connection_window, self.initial_window_size),
            self.initial_window_size * self.max_concurrent_streams,
            _MAX_WINDOW,
        )


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


class StreamFault:
    """The client broke a stream-level rule; the stream was reset."""

    __slots__ = ("detail", "stream_id")

    def __init__(self, stream_id: int, detail: str) -> None:
        self.stream_id = stream_id
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
    | StreamFault
    | WindowOpened
    | PeerGoAway
)

# RFC 9113 section 8.2.2: meaningful only to the HTTP/1.1 hop; they are
# refused inbound, so an application setting them (Werkzeug never
# does, a proxying view might) has them dropped rather than failing.
_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


def build_request(raw: list[tuple[bytes, bytes]], ended: bool, limits: Limits) -> Request:
    """The :class:`Request` of a decoded header block, or the refusal
    (:class:`ProtocolError` with its status) for a malformed one.

    RFC 9113 section 8.2/8.3 checked in one pass (h2's validation
    pipeline, a chain of generators and per-byte loops, cost more than the
    rest of the request): names lower-case tokens, values free of control
    bytes and surrounding whitespace, pseudo fields known, single and
    first, no connection-specific fields, Host agreeing with :authority,
    Cookie crumbs joined.  A malformed request
    is answered 400 on its stream (section 8.1.1 allows a response
    before the reset); the connection goes on.
    """
    method = target = authority = scheme = b""
    protocol: bytes | None = None
    headers: Headers = []
    host: bytes | None = None
    cookies: list[bytes] | None = None
    length: bytes | None = None
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
            elif special == _CONTENT_LENGTH:
                if not value.isdigit() or (length is not None and value != length):
                    raise ProtocolError("invalid Content-Length")
                length = value
            elif special == _EXPECT:
                if value.lower() != b"100-continue":
                    raise ProtocolError("unsupported expectation", 417)
                expect = True
            elif special == _COOKIE:  # crumbs are joined (RFC 9113 section 8.2.3)
                if cookies is None:
                    cookies = []
                cookies.append(value)
                continue
        headers.append((name, value))
    if cookies is not None:
        headers.append((b"cookie", b"; ".join(cookies)))
    if ended and length is not None and int(length):
        # RFC 9113 section 8.1.1: the body (none) must match it.
        raise ProtocolError("Content-Length on a request without a body")
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


# Frame types (RFC 9113 section 6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Settings identifiers (RFC 9113 section 6.5.2, RFC 8441 section 3).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, ENABLE_CONNECT_PROTOCOL = 5, 6, 8

_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream
_U32 = struct.Struct(">L")
_U32X2 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_DEFAULT_FRAME = 16384
#: CONTINUATION frames one header block may take (a client needs one or two).
MAX_CONTINUATIONS = 64
#: Streams remembered after they close, to answer late frames as RFC 9113
#: section 5.1 says for how each one closed.
_RECENT = 128
#: How a remembered stream closed: both sides ended it; the server reset it
#: (frames the client sent meanwhile are ignored); the client reset it.
_ENDED, _RESET_BY_SERVER, _RESET_BY_CLIENT = range(3)


class FloodBounds:
    """What a client may make the server do for free, counted per second
    (both engines): streams reset or refused, and control frames.  Past a
    bound the driver's ``_calm`` ends the connection (ENHANCE_YOUR_CALM)."""

    __slots__ = ("_control", "_limits", "_period", "_resets")

    def __init__(self, limits: H2Limits) -> None:
        self._limits = limits
        self._period = 0.0
        self._resets = 0
        self._control = 0

    def _new_second(self, now: float) -> None:
        if now - self._period >= 1.0:
            self._period = now
            self._resets = 0
            self._control = 0

    def _count_reset(self) -> None:
        self._resets += 1
        if self._resets > self._limits.max_resets:
            self._calm("too many streams reset")

    def _count_control(self) -> None:
        self._control += 1
        if self._control > self._limits.max_control_frames:
            self._calm("too many control frames")

    def _calm(self, why: str) -> None:
        raise NotImplementedError


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


class _ConnectionError(Exception):
    """A connection error (RFC 9113 section 5.4.1): GOAWAY, then close."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _HeaderBlock:
    """A header block still arriving in CONTINUATION frames."""

    __slots__ = ("continuations", "ended", "fragments", "itself", "stream_id")

    def __init__(self, stream_id: int, ended: bool, itself: bool, fragment: bytes) -> None:
        self.stream_id = stream_id
        self.ended = ended  # the HEADERS frame carried END_STREAM
        self.itself = itself  # ... and a priority on the stream itself
        self.fragments = bytearray(fragment)
        self.continuations = 0


class _Stream:
    """What the driver tracks of one open (or half-closed) stream."""

    __slots__ = (
        "body_left",
        "local_closed",
        "pending_ack",
        "recv_window",
        "remote_closed",
        "send_window",
        "stream_id",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.pending_ack = 0
        self.remote_closed = False
        self.local_closed = False
        # Body bytes still due by the request's Content-Length (-1: unknown).
        self.body_left = -1


class H2Driver(FloodBounds):
    """One server-side HTTP/2 connection."""

    __slots__ = (
        "_block",
        "_buffer",
        "_conn_pending",
        "_conn_threshold",
        "_decoder",
        "_encoder",
        "_goaway_sent",
        "_local_acked",
        "_out",
        "_peer_frame",
        "_peer_window",
        "_preface",
        "_recent",
        "_recv_window",
        "_send_window",
        "_settings_seen",
        "header_limits",
        "last_stream_id",
        "streams",
        "terminated",
    )

    def __init__(self, limits: H2Limits, header_limits: Limits) -> None:
        super().__init__(limits)
        self.header_limits = header_limits
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder(max_header_list_size=limits.max_header_list_size)
        self._out = bytearray()
        self._buffer = b""
        self._preface = True
        self._settings_seen = False
        self._local_acked = False
        # The open streams, by id; closed ones are dropped at once and
        # remembered in _recent (id -> how it closed).
        self.streams: dict[int, _Stream] = {}
        self._recent: dict[int, int] = {}
        self._block: _HeaderBlock | None = None
        # The client's settings that shape what the server sends.
        self._peer_window = _DEFAULT_WINDOW
        self._peer_frame = _DEFAULT_FRAME
        # Connection windows: what the server may send, what the client may.
        self._send_window = _DEFAULT_WINDOW
        self._recv_window = _DEFAULT_WINDOW
        self._conn_pending = 0
        self._conn_threshold = _DEFAULT_WINDOW // 2
        self.last_stream_id = 0
        self.terminated = False
        self._goaway_sent = False

    # -- set-up --------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the server preface (our SETTINGS) and open the connection
        window."""
        limits = self._limits
        payload = b"".join(
            _SETTING.pack(code, value)
            for code, value in (
                (MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                (INITIAL_WINDOW_SIZE, limits.initial_window_size),
                (MAX_FRAME_SIZE, limits.max_frame_size),
                (MAX_HEADER_LIST_SIZE, limits.max_header_list_size),
                # RFC 8441: WebSockets may open as extended CONNECT streams.
                (ENABLE_CONNECT_PROTOCOL, 1),
            )
        )
        self._out += _frame(SETTINGS, 0, 0, payload)
        target = limits.opened_connection_window()
        if target > self._recv_window:
            self._out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(target - self._recv_window))
            self._recv_window = target
        self._conn_threshold = target // 2

    def initiate_upgrade(self, settings_header: bytes) -> None:
        """Start after ``Upgrade: h2c``: stream 1 is the upgraded request,
        already complete on the client's side (RFC 7540 section 3.2).  The
        HTTP2-Settings header stands for the client's first SETTINGS frame,
        which is not acknowledged."""
        try:
            payload = base64.urlsafe_b64decode(
                settings_header + b"=" * (-len(settings_header) % 4)
            )
            self._apply_settings(payload)
        except (binascii.Error, ValueError, _ConnectionError) as exc:
            raise ProtocolError(f"invalid HTTP2-Settings header: {exc}") from None
        self.initiate()
        stream = self._open(1)
        stream.remote_closed = True
        self.last_stream_id = 1

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[H2Event]:
        """The events in ``data``; raises :class:`ProtocolError` when the
        connection must end (a GOAWAY is then in :meth:`data_to_send`)."""
        if self.terminated:
            return []
        self._new_second(now)
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        out: list[H2Event] = []
        try:
            self._receive(data, out)
        except _ConnectionError as exc:
            self._fail(exc.code)
            raise ProtocolError(f"HTTP/2 protocol error: {exc.detail}") from None
        return out

    def _fail(self, code: int) -> None:
        self.terminated = True
        self._out += _frame(GOAWAY, 0, 0, _U32X2.pack(self.last_stream_id, code))

    def _receive(self, data: bytes, out: list[H2Event]) -> None:
        pos = 0
        if self._preface:
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid connection preface")
                self._buffer = data
                return
            if not data.startswith(PREFACE):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid connection preface")
            self._preface = False
            pos = len(PREFACE)
        end = len(data)
        max_frame = self._limits.max_frame_size
        unpack = _HEAD.unpack_from
        while end - pos >= 9:
            high, low, kind, flags, sid = unpack(data, pos)
            length = high << 16 | low
            if length > max_frame:
                raise _ConnectionError(
                    ErrorCodes.FRAME_SIZE_ERROR, f"frame of {length} bytes over {max_frame}"
                )
            if end - pos - 9 < length:
                break
            start = pos + 9
            pos = start + length
            sid &= 0x7FFFFFFF
            if not self._settings_seen:
                # RFC 9113 section 3.4: the client's preface ends with SETTINGS.
                if kind != SETTINGS or flags & ACK:
                    raise _ConnectionError(
                        ErrorCodes.PROTOCOL_ERROR, "the client preface must end with SETTINGS"
                    )
                self._settings_seen = True
            if self._block is not None:
                self._continuation(kind, flags, sid, data[start:pos], out)
            elif kind == HEADERS:
                self._headers(flags, sid, data[start:pos], out)
            elif kind == DATA:
                self._data(flags, sid, data[start:pos], out)
            elif kind == WINDOW_UPDATE:
                self._window_update(sid, data[start:pos], out)
            elif kind == RST_STREAM:
                self._rst_stream(sid, data[start:pos], out)
            elif kind == SETTINGS:
                self._settings(flags, sid, data[start:pos], out)
            elif kind == PING:
                self._ping(flags, sid, data[start:pos])
            elif kind == PRIORITY:
                self._priority(sid, data[start:pos])
            elif kind == GOAWAY:
                self._goaway(sid, data[start:pos], out)
            elif kind == CONTINUATION:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            elif kind == PUSH_PROMISE:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            else:
                # Unknown frame types are ignored (RFC 9113 section 4.1),
                # but not for free.
                self._count_control()
        if pos < end:
            self._buffer = data[pos:]

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "padding exceeds the frame")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _headers(self, flags: int, sid: int, payload: bytes, out: list[H2Event]) -> None:
        if sid == 0 or not sid & 1:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"invalid stream ID {sid}")
        block = self._unpad(flags, payload)
        itself = False
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS priority truncated")
            itself = _U32.unpack_from(block)[0] & 0x7FFFFFFF == sid
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(sid, bool(flags & END_STREAM), itself, block, out)
        else:
            if len(block) > self._limits.max_header_list_size:
                raise self._oversized()
            self._block = _HeaderBlock(sid, bool(flags & END_STREAM), itself, block)

    def _continuation(
        self, kind: int, flags: int, sid: int, payload: bytes, out: list[H2Event]
    ) -> None:
        block = self._block
        assert block is not None
        if kind != CONTINUATION or sid != block.stream_id:
            raise _ConnectionError(
                ErrorCodes.PROTOCOL_ERROR, "header block interrupted by another frame"
            )
        block.continuations += 1
        if block.continuations > MAX_CONTINUATIONS:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "Too many continuation frames")
        block.fragments += payload
        if len(block.fragments) > self._limits.max_header_list_size:
            raise self._oversized()
        if flags & END_HEADERS:
            self._block = None
            self._header_block(sid, block.ended, block.itself, bytes(block.fragments), out)

    def _oversized(self) -> _ConnectionError:
        return _ConnectionError(
            ErrorCodes.ENHANCE_YOUR_CALM,
            f"Oversized header block (over {self._limits.max_header_list_size} bytes)",
        )

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        except hpack.OversizedHeaderListError:
            raise self._oversized() from None
        except (hpack.HPACKError, IndexError, TypeError, ValueError, UnicodeDecodeError) as exc:
            # RFC 9113 section 4.3: the connection's HPACK state is lost.
            raise _ConnectionError(
                ErrorCodes.COMPRESSION_ERROR, f"Error decoding header block: {exc}"
            ) from None

    def _header_block(
        self, sid: int, ended: bool, itself: bool, block: bytes, out: list[H2Event]
    ) -> None:
        # Decoded whatever becomes of the stream: the HPACK state must stay
        # in step with the client's (RFC 9113 section 4.3).
        fields = self._decode(block)
        stream = self.streams.get(sid)
        if stream is not None:
            # Trailers (RFC 9113 section 8.1): they must end the stream and
            # carry no pseudo-header fields.
            if stream.remote_closed:
                self._stream_error(
                    sid, ErrorCodes.STREAM_CLOSED, out, "HEADERS after the client ended the stream"
                )
            elif (
                not ended
                or itself
                or stream.body_left > 0
                or any(name[:1] == b":" for name, _ in fields)
            ):
                # Malformed (sections 8.1, 8.1.1, 5.3.1 of RFC 7540): a body
                # short of its Content-Length, a stream depending on itself.
                self._stream_error(
                    sid, ErrorCodes.PROTOCOL_ERROR, out, "malformed trailers or body"
                )
            else:
                self._remote_end(stream, out)
            return
        if sid <= self.last_stream_id:
            recent = self._recent.get(sid)
            if recent == _RESET_BY_SERVER:
                return  # in flight when the server reset it
            if recent == _RESET_BY_CLIENT:
                self._stream_error(
                    sid, ErrorCodes.STREAM_CLOSED, out, "HEADERS after the client reset the stream"
                )
                return
            if recent is None:
                raise _ConnectionError(
                    ErrorCodes.PROTOCOL_ERROR, f"stream ID {sid} lower than one already used"
                )
            raise _ConnectionError(ErrorCodes.STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        self.last_stream_id = sid
        if itself:
            # RFC 7540 section 5.3.1 (kept by RFC 9113 section 5.3.2): a
            # stream cannot depend on itself.
            self._stream_error(sid, ErrorCodes.PROTOCOL_ERROR, out, "stream depends on itself")
            return
        stream = self._open(sid)
        if len(self.streams) > self._limits.max_concurrent_streams:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            self._count_reset()
            return
        try:
            request = build_request(fields, ended, self.header_limits)
        except ProtocolError as exc:
            if ended:
                stream.remote_closed = True
            out.append(StreamRefused(sid, exc.status, exc.detail))
            return
        if request.has_body:
            for name, value in request.headers:
                if name == b"content-length":
                    stream.body_left = int(value) if value.isdigit() else -1
                    break
        out.append(StreamRequest(sid, request, ended))
        if ended:
            self._remote_end(stream, out)

    def _open(self, sid: int) -> _Stream:
        recv = self._limits.initial_window_size if self._local_acked else _DEFAULT_WINDOW
        stream = self.streams[sid] = _Stream(sid, self._peer_window, recv)
        return stream

    def _remote_end(self, stream: _Stream, out: list[H2Event]) -> None:
        stream.remote_closed = True
        out.append(StreamEnd(stream.stream_id))
        if stream.local_closed:
            self._close(stream.stream_id, _ENDED)

    def _close(self, sid: int, how: int) -> None:
        self.streams.pop(sid, None)
        recent = self._recent
        recent[sid] = how
        if len(recent) > _RECENT:
            del recent[next(iter(recent))]

    def _data(self, flags: int, sid: int, payload: bytes, out: list[H2Event]) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        self._recv_window -= flow
        if self._recv_window < 0:
            raise _ConnectionError(
                ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the connection window"
            )
        data = self._unpad(flags, payload)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            recent = self._recent.get(sid)
            if stream is not None or recent == _RESET_BY_CLIENT:
                # Half-closed (remote), or reset by the client (RFC 9113
                # sections 5.1 and 6.1).
                self._stream_error(
                    sid,
                    ErrorCodes.STREAM_CLOSED,
                    out,
                    "DATA after the client ended or reset the stream",
                )
            elif sid > self.last_stream_id:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            elif recent == _ENDED:
                # After the client's own END_STREAM: a connection error.
                raise _ConnectionError(ErrorCodes.STREAM_CLOSED, f"DATA on closed stream {sid}")
            elif recent is None:
                self._stream_error(sid, ErrorCodes.STREAM_CLOSED, out, "DATA on a closed stream")
            # Nobody reads it: the connection window is handed back.
            self.acknowledge(sid, flow)
            return
        stream.recv_window -= flow
        fault = ""
        if stream.recv_window < 0:
            fault = "DATA beyond the stream window"
        elif stream.body_left >= 0:
            stream.body_left -= len(data)
            if stream.body_left < 0 or (flags & END_STREAM and stream.body_left):
                # RFC 9113 section 8.1.1: a body that disagrees with its
                # Content-Length makes the request malformed.
                fault = "body disagrees with Content-Length"
        if fault:
            code = (
                ErrorCodes.FLOW_CONTROL_ERROR
                if stream.recv_window < 0
                else ErrorCodes.PROTOCOL_ERROR
            )
            self._stream_error(sid, code, out, fault)
            # The stream is gone: only the connection window is handed back.
            self.acknowledge(sid, flow)
            return
        if data:
            out.append(StreamData(sid, data, flow))
        else:
            if flow:
                self.acknowledge(sid, flow)
            if not flags & END_STREAM:
                self._count_control()
        if flags & END_STREAM:
            self._remote_end(stream, out)

    def _window_update(self, sid: int, payload: bytes, out: list[H2Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE of wrong size")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ConnectionError(
                    ErrorCodes.FLOW_CONTROL_ERROR, "connection window over 2^31-1"
                )
            out.append(WindowOpened(0))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_stream_id:
                raise _ConnectionError(
                    ErrorCodes.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}"
                )
            return  # a stream that closed meanwhile
        if not increment:
            self._stream_error(sid, ErrorCodes.PROTOCOL_ERROR, out, "WINDOW_UPDATE of 0")
            return
        stream.send_window += increment
        if stream.send_window > _MAX_WINDOW:
            self._stream_error(
                sid, ErrorCodes.FLOW_CONTROL_ERROR, out, "stream window over 2^31-1"
            )
            return
        out.append(WindowOpened(sid))

    def _rst_stream(self, sid: int, payload: bytes, out: list[H2Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM of wrong size")
        if sid == 0 or sid > self.last_stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        if sid in self.streams:
            self._close(sid, _RESET_BY_CLIENT)
            out.append(StreamReset(sid))
            self._count_reset()

    def _settings(self, flags: int, sid: int, payload: bytes, out: list[H2Event]) -> None:
        if sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
        self._count_control()
        if flags & ACK:
            if payload:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if not self._local_acked:
                self._local_acked = True
                # Our initial window now holds for the streams already open.
                delta = self._limits.initial_window_size - _DEFAULT_WINDOW
                if delta:
                    for stream in self.streams.values():
                        stream.recv_window += delta
            return
        self._apply_settings(payload)
        self._out += _frame(SETTINGS, ACK, 0)
        out.append(WindowOpened(0))

    def _apply_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS of wrong size")
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(
                        ErrorCodes.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1"
                    )
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > _MAX_WINDOW:
                        raise _ConnectionError(
                            ErrorCodes.FLOW_CONTROL_ERROR, "a stream window over 2^31-1"
                        )
            elif code == MAX_FRAME_SIZE:
                if not _DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(
                        ErrorCodes.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"
                    )
                self._peer_frame = value
            elif code == HEADER_TABLE_SIZE:
                self._encoder.header_table_size = min(value, 65536)
            elif code in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL) and value > 1:
                raise _ConnectionError(
                    ErrorCodes.PROTOCOL_ERROR, f"setting {code} other than 0 or 1"
                )
            # Others (and unknown ones, RFC 9113 section 6.5.2) need nothing.

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "PING of wrong size")
        self._count_control()
        if not flags & ACK:
            self._out += _frame(PING, ACK, 0, payload)

    def _priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "PRIORITY of wrong size")
        self._count_control()
        # Priorities are advisory (RFC 9113 section 5.3); the server sends
        # in the order responses are ready.

    def _goaway(self, sid: int, payload: bytes, out: list[H2Event]) -> None:
        if sid:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY too short")
        code = _U32X2.unpack_from(payload)[1]
        out.append(PeerGoAway(code))

    def _stream_error(self, sid: int, code: int, out: list[H2Event], detail: str) -> None:
        """Reset one stream (RFC 9113 section 5.4.2); the server forgets
        it.  Counted with the client's resets: each costs the server a frame."""
        known = sid in self.streams
        self._out += _frame(RST_STREAM, 0, sid, _U32.pack(code))
        self._close(sid, _RESET_BY_SERVER)
        if known:
            out.append(StreamReset(sid))
        out.append(StreamFault(sid, detail))
        self._count_reset()

    def _calm(self, why: str) -> None:
        self._fail(ErrorCodes.ENHANCE_YOUR_CALM)
        raise ProtocolError(f"HTTP/2 flood: {why}", 0)

    # -- flow control and sending ----------------------------------------------

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application took ``size`` flow-controlled bytes of the body.

        Windows re-open in steps of half their size, not per frame: fewer
        WINDOW_UPDATE frames, and the client never waits while the
        application keeps reading."""
        if size <= 0:
            return
        out = self._out
        pending = self._conn_pending + size
        if pending >= self._conn_threshold:
            out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(pending))
            self._recv_window += pending
            pending = 0
        self._conn_pending = pending
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_closed:
            pending = stream.pending_ack + size
            if pending >= self._limits.initial_window_size // 2:
                out += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(pending))
                stream.recv_window += pending
                pending = 0
            stream.pending_ack = pending

    def window(self, stream_id: int) -> int:
        """How many body bytes may be sent on the stream now."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return -1
        return min(self._send_window, stream.send_window)

    def send_headers(
        self, stream_id: int, status: int, headers: Headers, end_stream: bool
    ) -> bool:
        """False when the stream is gone (the client reset it)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return False
        block = [(b":status", b"%d" % status)]
        block.extend(h for h in headers if h[0] not in _HOP_BY_HOP)
        encoded = self._encoder.encode(block)
        flags = END_STREAM if end_stream else 0
        limit = self._peer_frame
        out = self._out
        if len(encoded) <= limit:
            out += _frame(HEADERS, flags | END_HEADERS, stream_id, encoded)
        else:
            view = memoryview(encoded)
            out += _frame(HEADERS, flags, stream_id, bytes(view[:limit]))
            for offset in range(limit, len(encoded), limit):
                last = offset + limit >= len(encoded)
                piece = bytes(view[offset : offset + limit])
                out += _frame(CONTINUATION, END_HEADERS if last else 0, stream_id, piece)
        if end_stream:
            self._local_end(stream)
        return True

    def _local_end(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._close(stream.stream_id, _ENDED)

    def send_data(self, stream_id: int, data: memoryview, end_stream: bool) -> int:
        """Send what the windows allow of ``data`` (END_STREAM with its last
        byte when ``end_stream``); the bytes sent, or -1 if the stream is gone."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return -1
        total = len(data)
        window = min(self._send_window, stream.send_window)
        size = min(total, window)
        out = self._out
        frame = self._peer_frame
        head = _HEAD.pack
        sent = 0
        while sent < size:
            piece = min(frame, size - sent)
            flags = END_STREAM if end_stream and sent + piece == total else 0
            out += head(piece >> 16, piece & 0xFFFF, DATA, flags, stream_id)
            out += data[sent : sent + piece]
            sent += piece
        self._send_window -= sent
        stream.send_window -= sent
        if end_stream:
            if total == 0:
                out += _frame(DATA, END_STREAM, stream_id)
            if sent == total:
                self._local_end(stream)
        return sent

    def reset(self, stream_id: int, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        if stream_id in self.streams:
            self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))
            self._close(stream_id, _RESET_BY_SERVER)

    def remote_open(self, stream_id: int) -> bool:
        """The client may still send on the stream (its body is unread)."""
        stream = self.streams.get(stream_id)
        return stream is not None and not stream.remote_closed

    def goaway(self) -> None:
        """No new streams past the last one seen (RFC 9113 section 6.8),
        while those already started carry on."""
        if self.terminated or self._goaway_sent:
            return
        self._goaway_sent = True
        self._out += _frame(GOAWAY, 0, 0, _U32X2.pack(self.last_stream_id, ErrorCodes.NO_ERROR))

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data
