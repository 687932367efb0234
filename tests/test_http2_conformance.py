"""RFC 9113 server-side conformance of the HTTP/2 drivers, sans-IO.

In the spirit of h2spec's test plan: a hand-driven client writes raw frames
(hyperframe, or bytes by hand where a frame must be malformed) with its own
HPACK encoder, and every rule is checked on what the driver answers: the
events it reports, the frames it writes, and for a connection error both the
:class:`ProtocolError` and the GOAWAY's error code.

Every test runs against both engines (the worker's own frame layer and the
h2-based reference).  Where RFC 9113 leaves a choice (a stream error may be
escalated to a connection error, section 5.4.1) both outcomes are accepted;
where h2 itself departs from the RFC, the test runs for the native engine
only and says why.  Tests marked ``xfail(strict=True)`` pin a driver
behaviour the RFC forbids: see their ``reason``.
"""

from __future__ import annotations

import base64
import random
import struct

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from flask_async_worker.protocols.errors import ProtocolError
from flask_async_worker.protocols.http2 import (
    H2Driver,
    H2Event,
    H2Limits,
    PeerGoAway,
    StreamData,
    StreamEnd,
    StreamFault,
    StreamRefused,
    StreamRequest,
    StreamReset,
)
from flask_async_worker.protocols.http11_rules import Limits

from .conftest import H2_DRIVER_CLASSES, H2DriverClass, driver_engine_fixture
from .conftest import h2_frames as frames

Driver: H2DriverClass = H2Driver
engine = driver_engine_fixture(__name__)


#: For a rule h2 itself does not follow: the test runs on the native engine.
native_only = pytest.mark.parametrize("engine", ["native"], indirect=True)


def known_bugs(**reasons: str) -> pytest.MarkDecorator:
    """Both engines run; those named are expected to fail (a known bug)."""
    return pytest.mark.parametrize(
        "engine",
        [
            pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reasons[name]))
            if name in reasons
            else name
            for name in H2_DRIVER_CLASSES
        ],
        indirect=True,
    )


# RFC 9113 section 3.4, spelled out here rather than taken from the driver.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (section 6) for frames built by hand.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Settings (section 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE = 5
MAX_WINDOW = 2**31 - 1

#: A request whose fields land in the HPACK dynamic table: a second request
#: encoded after it refers to them by index, so a server whose decoder
#: skipped a block decodes the next one wrong (section 4.3).
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/conformance"),
    (b"x-conformance", b"kept-in-the-dynamic-table"),
]
POST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/upload"),
]


def raw(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """A frame built by hand: for lengths and stream ids hyperframe refuses."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", sid)
        + (payload)
    )


def resets(out: list[Frame]) -> dict[int, int]:
    return {f.stream_id: f.error_code for f in out if isinstance(f, RstStreamFrame)}


class Client:
    """A client driven by hand: frames in, the driver's frames out."""

    def __init__(
        self,
        limits: H2Limits | None = None,
        settings: dict[int, int] | None = None,
        handshake: bool = True,
    ) -> None:
        self.server = Driver(limits or H2Limits(), Limits())
        self.encoder = hpack.Encoder()
        self.now = 100.0
        self.server.initiate()
        #: The server preface: SETTINGS (and the connection window opened).
        self.preface = frames(self.server.data_to_send())
        if handshake:
            self.send_bytes(PREFACE + SettingsFrame(0, settings or {}).serialize())
            out = self.take()
            assert any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in out)
            self.send(SettingsFrame(0, flags=["ACK"]))
            assert self.take() == []

    def send_bytes(self, data: bytes) -> list[H2Event]:
        return self.server.receive_data(data, self.now)

    def send(self, *out: Frame) -> list[H2Event]:
        return self.send_bytes(b"".join(f.serialize() for f in out))

    def take(self) -> list[Frame]:
        return frames(self.server.data_to_send())

    def block(self, fields: list[tuple[bytes, bytes]] | None = None) -> bytes:
        return bytes(self.encoder.encode(REQUEST if fields is None else fields))

    def headers(
        self,
        sid: int,
        fields: list[tuple[bytes, bytes]] | None = None,
        end_stream: bool = True,
        **kwargs: object,
    ) -> HeadersFrame:
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(sid, self.block(fields), flags=flags, **kwargs)

    def request(
        self, sid: int, fields: list[tuple[bytes, bytes]] | None = None, end_stream: bool = True
    ) -> list[H2Event]:
        return self.send(self.headers(sid, fields, end_stream))

    def connection_error(self, data: bytes | Frame, code: int, optional: bool = False) -> None:
        """``data`` must end the connection: ProtocolError and GOAWAY(code)
        (when ``optional``, no GOAWAY at all is accepted too)."""
        payload = data if isinstance(data, bytes) else data.serialize()
        with pytest.raises(ProtocolError):
            self.send_bytes(payload)
        goaway = [f for f in self.take() if isinstance(f, GoAwayFrame)]
        if optional and not goaway:
            return
        assert goaway, "no GOAWAY after a connection error"
        assert goaway[-1].error_code == code

    def stream_or_connection_error(self, data: bytes | Frame, sid: int, code: int) -> str:
        """``data`` must reset ``sid`` with ``code``, or end the connection
        with it (RFC 9113 section 5.4.1 lets any stream error be escalated)."""
        payload = data if isinstance(data, bytes) else data.serialize()
        try:
            self.send_bytes(payload)
        except ProtocolError:
            goaway = [f for f in self.take() if isinstance(f, GoAwayFrame)]
            assert goaway and goaway[-1].error_code == code
            return "connection"
        out = self.take()
        assert resets(out).get(sid) == code, out
        assert not any(isinstance(f, GoAwayFrame) for f in out)
        return "stream"

    def alive(self, sid: int) -> None:
        """A new request decodes right: the connection, and HPACK, go on."""
        events = self.request(sid)
        start = next(e for e in events if isinstance(e, StreamRequest))
        assert start.stream_id == sid
        assert start.request.path == b"/conformance"
        assert (b"x-conformance", b"kept-in-the-dynamic-table") in start.request.headers


def requests(events: list[H2Event]) -> list[int]:
    return [e.stream_id for e in events if isinstance(e, StreamRequest)]


# -- 3.4 connection preface -------------------------------------------------------


def test_garbage_instead_of_the_preface(engine: str):
    """Section 3.4: an invalid preface is a connection error PROTOCOL_ERROR
    (an HTTP/1.1 request sent to an HTTP/2-only port, for instance)."""
    client = Client(handshake=False)
    # "the GOAWAY frame MAY be omitted in this case" (section 3.4): h2 omits
    # it, the native engine sends it.
    garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    client.connection_error(garbage, ErrorCodes.PROTOCOL_ERROR, optional=engine == "h2")


def test_a_preface_split_across_reads_is_waited_for():
    """Section 3.4: TCP may deliver the preface in pieces; a partial but
    valid preface is not an error."""
    client = Client(handshake=False)
    data = PREFACE + SettingsFrame(0).serialize()
    for piece in (data[:1], data[1:5], data[5:20], data[20:30]):
        assert client.send_bytes(piece) == []
        assert client.take() == []
    client.send_bytes(data[30:])
    acks = [f for f in client.take() if isinstance(f, SettingsFrame)]
    assert [set(f.flags) for f in acks] == [{"ACK"}]


def test_a_partial_preface_that_goes_wrong_fails(engine: str):
    """Section 3.4: waiting for the rest does not mean accepting anything."""
    client = Client(handshake=False)
    assert client.send_bytes(PREFACE[:10]) == []
    bad = b"XX" + PREFACE[12:]
    client.connection_error(bad, ErrorCodes.PROTOCOL_ERROR, optional=engine == "h2")


@native_only  # h2 does not check that the client's preface ends with SETTINGS.
@pytest.mark.parametrize(
    "first",
    [
        PingFrame(0, b"12345678").serialize(),
        SettingsFrame(0, flags=["ACK"]).serialize(),
        WindowUpdateFrame(0, 1).serialize(),
    ],
    ids=["ping", "settings-ack", "window-update"],
)
def test_the_client_preface_must_end_with_settings(first: bytes):
    """Section 3.4: the preface is the magic string followed by a SETTINGS
    frame (not an ACK); anything else is PROTOCOL_ERROR."""
    client = Client(handshake=False)
    client.connection_error(PREFACE + first, ErrorCodes.PROTOCOL_ERROR)


# -- 4.1/4.2 frame format and size --------------------------------------------


def test_a_frame_over_the_max_frame_size():
    """Section 4.2: a frame over SETTINGS_MAX_FRAME_SIZE is FRAME_SIZE_ERROR,
    a connection error for a frame carrying a field block."""
    client = Client()
    oversized = raw(HEADERS, END_HEADERS | END_STREAM, 1, client.block() + b"\0" * 16384)
    client.connection_error(oversized, ErrorCodes.FRAME_SIZE_ERROR)


def test_a_frame_of_exactly_the_max_frame_size_is_accepted():
    """Section 4.2: the limit is inclusive."""
    client = Client()
    client.request(1, POST, end_stream=False)
    events = client.send(DataFrame(1, b"x" * 16384, flags=["END_STREAM"]))
    assert sum(len(e.data) for e in events if isinstance(e, StreamData)) == 16384


def test_a_request_delivered_byte_by_byte():
    """Section 4.1: frames are a byte stream; a frame split over any number
    of reads is the same frame."""
    fields = [*POST, (b"content-length", b"5"), (b"x-a", b"1")]

    def conversation() -> bytes:
        encoder = hpack.Encoder()
        return (
            PREFACE
            + SettingsFrame(0, {INITIAL_WINDOW_SIZE: 1000}).serialize()
            + SettingsFrame(0, flags=["ACK"]).serialize()
            + HeadersFrame(1, encoder.encode(fields), flags=["END_HEADERS"]).serialize()
            + DataFrame(1, b"hello", flags=["END_STREAM"]).serialize()
        )

    def summary(events: list[H2Event]) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        for e in events:
            if isinstance(e, StreamRequest):
                r = e.request
                out.append(("request", e.stream_id, r.method, r.path, r.headers, e.ended))
            elif isinstance(e, StreamData):
                out.append(("data", e.stream_id, e.data, e.flow))
            else:
                out.append((type(e).__name__, getattr(e, "stream_id", None)))
        return out

    whole = Client(handshake=False)
    expected = summary(whole.send_bytes(conversation()))
    assert ("data", 1, b"hello", 5) in expected
    split = Client(handshake=False)
    events: list[H2Event] = []
    for byte in conversation():
        events += split.send_bytes(bytes((byte,)))
    assert summary(events) == expected
    assert split.server.data_to_send() == whole.server.data_to_send()


def test_unknown_flags_and_the_reserved_bit_are_ignored():
    """Section 4.1: flags without meaning for a frame type and the reserved
    bit of the stream identifier must be ignored on receipt."""
    client = Client()
    client.send_bytes(raw(PING, 0xFE, 0, b"abcdefgh"))
    pongs = [f for f in client.take() if isinstance(f, PingFrame)]
    assert [(f.opaque_data, "ACK" in f.flags) for f in pongs] == [(b"abcdefgh", True)]
    header = raw(HEADERS, END_HEADERS | END_STREAM | 0x40 | 0x02, 1 | 0x80000000, client.block())
    assert requests(client.send_bytes(header)) == [1]


# -- 6.5 SETTINGS -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw(SETTINGS, 0, 0, b"\0\x03\0\0\0\x64\0"), ErrorCodes.FRAME_SIZE_ERROR),
        (raw(SETTINGS, 0, 0, b"\0\x03\0"), ErrorCodes.FRAME_SIZE_ERROR),
        (raw(SETTINGS, 0, 1, b""), ErrorCodes.PROTOCOL_ERROR),
        (SettingsFrame(0, {ENABLE_PUSH: 2}).serialize(), ErrorCodes.PROTOCOL_ERROR),
        (
            SettingsFrame(0, {INITIAL_WINDOW_SIZE: 2**31}).serialize(),
            ErrorCodes.FLOW_CONTROL_ERROR,
        ),
        (SettingsFrame(0, {MAX_FRAME_SIZE: 16383}).serialize(), ErrorCodes.PROTOCOL_ERROR),
        (SettingsFrame(0, {MAX_FRAME_SIZE: 2**24}).serialize(), ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=[
        "length-7",
        "length-3",
        "on-a-stream",
        "enable-push-2",
        "initial-window-2^31",
        "max-frame-size-16383",
        "max-frame-size-2^24",
    ],
)
def test_invalid_settings(frame: bytes, code: int):
    """Sections 6.5 and 6.5.2: malformed SETTINGS and out-of-range values are
    connection errors; each would leave the peers disagreeing on the
    connection's parameters."""
    Client().connection_error(frame, code)


@native_only  # h2 (hyperframe) reports an ACK with a payload as PROTOCOL_ERROR.
def test_a_settings_ack_with_a_payload():
    """Section 6.5: an ACK carries nothing; a payload is FRAME_SIZE_ERROR."""
    Client().connection_error(
        raw(SETTINGS, ACK, 0, b"\0\x03\0\0\0\x64"), ErrorCodes.FRAME_SIZE_ERROR
    )


def test_settings_are_acknowledged_unknown_ones_ignored():
    """Section 6.5.3: every SETTINGS is ACKed at once; section 6.5.2: an
    unknown identifier is ignored, not an error."""
    client = Client()
    client.send(SettingsFrame(0, {MAX_CONCURRENT_STREAMS: 10, 0x7A7A: 99}))
    out = client.take()
    assert [set(f.flags) for f in out if isinstance(f, SettingsFrame)] == [{"ACK"}]
    client.alive(1)


def test_initial_window_size_changes_open_streams():
    """Section 6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE shifts the window of
    every open stream by the difference, possibly below zero; nothing may be
    sent until WINDOW_UPDATE brings it back above zero."""
    client = Client()
    client.request(1)
    server = client.server
    assert server.send_headers(1, 200, [], end_stream=False)
    assert server.window(1) == 65535
    client.send(SettingsFrame(0, {INITIAL_WINDOW_SIZE: 100}))
    assert server.window(1) == 100
    body = memoryview(b"z" * 1000)
    assert server.send_data(1, body[:150], end_stream=False) == 100
    client.send(SettingsFrame(0, {INITIAL_WINDOW_SIZE: 50}))
    assert server.window(1) == -50
    assert server.send_data(1, body, end_stream=False) == 0
    client.send(WindowUpdateFrame(1, 30))
    assert server.window(1) == -20
    assert server.send_data(1, body, end_stream=False) == 0
    client.send(WindowUpdateFrame(1, 60))
    assert server.window(1) == 40
    assert server.send_data(1, body, end_stream=False) == 40
    data = [f for f in client.take() if isinstance(f, DataFrame)]
    assert sum(len(f.data) for f in data) == 140


def test_initial_window_size_overflowing_a_stream_window():
    """Section 6.9.2: a SETTINGS change that pushes a stream window past
    2^31-1 is a connection error FLOW_CONTROL_ERROR."""
    client = Client()
    client.request(1)
    client.send(WindowUpdateFrame(1, MAX_WINDOW - 65535))
    frame = SettingsFrame(0, {INITIAL_WINDOW_SIZE: 65536})
    client.connection_error(frame, ErrorCodes.FLOW_CONTROL_ERROR)


def test_the_clients_max_frame_size_raises_the_data_frame_size():
    """Section 4.2: frames up to the peer's SETTINGS_MAX_FRAME_SIZE may be
    sent; a server that raises it sends fewer, larger DATA frames."""
    client = Client(settings={MAX_FRAME_SIZE: 32768, INITIAL_WINDOW_SIZE: 100_000})
    client.request(1)
    server = client.server
    server.send_headers(1, 200, [], end_stream=False)
    assert server.send_data(1, memoryview(b"x" * 60000), end_stream=False) == 60000
    sizes = [len(f.data) for f in client.take() if isinstance(f, DataFrame)]
    assert sum(sizes) == 60000
    assert max(sizes) == 32768


def test_header_table_size_zero_is_honoured():
    """Section 6.5.2 and RFC 7541 section 4.2: with SETTINGS_HEADER_TABLE_SIZE
    0 the server's encoder must not use the dynamic table, and says so with a
    size update at the start of its next block."""
    client = Client(settings={HEADER_TABLE_SIZE: 0})
    decoder = hpack.Decoder()
    decoder.header_table_size = 0
    decoder.max_allowed_table_size = 0
    server = client.server
    blocks = []
    for sid in (1, 3):
        client.request(sid)
        assert server.send_headers(sid, 200, [(b"x-same", b"v" * 40)], end_stream=True)
        blocks += [f.data for f in client.take() if isinstance(f, HeadersFrame)]
    assert blocks[0][0] & 0xE0 == 0x20  # a dynamic table size update (to 0)
    for block in blocks:
        assert decoder.decode(block, raw=True) == [(b":status", b"200"), (b"x-same", b"v" * 40)]


# -- 6.7 PING ---------------------------------------------------------------------


def test_ping_is_answered_with_the_same_payload():
    """Section 6.7: a PING is answered by a PING ACK with identical data."""
    client = Client()
    client.send(PingFrame(0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"))
    pongs = [f for f in client.take() if isinstance(f, PingFrame)]
    assert len(pongs) == 1
    assert set(pongs[0].flags) == {"ACK"}
    assert pongs[0].opaque_data == b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"


def test_a_ping_ack_is_not_answered():
    """Section 6.7: answering an ACK would loop forever between peers."""
    client = Client()
    client.send(PingFrame(0, b"12345678", flags=["ACK"]))
    assert client.take() == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw(PING, 0, 0, b"1234567"), ErrorCodes.FRAME_SIZE_ERROR),
        (raw(PING, 0, 0, b"123456789"), ErrorCodes.FRAME_SIZE_ERROR),
        (raw(PING, 0, 1, b"12345678"), ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=["length-7", "length-9", "on-a-stream"],
)
def test_invalid_ping(frame: bytes, code: int):
    """Section 6.7: PING is 8 bytes on stream 0."""
    Client().connection_error(frame, code)


# -- 5.1.1, 6.2, 6.10 HEADERS and CONTINUATION -----------------------------------


def test_headers_on_an_even_stream():
    """Section 5.1.1: clients open odd streams; an even one is PROTOCOL_ERROR."""
    client = Client()
    client.connection_error(client.headers(2), ErrorCodes.PROTOCOL_ERROR)


def test_headers_on_stream_zero():
    """Section 6.2: HEADERS must be on a stream."""
    client = Client()
    frame = raw(HEADERS, END_HEADERS | END_STREAM, 0, client.block())
    client.connection_error(frame, ErrorCodes.PROTOCOL_ERROR)


def test_stream_ids_must_increase():
    """Section 5.1.1: a new stream's id exceeds every id the client used;
    opening 5 closes the skipped 3, and a HEADERS on 3 is PROTOCOL_ERROR."""
    client = Client()
    assert requests(client.request(5)) == [5]
    client.connection_error(client.headers(3), ErrorCodes.PROTOCOL_ERROR)


def test_padded_headers():
    """Section 6.2: padding is stripped and the block decodes."""
    client = Client()
    frame = client.headers(1, pad_length=20)
    frame.flags.add("PADDED")
    assert requests(client.send(frame)) == [1]
    client.alive(3)


@pytest.mark.parametrize("kind", [HEADERS, DATA])
def test_padding_longer_than_the_frame(kind: int):
    """Sections 6.1 and 6.2: padding at least as long as the payload is a
    connection error PROTOCOL_ERROR."""
    client = Client()
    if kind == DATA:
        client.request(1, POST, end_stream=False)
        frame = raw(DATA, PADDED, 1, b"\x05abc")
    else:
        frame = raw(HEADERS, PADDED | END_HEADERS, 1, b"\x40" + client.block())
    client.connection_error(frame, ErrorCodes.PROTOCOL_ERROR)


def test_headers_with_the_priority_flag():
    """Section 6.2: the deprecated priority fields are parsed and skipped."""
    client = Client()
    frame = client.headers(1, depends_on=0, stream_weight=200, exclusive=True)
    frame.flags.add("PRIORITY")
    assert requests(client.send(frame)) == [1]
    client.alive(3)


def test_headers_depending_on_their_own_stream(engine: str):
    """RFC 7540 section 5.3.1 (mandatory handling kept by RFC 9113 section
    5.3.2): a stream depending on itself is a stream error PROTOCOL_ERROR; the
    block is still decoded so that HPACK stays in step and the connection
    goes on.  h2 makes it a connection error, which section 5.4.1 allows."""
    client = Client()
    frame = client.headers(1, depends_on=1, stream_weight=16)
    frame.flags.add("PRIORITY")
    outcome = client.stream_or_connection_error(frame, 1, ErrorCodes.PROTOCOL_ERROR)
    if engine == "native":
        assert outcome == "stream"
    if outcome == "stream":
        client.alive(3)


def test_self_dependent_headers_continued():
    """Sections 4.3 and 6.10 with RFC 7540 section 5.3.1: the self-dependency
    is a stream error PROTOCOL_ERROR (or a connection error of that type),
    but the field block is the HEADERS fragment *and* its CONTINUATIONs; it is
    valid and must not end the connection with COMPRESSION_ERROR."""
    client = Client()
    block = client.block([*REQUEST, (b"x-long", b"q" * 100)])
    first = HeadersFrame(1, block[:7], flags=["END_STREAM", "PRIORITY"], depends_on=1)
    rest = ContinuationFrame(1, block[7:], flags=["END_HEADERS"])
    data = first.serialize() + rest.serialize()
    if client.stream_or_connection_error(data, 1, ErrorCodes.PROTOCOL_ERROR) == "stream":
        client.alive(3)


def test_a_header_block_in_headers_and_continuations():
    """Section 6.10: a field block may be split over any number of frames."""
    client = Client()
    block = client.block([*REQUEST, (b"x-long", b"q" * 300)])
    third = len(block) // 3
    events = client.send(
        HeadersFrame(1, block[:third], flags=["END_STREAM"]),
        ContinuationFrame(1, block[third : 2 * third]),
        ContinuationFrame(1, block[2 * third :], flags=["END_HEADERS"]),
    )
    start = next(e for e in events if isinstance(e, StreamRequest))
    assert (b"x-long", b"q" * 300) in start.request.headers
    assert start.ended
    client.alive(3)


@pytest.mark.parametrize(
    "interloper",
    [
        PingFrame(0, b"12345678").serialize(),
        PriorityFrame(1, depends_on=0, stream_weight=1).serialize(),
        DataFrame(1, b"x").serialize(),
        ContinuationFrame(3, b"", flags=["END_HEADERS"]).serialize(),
        raw(HEADERS, END_HEADERS, 3, b"\x82"),
        raw(0xBB, 0, 0, b"extension"),
    ],
    ids=["ping", "priority", "data", "continuation-other-stream", "headers", "unknown-type"],
)
def test_a_header_block_cannot_be_interrupted(interloper: bytes):
    """Sections 6.2, 6.10 and 5.5: between a HEADERS without END_HEADERS and
    its last CONTINUATION only CONTINUATION frames of the same stream may
    come; anything else (an extension frame too) is PROTOCOL_ERROR."""
    client = Client()
    block = client.block()
    client.send(HeadersFrame(1, block[:4], flags=["END_STREAM"]))
    client.connection_error(interloper, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize("sid", [1, 0])
def test_continuation_without_headers(sid: int):
    """Section 6.10: a CONTINUATION must follow a HEADERS (or CONTINUATION)
    without END_HEADERS; on its own it is PROTOCOL_ERROR."""
    client = Client()
    if sid:
        client.request(sid)
    frame = raw(CONTINUATION, END_HEADERS, sid, client.block())
    client.connection_error(frame, ErrorCodes.PROTOCOL_ERROR)


def test_an_undecodable_header_block():
    """Section 4.3: a block that does not decompress leaves HPACK state
    unknown: a connection error COMPRESSION_ERROR."""
    client = Client()
    # An index far past the static and (empty) dynamic tables.
    frame = raw(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\x7f")
    client.connection_error(frame, ErrorCodes.COMPRESSION_ERROR)


def test_a_table_size_update_over_the_setting():
    """Section 4.3 and RFC 7541 section 6.3: a dynamic table size update above
    the SETTINGS_HEADER_TABLE_SIZE the server announced (4096 by default) is
    a decoding error, COMPRESSION_ERROR."""
    client = Client()
    block = b"\x3f\xe1\x3f" + client.block()  # size update to 8192
    frame = raw(HEADERS, END_HEADERS | END_STREAM, 1, block)
    client.connection_error(frame, ErrorCodes.COMPRESSION_ERROR)


def test_trailers_end_the_stream():
    """Section 8.1: a request may end with a trailer section (a second
    HEADERS with END_STREAM)."""
    client = Client()
    client.request(1, POST, end_stream=False)
    events = client.send(
        DataFrame(1, b"body"), client.headers(1, [(b"x-checksum", b"abc")], end_stream=True)
    )
    assert [(type(e), getattr(e, "stream_id", None)) for e in events] == [
        (StreamData, 1),
        (StreamEnd, 1),
    ]
    client.alive(3)


def test_trailers_without_end_stream(engine: str):
    """Section 8.1: a second HEADERS that does not end the stream makes the
    request malformed: a stream error PROTOCOL_ERROR (h2 escalates it to a
    connection error, which section 5.4.1 allows)."""
    client = Client()
    client.request(1, POST, end_stream=False)
    frame = client.headers(1, [(b"x-checksum", b"abc")], end_stream=False)
    outcome = client.stream_or_connection_error(frame, 1, ErrorCodes.PROTOCOL_ERROR)
    if engine == "native":
        assert outcome == "stream"
        client.alive(3)


@known_bugs(
    h2="h2 does not look at a trailer section's fields: a pseudo-header in "
    "trailers is not treated as malformed (RFC 9113 section 8.1/8.3)",
)
def test_trailers_with_a_pseudo_header():
    """Section 8.3: pseudo-header fields must not appear in trailers; such a
    request is malformed, a stream error PROTOCOL_ERROR (section 8.1.1)."""
    client = Client()
    client.request(1, POST, end_stream=False)
    frame = client.headers(1, [(b":path", b"/elsewhere")], end_stream=True)
    client.stream_or_connection_error(frame, 1, ErrorCodes.PROTOCOL_ERROR)


def test_headers_on_a_half_closed_remote_stream():
    """Section 5.1: once the client ended its side, anything but
    WINDOW_UPDATE, PRIORITY and RST_STREAM is a stream error STREAM_CLOSED;
    the block is still decoded (section 4.3) and the connection goes on."""
    client = Client()
    client.request(1)
    frame = client.headers(1, [(b"x-late", b"1")], end_stream=True)
    assert client.stream_or_connection_error(frame, 1, ErrorCodes.STREAM_CLOSED) == "stream"
    client.alive(3)


def test_headers_on_a_stream_the_server_reset():
    """Section 5.1 ("closed"): frames the client sent before it saw the
    server's RST_STREAM are discarded, but a field block must still be
    decoded so that HPACK stays in step.  The native engine stays silent, h2
    repeats RST_STREAM(STREAM_CLOSED), which section 5.4.2 tolerates."""
    client = Client()
    client.request(1, POST, end_stream=False)
    client.server.reset(1, ErrorCodes.CANCEL)
    client.take()
    trailers = client.headers(1, [(b"x-trailer", b"in flight")], end_stream=True)
    assert client.send(trailers) == []
    assert resets(client.take()) in ({}, {1: ErrorCodes.STREAM_CLOSED})
    client.alive(3)


def test_headers_after_the_clients_own_reset():
    """Section 5.1 ("closed"): HEADERS on a stream the client reset may be
    a STREAM_CLOSED error or discarded, but either way HPACK stays in step."""
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(RstStreamFrame(1, ErrorCodes.CANCEL))
    trailers = client.headers(1, [(b"x-trailer", b"late")], end_stream=True)
    try:
        # Nothing for the application (a fault to log at most).
        assert all(isinstance(e, StreamFault) for e in client.send(trailers))
    except ProtocolError:
        goaway = [f for f in client.take() if isinstance(f, GoAwayFrame)]
        assert goaway[-1].error_code == ErrorCodes.STREAM_CLOSED
        return
    assert resets(client.take()) in ({}, {1: ErrorCodes.STREAM_CLOSED})
    client.alive(3)


def test_concurrent_streams_over_the_limit_are_refused():
    """Section 5.1.2: a stream over SETTINGS_MAX_CONCURRENT_STREAMS is a
    stream error PROTOCOL_ERROR or REFUSED_STREAM (the client may retry)."""
    client = Client(H2Limits(max_concurrent_streams=2))
    events = client.send(client.headers(1), client.headers(3), client.headers(5))
    assert requests(events) == [1, 3]
    assert resets(client.take()) == {5: ErrorCodes.REFUSED_STREAM}


# -- 6.1 DATA -----------------------------------------------------------------------


def test_data_on_stream_zero():
    """Section 6.1: DATA belongs to a stream; on stream 0, PROTOCOL_ERROR."""
    Client().connection_error(raw(DATA, 0, 0, b"x"), ErrorCodes.PROTOCOL_ERROR)


def test_data_on_an_idle_stream():
    """Section 5.1: only HEADERS and PRIORITY may arrive on an idle stream."""
    Client().connection_error(DataFrame(1, b"x"), ErrorCodes.PROTOCOL_ERROR)


def test_data_after_end_stream():
    """Sections 5.1 and 6.1: DATA on a half-closed (remote) stream is a
    stream error STREAM_CLOSED."""
    client = Client()
    client.request(1)
    data = DataFrame(1, b"late", flags=["END_STREAM"])
    client.stream_or_connection_error(data, 1, ErrorCodes.STREAM_CLOSED)


def test_data_on_a_closed_stream():
    """Sections 5.1 and 6.1: after both sides ended a stream, DATA on it is a
    stream error STREAM_CLOSED (or, as 5.1 allows, a connection error)."""
    client = Client()
    client.request(1)
    assert client.server.send_headers(1, 204, [], end_stream=True)
    client.take()
    data = DataFrame(1, b"late", flags=["END_STREAM"])
    client.stream_or_connection_error(data, 1, ErrorCodes.STREAM_CLOSED)


def test_data_after_the_clients_own_reset():
    """Section 6.1: DATA on a stream that is not open or half-closed (local)
    MUST get a stream error STREAM_CLOSED.  Only the peer that *sent* the
    RST_STREAM must tolerate frames still in flight (section 5.1, "closed");
    here the client reset the stream itself and then sent DATA on it."""
    client = Client()
    client.request(1, POST, end_stream=False)
    assert any(isinstance(e, StreamReset) for e in client.send(RstStreamFrame(1, 8)))
    client.stream_or_connection_error(DataFrame(1, b"late"), 1, ErrorCodes.STREAM_CLOSED)


def test_padded_data_delivers_the_data_and_counts_the_padding():
    """Section 6.1: padding is not data, but the whole payload (pad length
    byte and padding included) is flow controlled."""
    client = Client()
    client.request(1, POST, end_stream=False)
    frame = DataFrame(1, b"abc", pad_length=10, flags=["PADDED", "END_STREAM"])
    events = client.send(frame)
    data = [e for e in events if isinstance(e, StreamData)]
    assert [(e.data, e.flow) for e in data] == [(b"abc", 14)]
    assert any(isinstance(e, StreamEnd) for e in events)


def test_data_beyond_the_stream_window(engine: str):
    """Section 5.2.1/6.9: a client sending past the stream window it was
    given is a FLOW_CONTROL_ERROR, a stream error (h2 makes it a connection
    error)."""
    client = Client(H2Limits(initial_window_size=1000))
    client.request(1, POST, end_stream=False)
    client.send(DataFrame(1, b"x" * 1000))
    outcome = client.stream_or_connection_error(
        DataFrame(1, b"y"), 1, ErrorCodes.FLOW_CONTROL_ERROR
    )
    if engine == "native":
        assert outcome == "stream"
        client.alive(3)


@known_bugs(
    h2="h2 ends the connection (FlowControlError, 'Flow control window shrunk "
    "below 0') when the SETTINGS ACK turns a stream's receive window negative",
)
def test_data_sent_before_the_settings_ack():
    """Sections 6.9.2 and 6.9.3: until the client acknowledges the server's
    smaller SETTINGS_INITIAL_WINDOW_SIZE it may use the default 65,535; the
    server must take that data, and the ACK that turns the window negative
    is no error (the server MAY reset the stream if more comes)."""
    limits = H2Limits(initial_window_size=1000)
    client = Client(limits, handshake=False)
    client.send_bytes(PREFACE + SettingsFrame(0).serialize())
    client.take()
    client.request(1, POST, end_stream=False)
    events = client.send(DataFrame(1, b"x" * 16384), DataFrame(1, b"x" * 16384))
    assert sum(len(e.data) for e in events if isinstance(e, StreamData)) == 32768
    assert client.send(SettingsFrame(0, flags=["ACK"])) == []
    assert client.take() == []


def test_data_beyond_the_connection_window():
    """Section 6.9: overrunning the connection window is a connection error
    FLOW_CONTROL_ERROR."""
    client = Client(H2Limits(initial_window_size=40000, connection_window=40000))
    assert not any(isinstance(f, WindowUpdateFrame) for f in client.preface)
    client.request(1, POST, end_stream=False)
    client.request(3, POST, end_stream=False)
    client.send(DataFrame(1, b"x" * 16384), DataFrame(1, b"x" * 16384))
    client.send(DataFrame(3, b"x" * 16384))
    client.connection_error(DataFrame(3, b"x" * 16384), ErrorCodes.FLOW_CONTROL_ERROR)


@pytest.mark.parametrize(("declared", "sent"), [(10, 5), (3, 5), (4, 0)])
def test_a_body_that_disagrees_with_content_length(engine: str, declared: int, sent: int):
    """Section 8.1.1: a body whose length differs from Content-Length makes
    the request malformed: a stream error PROTOCOL_ERROR, so that a short or
    overlong body never reaches the application as complete.  h2 ends the
    connection instead (InvalidBodyLengthError), which section 5.4.1 allows."""
    client = Client()
    client.request(1, [*POST, (b"content-length", b"%d" % declared)], end_stream=False)
    frame = DataFrame(1, b"x" * sent, flags=["END_STREAM"])
    outcome = client.stream_or_connection_error(frame, 1, ErrorCodes.PROTOCOL_ERROR)
    if engine == "native":
        assert outcome == "stream"
        client.alive(3)


@known_bugs(
    h2="h2 checks Content-Length only against DATA frames: trailers ending a "
    "short body end the stream normally",
)
def test_a_short_body_ended_by_trailers():
    """Section 8.1.1: Content-Length must equal the sum of the DATA payloads
    however the stream ends; ending it with trailers early is malformed."""
    client = Client()
    client.request(1, [*POST, (b"content-length", b"10")], end_stream=False)
    client.send(DataFrame(1, b"x" * 5))
    frame = client.headers(1, [(b"x-checksum", b"abc")], end_stream=True)
    client.stream_or_connection_error(frame, 1, ErrorCodes.PROTOCOL_ERROR)


def test_content_length_with_no_body():
    """Section 8.1.1: a request ended by its HEADERS has a body of 0 bytes;
    a non-zero Content-Length contradicts it and makes it malformed.  Like
    the other malformed requests it is answered 400 on its stream (section
    8.1.1 allows a response before the reset) and never reaches the app."""
    client = Client()
    events = client.send(client.headers(1, [*POST, (b"content-length", b"10")], end_stream=True))
    refused = [e for e in events if isinstance(e, StreamRefused)]
    assert [(e.stream_id, e.status) for e in refused] == [(1, 400)]
    assert not requests(events)
    zero = client.send(client.headers(3, [*POST, (b"content-length", b"0")], end_stream=True))
    assert requests(zero) == [3]


def test_data_on_a_stream_the_server_reset_hands_back_the_window():
    """Sections 5.1 ("closed") and 6.9: DATA still in flight after the
    server's RST_STREAM is discarded, but it was counted against the
    connection window, which must be handed back or the connection stalls."""
    client = Client(H2Limits(initial_window_size=65535, connection_window=65535))
    assert not any(isinstance(f, WindowUpdateFrame) for f in client.preface)
    window = 65535
    client.request(1, POST, end_stream=False)
    client.server.reset(1, ErrorCodes.CANCEL)
    assert resets(client.take()) == {1: ErrorCodes.CANCEL}
    events: list[H2Event] = []
    for size in (16384, 16384, 16384, 16383):
        events += client.send(DataFrame(1, b"x" * size))
        window -= size
        for frame in client.take():
            if isinstance(frame, WindowUpdateFrame):
                assert frame.stream_id == 0
                window += frame.window_increment
            else:
                # h2 answers each with RST_STREAM(STREAM_CLOSED); RFC 9113
                # section 5.4.2 allows that, the native engine stays silent.
                assert resets([frame]) == {1: ErrorCodes.STREAM_CLOSED}
    assert not any(isinstance(e, StreamData) for e in events)
    assert window == 65535
    client.alive(3)


# -- 6.9 WINDOW_UPDATE ------------------------------------------------------------


def test_window_update_of_zero_on_the_connection():
    """Section 6.9: a zero increment on the connection is PROTOCOL_ERROR."""
    Client().connection_error(raw(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), ErrorCodes.PROTOCOL_ERROR)


def test_window_update_of_zero_on_a_stream(engine: str):
    """Section 6.9: a zero increment on a stream is a stream error
    PROTOCOL_ERROR (hyperframe refuses the frame outright, so h2 makes it a
    connection error, which section 5.4.1 allows)."""
    client = Client()
    client.request(1)
    frame = raw(WINDOW_UPDATE, 0, 1, b"\0\0\0\0")
    outcome = client.stream_or_connection_error(frame, 1, ErrorCodes.PROTOCOL_ERROR)
    if engine == "native":
        assert outcome == "stream"
        client.alive(3)


@native_only  # h2 resets streams itself and reports nothing to log.
def test_stream_errors_are_reported_for_the_log():
    """Bad input is logged: each stream error comes with a StreamFault
    saying what the client did, beside the StreamReset that ends the
    application's stream."""
    client = Client()
    client.request(1, POST, end_stream=False)
    events = client.send_bytes(raw(WINDOW_UPDATE, 0, 1, b"\0\0\0\0"))
    faults = [(e.stream_id, e.detail) for e in events if isinstance(e, StreamFault)]
    assert faults == [(1, "WINDOW_UPDATE of 0")]
    assert [e.stream_id for e in events if isinstance(e, StreamReset)] == [1]
    # A stream the application no longer has (the client reset it) is
    # reported too, without a reset event.
    client.request(3, POST, end_stream=False)
    client.send(RstStreamFrame(3, ErrorCodes.CANCEL))
    events = client.send(DataFrame(3, b"late"))
    assert [(e.stream_id, e.detail) for e in events if isinstance(e, StreamFault)] == [
        (3, "DATA after the client ended or reset the stream")
    ]
    assert len(events) == 1


@pytest.mark.parametrize("payload", [b"\0\0\x01", b"\0\0\0\x01\0"], ids=["3", "5"])
@pytest.mark.parametrize("sid", [0, 1])
def test_window_update_of_the_wrong_length(sid: int, payload: bytes):
    """Section 6.9: WINDOW_UPDATE is 4 bytes, else FRAME_SIZE_ERROR."""
    client = Client()
    client.request(1)
    client.connection_error(raw(WINDOW_UPDATE, 0, sid, payload), ErrorCodes.FRAME_SIZE_ERROR)


def test_window_update_overflowing_the_connection_window():
    """Section 6.9.1: a window past 2^31-1 on the connection: GOAWAY
    FLOW_CONTROL_ERROR."""
    client = Client()
    client.connection_error(WindowUpdateFrame(0, MAX_WINDOW), ErrorCodes.FLOW_CONTROL_ERROR)


def test_window_update_overflowing_a_stream_window():
    """Section 6.9.1: a stream window past 2^31-1: RST_STREAM
    FLOW_CONTROL_ERROR on that stream; the connection goes on."""
    client = Client()
    client.request(1)
    client.send(WindowUpdateFrame(1, MAX_WINDOW - 65535))
    frame = WindowUpdateFrame(1, 1)
    assert client.stream_or_connection_error(frame, 1, ErrorCodes.FLOW_CONTROL_ERROR) == "stream"
    assert not client.server.send_headers(1, 200, [], end_stream=True)
    client.alive(3)


def test_window_update_on_an_idle_stream():
    """Section 5.1: WINDOW_UPDATE on an idle stream is PROTOCOL_ERROR."""
    client = Client()
    client.request(1)
    client.connection_error(WindowUpdateFrame(3, 100), ErrorCodes.PROTOCOL_ERROR)


def test_window_update_on_closed_streams_is_ignored():
    """Section 6.9: WINDOW_UPDATE may follow the END_STREAM or RST_STREAM
    that closed a stream; it must not be treated as an error."""
    client = Client()
    client.request(1)
    client.server.send_headers(1, 204, [], end_stream=True)
    client.request(3, POST, end_stream=False)
    client.server.reset(3, ErrorCodes.CANCEL)
    client.take()
    client.send(WindowUpdateFrame(1, 100), WindowUpdateFrame(3, 100))
    assert client.take() == []
    client.alive(5)


# -- 6.4 RST_STREAM ----------------------------------------------------------------


def test_rst_stream_on_stream_zero():
    """Section 6.4: RST_STREAM belongs to a stream; on 0, PROTOCOL_ERROR."""
    client = Client()
    client.connection_error(raw(RST_STREAM, 0, 0, b"\0\0\0\x08"), ErrorCodes.PROTOCOL_ERROR)


@native_only  # h2 ignores RST_STREAM on an idle stream (NoSuchStreamError is swallowed).
def test_rst_stream_on_an_idle_stream():
    """Section 6.4: RST_STREAM on an idle stream is PROTOCOL_ERROR."""
    client = Client()
    client.request(1)
    client.connection_error(RstStreamFrame(3, 8), ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize("payload", [b"\0\0\x08", b"\0\0\0\x08\0"], ids=["3", "5"])
def test_rst_stream_of_the_wrong_length(payload: bytes):
    """Section 6.4: RST_STREAM is 4 bytes, else FRAME_SIZE_ERROR."""
    client = Client()
    client.request(1, POST, end_stream=False)
    client.connection_error(raw(RST_STREAM, 0, 1, payload), ErrorCodes.FRAME_SIZE_ERROR)


def test_rst_stream_on_a_closed_stream_is_ignored():
    """Section 5.1 ("closed"): a RST_STREAM may cross the END_STREAM that
    closed the stream; it is not an error and is not answered."""
    client = Client()
    client.request(1)
    client.server.send_headers(1, 204, [], end_stream=True)
    client.take()
    assert client.send(RstStreamFrame(1, ErrorCodes.CANCEL)) == []
    assert client.take() == []
    client.alive(3)


def test_rst_stream_closes_the_stream():
    """Section 6.4: after RST_STREAM the server must send nothing more on the
    stream; the driver reports the reset and refuses to send, without
    answering with a RST_STREAM of its own (section 5.4.2)."""
    client = Client()
    client.request(1, POST, end_stream=False)
    events = client.send(RstStreamFrame(1, ErrorCodes.CANCEL))
    assert [(type(e), getattr(e, "stream_id", None)) for e in events] == [(StreamReset, 1)]
    assert not client.server.send_headers(1, 200, [], end_stream=True)
    assert client.server.send_data(1, memoryview(b"x"), end_stream=True) == -1
    assert client.take() == []
    client.alive(3)


# -- 6.3 PRIORITY -----------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"\0\0\0\0", b"\0\0\0\0\x10\0"], ids=["4", "6"])
def test_priority_of_the_wrong_length(payload: bytes):
    """Section 6.3: PRIORITY is 5 bytes; otherwise a stream error
    FRAME_SIZE_ERROR (escalating it to the connection is allowed)."""
    client = Client()
    client.request(1, POST, end_stream=False)
    client.stream_or_connection_error(raw(PRIORITY, 0, 1, payload), 1, ErrorCodes.FRAME_SIZE_ERROR)


def test_priority_on_stream_zero():
    """Section 6.3: PRIORITY on stream 0 is PROTOCOL_ERROR."""
    client = Client()
    frame = raw(PRIORITY, 0, 0, b"\0\0\0\x01\x10")
    client.connection_error(frame, ErrorCodes.PROTOCOL_ERROR)


def test_priority_on_idle_and_closed_streams():
    """Sections 5.1 and 6.3: PRIORITY may come in any state, idle and closed
    included, and does not open a stream: stream 1 can still be opened
    after a PRIORITY on 3, and 3 after that."""
    client = Client()
    assert client.send(PriorityFrame(3, depends_on=0, stream_weight=16)) == []
    assert client.take() == []
    client.alive(1)
    client.send(PriorityFrame(1, depends_on=0, stream_weight=16))
    assert client.take() == []
    client.alive(3)


# -- 6.6, 5.5 PUSH_PROMISE and unknown frames -----------------------------------


def test_push_promise_from_a_client():
    """Sections 6.6 and 8.4: only servers push; a client's PUSH_PROMISE is
    PROTOCOL_ERROR."""
    client = Client()
    client.request(1, POST, end_stream=False)
    frame = PushPromiseFrame(1, promised_stream_id=2, data=client.block(), flags=["END_HEADERS"])
    client.connection_error(frame, ErrorCodes.PROTOCOL_ERROR)


def test_unknown_frame_types_are_ignored():
    """Sections 4.1 and 5.5: frames of unknown type are discarded, on stream
    0, on an idle stream and between requests alike."""
    client = Client()
    # Built by hand: hyperframe's ExtensionFrame.serialize() writes a length
    # of 0 unless the frame was parsed.
    for sid in (0, 7, 1):
        assert client.send_bytes(raw(0xBB, 0xFF, sid, b"ignore me")) == []
    assert client.take() == []
    client.alive(1)
    assert client.send_bytes(raw(0xBC, 0, 1, b"between")) == []
    client.alive(3)


# -- 6.8 GOAWAY -------------------------------------------------------------------


def test_goaway_from_the_client_is_reported():
    """Section 6.8: the client's GOAWAY, with its error code, reaches the
    server so that it stops using the connection."""
    client = Client()
    client.request(1)
    frame = GoAwayFrame(
        0, last_stream_id=0, error_code=ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"debug"
    )
    events = client.send(frame)
    assert [e.error_code for e in events if isinstance(e, PeerGoAway)] == [
        ErrorCodes.ENHANCE_YOUR_CALM
    ]


def test_goaway_of_the_wrong_length():
    """Section 6.8: GOAWAY carries at least 8 bytes, else FRAME_SIZE_ERROR."""
    client = Client()
    client.connection_error(raw(GOAWAY, 0, 0, b"\0\0\0\0\0\0\0"), ErrorCodes.FRAME_SIZE_ERROR)


def test_goaway_on_a_stream():
    """Section 6.8: GOAWAY is for the connection; on a stream, PROTOCOL_ERROR."""
    client = Client()
    client.request(1)
    frame = raw(GOAWAY, 0, 1, b"\0\0\0\0\0\0\0\0")
    client.connection_error(frame, ErrorCodes.PROTOCOL_ERROR)


# -- sending ----------------------------------------------------------------------


class H2Client:
    """An h2 client wired to the driver, to check that what the server
    sends decodes on a real implementation."""

    def __init__(self) -> None:
        self.server = Driver(H2Limits(), Limits())
        self.server.initiate()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.pump()
        self.pump()

    def pump(self) -> list[h2.events.Event]:
        self.server.receive_data(self.conn.data_to_send(), 100.0)
        return list(self.conn.receive_data(self.server.data_to_send()))


def test_a_large_response_header_block_is_split_into_continuations():
    """Sections 4.2 and 6.10: a field block over the peer's max frame size
    goes out as HEADERS + CONTINUATION frames, each within the limit, and
    decodes as one block."""
    pair = H2Client()
    pair.conn.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    # Letters and digits Huffman-code to 5-6 bits: ~35 KB stays >16 KB.
    value = b"".join(b"%05d-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM" % i for i in range(900))
    assert pair.server.send_headers(1, 200, [(b"x-big", value)], end_stream=True)
    data = pair.server.data_to_send()
    out = frames(data)
    assert [f.type for f in out][:2] == [HEADERS, CONTINUATION]
    assert "END_HEADERS" not in out[0].flags and "END_HEADERS" in out[-1].flags
    assert all(isinstance(f, ContinuationFrame) for f in out[1:])
    assert all(len(f.serialize()) - 9 <= 16384 for f in out)
    events = pair.conn.receive_data(data)
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert (b"x-big", value) in response.headers
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_an_empty_end_stream_data_frame_needs_no_window():
    """Section 6.9.1: a zero-length DATA frame with END_STREAM may be sent
    with no window left; a response must be able to end with it."""
    client = Client(settings={INITIAL_WINDOW_SIZE: 0})
    client.request(1)
    server = client.server
    assert server.send_headers(1, 200, [], end_stream=False)
    assert server.window(1) == 0
    assert server.send_data(1, memoryview(b"x"), end_stream=True) == 0
    assert server.send_data(1, memoryview(b""), end_stream=True) == 0
    data = [f for f in client.take() if isinstance(f, DataFrame)]
    assert [(f.data, set(f.flags)) for f in data] == [(b"", {"END_STREAM"})]
    assert server.window(1) == -1


def test_a_stream_ended_on_both_sides_is_gone():
    """Section 5.1: both END_STREAMs close a stream; nothing may be sent."""
    client = Client()
    client.request(1, POST, end_stream=False)
    server = client.server
    assert server.send_headers(1, 200, [], end_stream=False)
    assert server.send_data(1, memoryview(b"done"), end_stream=True) == 4
    assert server.window(1) >= 0  # the client's side is still open
    client.send(DataFrame(1, b"", flags=["END_STREAM"]))
    assert server.window(1) == -1
    assert not server.send_headers(1, 200, [], end_stream=True)
    assert server.send_data(1, memoryview(b"x"), end_stream=True) == -1


# -- h2c upgrade (RFC 7540 section 3.2, referenced by RFC 9113 section 3.1) ---------


def settings_header(settings: dict[int, int]) -> bytes:
    return base64.urlsafe_b64encode(SettingsFrame(0, settings).serialize()[9:]).rstrip(b"=")


@pytest.mark.parametrize("padding", [b"", b"=="], ids=["unpadded", "padded"])
@pytest.mark.parametrize(
    "settings",
    [{INITIAL_WINDOW_SIZE: 16446}, {}, {INITIAL_WINDOW_SIZE: 16446, MAX_FRAME_SIZE: 20000}],
    ids=["url-safe-alphabet", "empty", "two-settings"],
)
def test_h2c_upgrade(settings: dict[int, int], padding: bytes):
    """After ``Upgrade: h2c`` the HTTP2-Settings header stands for the
    client's SETTINGS, and stream 1 is the upgraded request, half-closed
    (remote): the server answers on it and the client goes on with stream 3.

    The header is base64url with the trailing '=' omitted (RFC 7540 section
    3.2.1); its token68 syntax still allows '=' at the end.  A 6n-byte
    SETTINGS payload never needs padding, so the padded spelling adds '=='
    that a decoder must tolerate."""
    header = settings_header(settings) + padding
    if settings:
        assert b"-" in header  # the url-safe alphabet, not '+' or '/'
    server = Driver(H2Limits(), Limits())
    server.initiate_upgrade(header)
    preface = frames(server.data_to_send())
    assert isinstance(preface[0], SettingsFrame) and "ACK" not in preface[0].flags
    assert server.window(1) == settings.get(INITIAL_WINDOW_SIZE, 65535)
    assert not server.remote_open(1)
    encoder = hpack.Encoder()
    server.receive_data(PREFACE + SettingsFrame(0).serialize(), 100.0)
    assert server.send_headers(1, 200, [(b"x-upgraded", b"1")], end_stream=False)
    assert server.send_data(1, memoryview(b"hi"), end_stream=True) == 2
    out = frames(server.data_to_send())
    assert [f.type for f in out if f.stream_id == 1] == [HEADERS, DATA]
    assert server.window(1) == -1
    # Stream 1 is taken: the client's next request is stream 3.
    block = encoder.encode(REQUEST)
    events = server.receive_data(
        HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"]).serialize(), 100.0
    )
    assert requests(events) == [3]


@pytest.mark.parametrize(
    "header",
    [
        b"AAQAAA",  # 4 bytes: not a whole setting
        settings_header({ENABLE_PUSH: 2}),
        settings_header({INITIAL_WINDOW_SIZE: 2**31}),
        settings_header({MAX_FRAME_SIZE: 100}),
    ],
    ids=["truncated", "enable-push-2", "initial-window-2^31", "max-frame-size-100"],
)
def test_h2c_upgrade_with_invalid_settings(header: bytes):
    """An HTTP2-Settings header that is not a valid SETTINGS payload cannot
    start the connection (RFC 7540 section 3.2.1)."""
    server = Driver(H2Limits(), Limits())
    with pytest.raises(ProtocolError):
        server.initiate_upgrade(header)


def test_data_on_the_upgraded_stream():
    """Section 5.1: the upgraded request is complete; DATA from the client
    on stream 1 is a stream error STREAM_CLOSED."""
    server = Driver(H2Limits(), Limits())
    server.initiate_upgrade(settings_header({}))
    server.data_to_send()
    server.receive_data(PREFACE + SettingsFrame(0).serialize(), 100.0)
    server.data_to_send()
    try:
        server.receive_data(DataFrame(1, b"late").serialize(), 100.0)
    except ProtocolError:
        goaway = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
        assert goaway[-1].error_code == ErrorCodes.STREAM_CLOSED
        return
    assert resets(frames(server.data_to_send())) == {1: ErrorCodes.STREAM_CLOSED}


# -- whatever a client sends ------------------------------------------------------------


def _random_frame(
    rnd: random.Random, encoder: hpack.Encoder, next_sid: list[int], known: list[int]
) -> bytes:
    """Mostly well-formed frames on plausible streams, some of them
    mangled: deep enough to reach stream states, odd enough to break rules."""
    odd = rnd.random() < 0.05
    sid = rnd.choice(known) if known and not odd else rnd.choice([0, 1, 2, 2**31 - 1])
    if not known and not odd:
        kind = HEADERS
    else:
        kind = rnd.choice(
            [DATA, DATA, DATA, HEADERS, HEADERS, WINDOW_UPDATE, RST_STREAM]
            + ([CONTINUATION, PRIORITY, SETTINGS, PING, GOAWAY, PUSH_PROMISE, 0x0B] if odd else [])
        )
    flags = rnd.getrandbits(8) if odd else rnd.choice([0, END_STREAM])
    if kind == HEADERS and not odd:
        if rnd.random() < 0.8:
            sid = next_sid[0]
            next_sid[0] += 2
        flags |= END_HEADERS | rnd.choice([0, 0, PADDED, PRIORITY_FLAG])
        fields = [
            (b":method", rnd.choice([b"GET", b"POST", b"POST"])),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", rnd.choice([b"/", b"/x?y=1"])),
        ]
        if rnd.random() < 0.1:
            # Refused on the stream (400, 501) rather than served.
            fields[rnd.randint(0, 3)] = rnd.choice(
                [(b":method", b"CONNECT"), (b":authority", b"a b"), (b":path", b"*")]
            )
        if rnd.random() < 0.2:
            fields.append((b"content-length", rnd.choice([b"0", b"5", b"x"])))
        if rnd.random() < 0.05:
            fields.append(rnd.choice([(b":protocol", b"websocket"), (b"connection", b"x")]))
        payload = bytes(encoder.encode(fields))
        if flags & PADDED:
            payload = bytes((rnd.randint(0, 6),)) + payload + bytes(rnd.randint(0, 6))
        if flags & PRIORITY_FLAG:
            payload = struct.pack(">LB", rnd.choice([0, 1, sid]), 15) + payload
    elif kind == WINDOW_UPDATE and not odd:
        payload = struct.pack(">L", rnd.choice([0, 1, 1000, 65535, MAX_WINDOW]))
    elif kind == RST_STREAM and not odd:
        payload = struct.pack(">L", rnd.choice([0, 8]))
    elif kind == SETTINGS:
        payload = struct.pack(">HL", rnd.randint(1, 9), rnd.choice([0, 1, 16384, 2**24, 2**31]))
    else:
        size = rnd.choice([0, 1, 4, 5, 8, 12, rnd.randint(0, 64), rnd.randint(0, 20000)])
        payload = bytes(size)
    return raw(kind, flags, sid, payload)


@pytest.mark.parametrize("seed", range(4))
def test_whatever_the_client_sends_only_protocol_errors_escape(seed: int):
    """Bad input must end at most its connection: a driver may raise
    ProtocolError (the server then sends GOAWAY and closes), never anything
    else, and must keep answering the streams it reported, whatever
    frames, split anywhere, a client sends.  Deterministic: 150 connections
    per seed, each fed up to 40 frames and answered as the server would."""
    rnd = random.Random(seed)
    reached = 0
    for _ in range(150):
        client = Client()
        encoder, next_sid = client.encoder, [7]
        started: set[int] = set()
        answered: set[int] = set()
        ended: set[int] = set()
        try:
            for _ in range(rnd.randint(1, 40)):
                data = _random_frame(rnd, encoder, next_sid, sorted(started))
                cut = rnd.randint(0, len(data)) if rnd.random() < 0.2 else len(data)
                for piece in (data[:cut], data[cut:]):
                    started |= set(requests(client.send_bytes(piece)))
                for sid in sorted(started - ended):
                    reached += 1
                    if sid not in answered:
                        answered.add(sid)
                        last = rnd.random() < 0.3
                        if not client.server.send_headers(sid, 200, [(b"x", b"y")], last) or last:
                            ended.add(sid)
                            continue
                    last = rnd.random() < 0.5
                    body = memoryview(bytes(rnd.randint(0, 70000)))
                    if client.server.send_data(sid, body, last) < 0 or last:
                        ended.add(sid)
                    if rnd.random() < 0.2:
                        client.server.reset(sid, ErrorCodes.CANCEL)
                        ended.add(sid)
                    client.server.acknowledge(sid, rnd.randint(0, 20000))
                    client.server.window(sid)
                    client.server.remote_open(sid)
                frames(client.server.data_to_send())
        except ProtocolError:
            frames(client.server.data_to_send())
    # The generator reached streams the application would have served.
    assert reached > 100
