"""WebSocket (RFC 6455) without I/O: the opening handshake's checks and
answer, and the frame protocol (wsproto) turned into whole messages.

The server decides from a parsed HTTP/1.1 request whether it asks for a
WebSocket (:func:`parse_handshake`), writes the 101 answer this module
builds (:func:`accept_response`) once the application accepts, and from
then on feeds the connection's bytes to a :class:`WSDriver`.  Every bound
a client could push on is enforced here: the size of one message
(fragments and compressed frames included: a deflate "bomb" is stopped at
the limit, not after inflating), and protocol violations end in the close
code RFC 6455 assigns rather than an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .errors import ProtocolError
from .events import Headers, Request

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Close codes an endpoint may put on the wire (RFC 6455 section 7.4; 1004-1006
#: and 1015 are reserved for reporting, never sent).
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for t in value.split(b",")]


def _items(value: bytes) -> list[str]:
    """A comma-separated list field's non-empty members, case kept."""
    return [t.decode("latin-1") for t in (p.strip(b" \t") for p in value.split(b",")) if t]


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a valid opening handshake asked for."""

    key: bytes
    subprotocols: list[str]
    #: The Sec-WebSocket-Extensions offers, in the client's order.
    extensions: list[str]


def is_upgrade(request: Request) -> bool:
    """Does the request ask to switch to WebSocket?  Cheap enough for
    every request: one scan of the header list."""
    for name, value in request.headers:
        if name == b"upgrade" and b"websocket" in _tokens(value):
            return True
    return False


def parse_handshake(request: Request) -> Handshake:
    """Check an opening handshake (RFC 6455 section 4.2.1).

    Raises :class:`ProtocolError` with the answer the client must get: 426
    with the version this server speaks for another version, 400 for any
    other broken handshake, so that no application sees a half-valid one.
    """
    if request.method != b"GET":
        raise ProtocolError("WebSocket handshake must be a GET request")
    if request.http_version != "1.1":
        raise ProtocolError("WebSocket handshake needs HTTP/1.1")
    if request.has_body:
        raise ProtocolError("WebSocket handshake with a request body")
    key, version, connection, subprotocols, extensions = _handshake_fields(request)
    if b"upgrade" not in connection:
        raise ProtocolError("WebSocket handshake without Connection: upgrade")
    _check_version(version)
    if key is None:
        raise ProtocolError("WebSocket handshake without Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise ProtocolError("invalid Sec-WebSocket-Key")
    return Handshake(key, subprotocols, extensions)


def parse_h2_handshake(request: Request) -> Handshake:
    """Check a WebSocket's extended CONNECT over HTTP/2 (RFC 8441 section
    5): the version and offers as in RFC 6455, no key and no Upgrade."""
    _, version, _, subprotocols, extensions = _handshake_fields(request)
    _check_version(version)
    return Handshake(b"", subprotocols, extensions)


def _handshake_fields(
    request: Request,
) -> tuple[bytes | None, bytes | None, list[bytes], list[str], list[str]]:
    """Key, version, Connection tokens, subprotocols and extension offers."""
    key: bytes | None = None
    version: bytes | None = None
    connection: list[bytes] = []
    subprotocols: list[str] = []
    extensions: list[str] = []
    for name, value in request.headers:
        if name == b"sec-websocket-key":
            if key is not None:
                raise ProtocolError("more than one Sec-WebSocket-Key")
            key = value.strip()
        elif name == b"sec-websocket-version":
            if version is not None:
                raise ProtocolError("more than one Sec-WebSocket-Version")
            version = value.strip()
        elif name == b"connection":
            connection.extend(_tokens(value))
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(_items(value))
        elif name == b"sec-websocket-extensions":
            extensions.extend(_items(value))
    return key, version, connection, subprotocols, extensions


def _check_version(version: bytes | None) -> None:
    if version is None:
        raise ProtocolError("WebSocket handshake without Sec-WebSocket-Version")
    if version != b"13":
        # RFC 6455 section 4.4: say which version this server speaks.
        raise ProtocolError(
            "unsupported Sec-WebSocket-Version", 426, ((b"sec-websocket-version", b"13"),)
        )


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


_DEFLATE_PARAMS = frozenset(
    (
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    )
)


def negotiate_deflate(offers: list[str], max_message_size: int) -> BoundedDeflate | None:
    """The permessage-deflate extension for the first acceptable offer."""
    for offer in offers:
        name, *params = (p.strip() for p in offer.split(";"))
        if name.lower() != PerMessageDeflate.name:
            continue
        if any(p.split("=", 1)[0].strip().lower() not in _DEFLATE_PARAMS for p in params):
            continue  # RFC 7692 section 5: an offer with unknown parameters is declined
        ext = BoundedDeflate(max_message_size)
        if ext.accept(offer) is not None:
            return ext
    return None


def accepted_headers(subprotocol: str | None, extension: BoundedDeflate | None) -> Headers:
    """What the answer says was agreed, on either HTTP version."""
    headers: Headers = []
    if subprotocol is not None:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    if extension is not None:
        params = extension.accept_params
        offer = extension.name + ("; " + params if params else "")
        headers.append((b"sec-websocket-extensions", offer.encode("latin-1")))
    return headers


def accept_response(
    handshake: Handshake,
    subprotocol: str | None,
    extension: BoundedDeflate | None,
    headers: Headers,
) -> bytes:
    """The 101 answer; ``headers`` are the application's extra ones,
    already checked (and stripped of the handshake's own)."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"upgrade: websocket",
        b"connection: Upgrade",
        b"sec-websocket-accept: " + accept_token(handshake.key),
    ]
    for name, value in accepted_headers(subprotocol, extension) + headers:
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


#: The compressor of a WebSocket that sends compressed messages holds zlib
#: state for as long as the socket is open (context takeover): 262 KiB at
#: zlib's defaults (a 32 KiB window, hash level 8), 38 KiB with a 4 KiB
#: window and hash level 5.  Chat and JSON messages compress about as well.
DEFLATE_WINDOW_BITS = 12
DEFLATE_MEM_LEVEL = 5


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflation stops at the message size limit.

    wsproto inflates each received chunk whole, so a few kilobytes of
    compressed zeros become hundreds of megabytes before any size check
    can run.  Here every inflate call is capped at what the message may
    still grow by; reaching the cap is a 1009 close.
    """

    def __init__(self, max_message_size: int) -> None:
        super().__init__()
        self.max_message_size = max_message_size
        self._inflated = 0
        self._control = False
        self.accept_params = ""

    def accept(self, offer: str) -> bool | str | None:
        result = super().accept(offer)
        if isinstance(result, str):
            self.accept_params = result
        return result

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        # A control frame may come between a compressed message's fragments
        # (RFC 6455 section 5.4); wsproto's bookkeeping would then forget
        # that the message is compressed (or take the next one for plain).
        # Control frames are never compressed: they leave the state alone.
        self._control = opcode.iscontrol()
        if self._control:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            return RsvBits(True, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._control:
            return data
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        decompressor = self._decompressor
        assert decompressor is not None
        room = self.max_message_size - self._inflated
        try:
            out = decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message_size or decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._control:
            return None
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if self._compressor is None and opcode in (Opcode.TEXT, Opcode.BINARY):
            # A smaller window and hash than zlib's defaults: any inflater
            # whose window is at least as large reads the stream (RFC 7692
            # section 7.1.2.1 bounds the window from above only).
            agreed = self.client_max_window_bits if proto.client else self.server_max_window_bits
            bits = min(int(agreed), DEFLATE_WINDOW_BITS)
            self._compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, DEFLATE_MEM_LEVEL
            )
        return super().frame_outbound(proto, opcode, rsv, data, fin)


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket ended: ``code``/``reason`` as the application hears
    them.  ``fail`` means this side found the peer in breach of the
    protocol and the transport should close once the close frame is out."""

    code: int
    reason: str
    fail: bool = False


#: A pong arrived (the peer is alive).
PONG = object()


class WSDriver:
    """The frame protocol of one accepted WebSocket.

    :meth:`receive_data` returns the events the bytes completed — ``str``
    and ``bytes`` messages, :data:`PONG`, :class:`Closed` — and leaves in
    :attr:`output` what the protocol itself owes the peer (pongs, the
    close reply), for the server to write.
    """

    __slots__ = ("_conn", "_parts", "_size", "closed", "max_message_size", "output")

    def __init__(self, max_message_size: int, extension: Extension | None = None) -> None:
        self._conn = Connection(ConnectionType.SERVER, [extension] if extension else None)
        self.max_message_size = max_message_size
        self._parts: list[Any] = []
        self._size = 0
        self.output = bytearray()
        self.closed: Closed | None = None

    @property
    def open(self) -> bool:
        return self._conn.state is ConnectionState.OPEN

    def receive_data(self, data: bytes) -> list[Any]:
        conn = self._conn
        if self.closed is not None and conn.state is ConnectionState.CLOSED:
            return []  # after the close handshake: the peer's bytes are ignored
        conn.receive_data(data)
        events: list[Any] = []
        for event in conn.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if self.closed is not None:
                    continue
                chunk = event.data  # type: ignore[attr-defined]
                size = len(chunk)
                if kind is TextMessage and self._size + 4 * size > self.max_message_size:
                    # The limit is in bytes; a character is up to four.
                    size = len(chunk.encode("utf-8"))
                self._size += size
                if self._size > self.max_message_size:
                    self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
                    events.append(self.closed)
                    break
                if event.message_finished:  # type: ignore[attr-defined]
                    parts = self._parts
                    if parts:
                        parts.append(chunk)
                        chunk = ("" if kind is TextMessage else b"").join(parts)
                        parts.clear()
                    elif type(chunk) is bytearray:
                        chunk = bytes(chunk)
                    self._size = 0
                    events.append(chunk)
                else:
                    self._parts.append(chunk)
            elif kind is Ping:
                if conn.state is ConnectionState.OPEN:
                    self.output += conn.send(event.response())  # type: ignore[attr-defined]
            elif kind is Pong:
                events.append(PONG)
            elif kind is CloseConnection:
                code = event.code  # type: ignore[attr-defined]
                reason = event.reason or ""  # type: ignore[attr-defined]
                state = conn.state
                if state is ConnectionState.OPEN:
                    # wsproto reports a frame it could not parse as a close
                    # with the code that fits; the close is this side's.
                    self._fail(int(code), reason)
                    events.append(self.closed)
                    break
                if state is ConnectionState.REMOTE_CLOSING:
                    # The peer closes: echo its code (RFC 6455 section 5.5.1).
                    self.output += conn.send(event.response())  # type: ignore[attr-defined]
                if self.closed is None:
                    self.closed = Closed(int(code), reason)
                    events.append(self.closed)
                else:
                    # The reply to this side's close: the handshake is done.
                    events.append(Closed(self.closed.code, self.closed.reason))
        return events

    def _fail(self, code: int, reason: str) -> None:
        self._parts.clear()
        self._size = 0
        self.output += self._conn.send(CloseConnection(code=code, reason=reason[:120]))
        self.closed = Closed(code, reason, fail=True)

    def send_message(self, data: str | bytes) -> bytes:
        event: Message[Any] = TextMessage(data) if isinstance(data, str) else BytesMessage(data)
        return self._conn.send(event)

    def send_ping(self, payload: bytes = b"") -> bytes:
        return self._conn.send(Ping(payload=payload))

    def send_close(self, code: int, reason: str = "") -> bytes:
        """This side closes; an unsendable code becomes 1000, a long
        reason is cut to fit a control frame (123 bytes)."""
        if self._conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        if code not in _SENDABLE and not 3000 <= code <= 4999:
            code = 1000
        encoded = reason.encode("utf-8")[:123]
        reason = encoded.decode("utf-8", "ignore")
        data = self._conn.send(CloseConnection(code=code, reason=reason or None))
        if self.closed is None:
            self.closed = Closed(code, reason)
        return data

    @property
    def close_done(self) -> bool:
        """Both close frames crossed: the transport may close."""
        return self._conn.state is ConnectionState.CLOSED
