"""Conformance tests for the sans-IO WebSocket layer (protocols/websocket.py).

The opening handshake is checked on requests parsed by the real HTTP/1.1
driver from raw bytes, so the header names and values are what the server
hands over.  Frames are built by hand (:func:`frame`), masked as a client
must, so malformed ones are as easy to make as valid ones; what the driver
writes is parsed by :func:`parse_frames`, independently of wsproto.  Every
refusal is checked for its exact close code (RFC 6455 section 7.4.1) and
for the close frame the driver owes the peer.

Section numbers refer to RFC 6455 (WebSocket) and RFC 7692
(permessage-deflate).
"""

from __future__ import annotations

import base64
import hashlib
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, TextMessage
from wsproto.events import Request as WSRequest
from wsproto.extensions import PerMessageDeflate

from flask_async_worker.protocols.errors import ProtocolError
from flask_async_worker.protocols.events import Request
from flask_async_worker.protocols.http11_rules import Limits
from flask_async_worker.protocols.httptools_driver import HttptoolsDriver
from flask_async_worker.protocols.websocket import (
    PONG,
    BoundedDeflate,
    Closed,
    Handshake,
    WSDriver,
    accept_response,
    accept_token,
    is_upgrade,
    negotiate_deflate,
    parse_handshake,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG_OP = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
MASK = b"\x37\xfa\x21\x3d"
LIMIT = 64 * 1024
MB = 1024 * 1024


# -- frames, built and parsed by hand ---------------------------------------------------


def mask(payload: bytes, key: bytes = MASK) -> bytes:
    """XOR with the masking key (section 5.3), fast for megabytes."""
    if not payload:
        return b""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame as a client sends it (masked unless told otherwise);
    ``length`` announces a payload length other than the real one."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + MASK + mask(payload)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes

    def __repr__(self) -> str:
        data = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        flags = ("" if self.fin else " !fin") + (" rsv1" if self.rsv1 else "")
        return f"<Frame op={self.opcode:#x}{flags} {len(self.payload)}B {data!r}>"

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return int.from_bytes(self.payload[:2], "big") if self.payload else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode()


def split_frames(data: bytes | bytearray) -> tuple[list[Frame], bytes]:
    """The complete frames at the start of what a server wrote (which it
    never masks), and the bytes of an incomplete one after them."""
    frames = []
    buf = bytes(data)
    while len(buf) >= 2:
        assert not buf[1] & 0x80, "the server masked a frame"
        n = buf[1] & 0x7F
        start = 2
        if n == 126:
            n, start = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, start = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < start + n:
            break
        frames.append(
            Frame(bool(buf[0] & 0x80), bool(buf[0] & 0x40), buf[0] & 0x0F, buf[start : start + n])
        )
        buf = buf[start + n :]
    return frames, buf


def parse_frames(data: bytes | bytearray) -> list[Frame]:
    """Every frame in what a server wrote, with nothing left over."""
    frames, rest = split_frames(data)
    assert not rest, f"trailing bytes after the frames: {rest[:20]!r}"
    return frames


def deflate(data: bytes, compressor: Any = None) -> bytes:
    """A message's payload compressed as section 7.2.1 says: the final
    empty block's 00 00 ff ff taken off."""
    c = compressor or zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def zeros_bomb(size: int) -> bytes:
    """``size`` zero bytes deflated, without ever holding them."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MB)
    parts = [c.compress(block) for _ in range(size // MB)]
    parts.append(c.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


def driver(limit: int = LIMIT, offer: str | None = None) -> WSDriver:
    """A driver for an accepted WebSocket, with permessage-deflate when
    ``offer`` (a Sec-WebSocket-Extensions offer) was accepted."""
    if offer is None:
        return WSDriver(limit)
    ext = negotiate_deflate([offer], limit)
    assert ext is not None
    return WSDriver(limit, ext)


def feed(ws: WSDriver, *chunks: bytes) -> list[Any]:
    events = []
    for chunk in chunks:
        events += ws.receive_data(chunk)
    return events


def take_output(ws: WSDriver) -> list[Frame]:
    frames = parse_frames(ws.output)
    ws.output.clear()
    return frames


def summary(events: list[Any]) -> list[str]:
    """Events for an assertion message: big messages shortened."""
    out = []
    for e in events:
        if isinstance(e, (str, bytes)):
            out.append(f"{type(e).__name__}({len(e)}): {e[:20]!r}")
        else:
            out.append(repr(e))
    return out


def assert_failed(ws: WSDriver, events: list[Any], code: int) -> None:
    """The driver refused the peer: one failing Closed event with ``code``
    and a close frame with the same code owed to the peer."""
    closes = [e for e in events if isinstance(e, Closed)]
    assert len(closes) == 1, summary(events)
    assert closes[0].code == code and closes[0].fail, closes[0]
    assert not any(isinstance(e, (str, bytes)) for e in events[events.index(closes[0]) :])
    frames = take_output(ws)
    assert [f.opcode for f in frames][-1:] == [CLOSE], frames
    assert frames[-1].close_code == code
    assert len(frames[-1].payload) <= 125
    assert not ws.open
    assert ws.closed == closes[0]


# -- the opening handshake (section 4.2.1) ----------------------------------------------

GOOD_FIELDS = [
    b"Host: example.com",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: " + KEY,
    b"Sec-WebSocket-Version: 13",
]


def request(
    fields: list[bytes] | None = None, line: bytes = b"GET /chat HTTP/1.1", body: bytes = b""
) -> Request:
    """A request head parsed from raw bytes by the server's HTTP/1.1 driver."""
    head = b"\r\n".join([line, *(GOOD_FIELDS if fields is None else fields)]) + b"\r\n\r\n"
    parser = HttptoolsDriver(Limits())
    parser.receive_data(head + body)
    event = parser.next_event()
    assert isinstance(event, Request), event
    return event


def without(*names: bytes) -> list[bytes]:
    lowered = [n.lower() for n in names]
    return [f for f in GOOD_FIELDS if f.split(b":")[0].lower() not in lowered]


def test_valid_handshake() -> None:
    req = request(
        [
            *GOOD_FIELDS,
            b"Sec-WebSocket-Protocol: chat, superchat",
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ]
    )
    assert is_upgrade(req)
    hs = parse_handshake(req)
    assert hs == Handshake(
        KEY, ["chat", "superchat"], ["permessage-deflate; client_max_window_bits"]
    )


@pytest.mark.parametrize(
    "fields",
    [
        [*without(b"connection"), b"Connection: keep-alive, Upgrade"],
        [*without(b"connection"), b"Connection: keep-alive", b"Connection: UPGRADE"],
        [*without(b"upgrade"), b"Upgrade: WebSocket"],
        [*without(b"sec-websocket-key"), b"Sec-WebSocket-Key:   " + KEY + b"  "],
    ],
    ids=["connection-list", "connection-repeated", "upgrade-case", "key-padded-ows"],
)
def test_handshake_variants_a_client_may_send(fields: list[bytes]) -> None:
    req = request(fields)
    assert is_upgrade(req)
    assert parse_handshake(req).key == KEY


@pytest.mark.parametrize(
    "upgrade",
    [b"h2c", b"websocketx", b"", b"h2c, websocket2"],
    ids=["h2c", "prefix", "empty", "list"],
)
def test_other_upgrades_are_not_websocket(upgrade: bytes) -> None:
    req = request([*without(b"upgrade"), b"Upgrade: " + upgrade])
    assert not is_upgrade(req)


def test_upgrade_token_in_a_list_is_websocket() -> None:
    assert is_upgrade(request([*without(b"upgrade"), b"Upgrade: h2c, websocket"]))


BAD_HANDSHAKES: dict[str, tuple[list[bytes], bytes, bytes, str]] = {
    # id: (fields, request line, body, detail)
    "missing-key": (without(b"sec-websocket-key"), b"", b"", "without Sec-WebSocket-Key"),
    "duplicate-key": (
        [*GOOD_FIELDS, b"Sec-WebSocket-Key: " + KEY],
        b"",
        b"",
        "more than one Sec-WebSocket-Key",
    ),
    "key-15-bytes": (
        [*without(b"sec-websocket-key"), b"Sec-WebSocket-Key: " + base64.b64encode(b"x" * 15)],
        b"",
        b"",
        "invalid Sec-WebSocket-Key",
    ),
    "key-17-bytes": (
        [*without(b"sec-websocket-key"), b"Sec-WebSocket-Key: " + base64.b64encode(b"x" * 17)],
        b"",
        b"",
        "invalid Sec-WebSocket-Key",
    ),
    "key-not-base64": (
        [*without(b"sec-websocket-key"), b"Sec-WebSocket-Key: not*base64*at*all*!!=="],
        b"",
        b"",
        "invalid Sec-WebSocket-Key",
    ),
    "key-unpadded": (
        [*without(b"sec-websocket-key"), b"Sec-WebSocket-Key: " + KEY.rstrip(b"=")],
        b"",
        b"",
        "invalid Sec-WebSocket-Key",
    ),
    "key-empty": (
        [*without(b"sec-websocket-key"), b"Sec-WebSocket-Key: "],
        b"",
        b"",
        "invalid Sec-WebSocket-Key",
    ),
    "duplicate-version": (
        [*GOOD_FIELDS, b"Sec-WebSocket-Version: 13"],
        b"",
        b"",
        "more than one Sec-WebSocket-Version",
    ),
    "post": (GOOD_FIELDS, b"POST /chat HTTP/1.1", b"", "must be a GET"),
    "http10": (GOOD_FIELDS, b"GET /chat HTTP/1.0", b"", "needs HTTP/1.1"),
    "content-length-body": (
        [*GOOD_FIELDS, b"Content-Length: 3"],
        b"",
        b"abc",
        "with a request body",
    ),
    "chunked-body": (
        [*GOOD_FIELDS, b"Transfer-Encoding: chunked"],
        b"",
        b"0\r\n\r\n",
        "with a request body",
    ),
    "connection-without-upgrade": (
        [*without(b"connection"), b"Connection: keep-alive"],
        b"",
        b"",
        "without Connection: upgrade",
    ),
    "no-connection": (without(b"connection"), b"", b"", "without Connection: upgrade"),
}


@pytest.mark.parametrize("case", sorted(BAD_HANDSHAKES))
def test_broken_handshake_is_400(case: str) -> None:
    fields, line, body, detail = BAD_HANDSHAKES[case]
    req = request(fields, line or b"GET /chat HTTP/1.1", body)
    with pytest.raises(ProtocolError) as info:
        parse_handshake(req)
    assert info.value.status == 400
    assert detail in info.value.detail
    assert info.value.headers == ()


@pytest.mark.parametrize("version", [b"8", b"12", b"14", b"13, 8", b"thirteen"])
def test_other_version_is_426_naming_13(version: bytes) -> None:
    """Section 4.4: the answer names the version this server speaks."""
    req = request([*without(b"sec-websocket-version"), b"Sec-WebSocket-Version: " + version])
    with pytest.raises(ProtocolError) as info:
        parse_handshake(req)
    assert info.value.status == 426
    assert info.value.headers == ((b"sec-websocket-version", b"13"),)


def test_missing_version_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_handshake(request(without(b"sec-websocket-version")))
    assert info.value.status in (400, 426)


def test_subprotocols_and_extensions_in_offer_order() -> None:
    req = request(
        [
            *GOOD_FIELDS,
            b"Sec-WebSocket-Protocol: chat ,superchat,, ",
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo",
            b"Sec-WebSocket-Protocol: v2.json",
            b"Sec-WebSocket-Extensions: permessage-deflate",
        ]
    )
    hs = parse_handshake(req)
    assert hs.subprotocols == ["chat", "superchat", "v2.json"]
    assert hs.extensions == [
        "permessage-deflate; client_max_window_bits",
        "x-foo",
        "permessage-deflate",
    ]


def test_no_subprotocols_or_extensions() -> None:
    hs = parse_handshake(request())
    assert (hs.subprotocols, hs.extensions) == ([], [])


# -- the answer (section 4.2.2) ---------------------------------------------------------


def test_accept_token_rfc_example() -> None:
    assert accept_token(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    # And for any key: base64(SHA-1(key + GUID)).
    key = base64.b64encode(bytes(range(16)))
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_token(key) == base64.b64encode(hashlib.sha1(key + guid).digest())


def head_fields(response: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    assert response.endswith(b"\r\n\r\n")
    assert response.count(b"\r\n\r\n") == 1
    status, *lines = response[:-4].split(b"\r\n")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        fields.setdefault(name.lower(), []).append(value)
    return status, fields


def test_accept_response_plain() -> None:
    status, fields = head_fields(accept_response(parse_handshake(request()), None, None, []))
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert fields == {
        b"upgrade": [b"websocket"],
        b"connection": [b"Upgrade"],
        b"sec-websocket-accept": [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="],
    }


def test_accept_response_with_subprotocol_extension_and_app_headers() -> None:
    hs = parse_handshake(
        request(
            [
                *GOOD_FIELDS,
                b"Sec-WebSocket-Protocol: chat, superchat",
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            ]
        )
    )
    ext = negotiate_deflate(hs.extensions, LIMIT)
    response = accept_response(hs, "superchat", ext, [(b"x-app", b"1"), (b"set-cookie", b"a=b")])
    status, fields = head_fields(response)
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert fields[b"sec-websocket-accept"] == [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert fields[b"sec-websocket-protocol"] == [b"superchat"]
    assert fields[b"sec-websocket-extensions"] == [
        b"permessage-deflate; client_max_window_bits=15"
    ]
    assert fields[b"x-app"] == [b"1"] and fields[b"set-cookie"] == [b"a=b"]


def test_accept_response_is_what_a_client_accepts() -> None:
    """wsproto's client checks the answer as a browser would."""
    client = WSConnection(ConnectionType.CLIENT)
    wire = client.send(
        WSRequest(
            host="example.com",
            target="/chat",
            subprotocols=["chat"],
            extensions=[PerMessageDeflate()],
        )
    )
    parser = HttptoolsDriver(Limits())
    parser.receive_data(wire)
    req = parser.next_event()
    assert isinstance(req, Request)
    hs = parse_handshake(req)
    ext = negotiate_deflate(hs.extensions, LIMIT)
    assert ext is not None
    client.receive_data(accept_response(hs, "chat", ext, []))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], AcceptConnection), events
    assert events[0].subprotocol == "chat"
    assert [e.name for e in events[0].extensions] == ["permessage-deflate"]


# -- permessage-deflate negotiation (RFC 7692 section 7.1) ------------------------------


@pytest.mark.parametrize(
    ("offers", "params"),
    [
        (["permessage-deflate"], ""),
        (["permessage-deflate; client_max_window_bits"], "client_max_window_bits=15"),
        (
            ["permessage-deflate; client_max_window_bits=10; server_no_context_takeover"],
            "server_no_context_takeover; client_max_window_bits=10",
        ),
        (
            [
                "x-webkit-deflate-frame",
                "permessage-deflate; server_max_window_bits=7",
                "permessage-deflate; client_max_window_bits",
            ],
            "client_max_window_bits=15",
        ),
        (["x-webkit-deflate-frame"], None),
        (["permessage-deflate; server_max_window_bits=7"], None),
        ([], None),
    ],
    ids=[
        "plain",
        "client-max-window-bits",
        "window-10-no-takeover",
        "first-acceptable",
        "unknown",
        "window-too-small",
        "none",
    ],
)
def test_negotiate_deflate(offers: list[str], params: str | None) -> None:
    ext = negotiate_deflate(offers, LIMIT)
    if params is None:
        assert ext is None
        return
    assert isinstance(ext, BoundedDeflate)
    assert ext.accept_params == params
    assert ext.max_message_size == LIMIT


def test_negotiated_window_bits_are_used() -> None:
    ext = negotiate_deflate(["permessage-deflate; client_max_window_bits=10"], LIMIT)
    assert ext is not None
    assert ext.client_max_window_bits == 10
    ws = WSDriver(LIMIT, ext)
    # A message compressed with a 2**10 window by the client inflates.
    c = zlib.compressobj(9, zlib.DEFLATED, -10)
    text = "abcdefghij" * 1000
    assert feed(ws, frame(TEXT, deflate(text.encode(), c), rsv1=True)) == [text]


# -- messages (section 5.4, 5.6) --------------------------------------------------------


def test_text_and_binary_messages() -> None:
    ws = driver()
    events = feed(ws, frame(TEXT, "héllo €".encode()), frame(BINARY, b"\x00\xff\x01"))
    assert events == ["héllo €", b"\x00\xff\x01"]
    assert type(events[1]) is bytes
    assert feed(ws, frame(TEXT), frame(BINARY)) == ["", b""]
    assert not ws.output
    assert ws.open and ws.closed is None


def test_bytes_split_anywhere_give_the_same_messages() -> None:
    wire = frame(TEXT, "héllo €".encode()) + frame(BINARY, bytes(300)) + frame(TEXT, b"x" * 70000)
    expected = ["héllo €", bytes(300), "x" * 70000]
    ws = driver(limit=MB)
    assert feed(ws, *(wire[i : i + 1] for i in range(min(len(wire), 400))), wire[400:]) == expected
    ws = driver(limit=MB)
    assert feed(ws, wire) == expected


def test_fragmented_message_is_reassembled() -> None:
    euro = "€".encode()  # split between fragments: decoded across them
    ws = driver()
    events = feed(
        ws,
        frame(TEXT, b"ab" + euro[:1], fin=False),
        frame(CONT, euro[1:], fin=False),
        frame(CONT, b"", fin=False),
        frame(CONT, b"cd", fin=True),
    )
    assert events == ["ab€cd"]
    events = feed(ws, frame(BINARY, b"12", fin=False), frame(CONT, b"34", fin=True))
    assert events == [b"1234"]
    assert type(events[0]) is bytes
    assert not ws.output


def test_ping_between_fragments_is_answered() -> None:
    """Section 5.4: control frames may come in the middle of a message."""
    ws = driver()
    events = feed(
        ws,
        frame(TEXT, b"hel", fin=False),
        frame(PING, b"are you there"),
        frame(CONT, b"lo", fin=True),
    )
    assert events == ["hello"]
    frames = take_output(ws)
    assert [(f.opcode, f.payload, f.fin) for f in frames] == [(PONG_OP, b"are you there", True)]


def test_ping_is_answered_and_pong_reported() -> None:
    ws = driver()
    assert feed(ws, frame(PING, b"p1"), frame(PING)) == []
    assert [(f.opcode, f.payload) for f in take_output(ws)] == [(PONG_OP, b"p1"), (PONG_OP, b"")]
    assert feed(ws, frame(PONG_OP, b"flask_async_worker")) == [PONG]
    assert not ws.output


def test_send_message_ping_and_close_frames() -> None:
    ws = driver()
    frames = parse_frames(
        ws.send_message("héllo") + ws.send_message(b"\x00\x01") + ws.send_ping(b"x")
    )
    assert [(f.fin, f.rsv1, f.opcode, f.payload) for f in frames] == [
        (True, False, TEXT, "héllo".encode()),
        (True, False, BINARY, b"\x00\x01"),
        (True, False, PING, b"x"),
    ]


# -- the message size limit --------------------------------------------------------------


def test_message_at_the_limit_is_delivered() -> None:
    ws = driver()
    assert feed(ws, frame(BINARY, bytes(LIMIT))) == [bytes(LIMIT)]
    parts = [frame(BINARY, bytes(LIMIT // 4), fin=False)]
    parts += [frame(CONT, bytes(LIMIT // 4), fin=False) for _ in range(2)]
    parts.append(frame(CONT, bytes(LIMIT // 4), fin=True))
    assert feed(ws, *parts) == [bytes(LIMIT)]
    # The count starts again with each message.
    assert feed(ws, frame(TEXT, b"a" * LIMIT), frame(TEXT, b"b" * LIMIT)) == [
        "a" * LIMIT,
        "b" * LIMIT,
    ]


def test_message_over_the_limit_is_1009() -> None:
    ws = driver()
    events = feed(ws, frame(BINARY, bytes(LIMIT + 1)))
    assert_failed(ws, events, 1009)


def test_fragments_adding_up_over_the_limit_are_1009() -> None:
    """Each fragment is small; the message is not."""
    ws = driver()
    events = feed(ws, frame(TEXT, b"x" * 1000, fin=False))
    assert events == []
    for _ in range(LIMIT // 1000 + 1):
        events += feed(ws, frame(CONT, b"x" * 1000, fin=False))
        if events:
            break
    assert_failed(ws, events, 1009)


def test_huge_announced_frame_is_stopped_at_the_limit() -> None:
    """A frame announcing 2**62 bytes is refused once the limit is passed,
    not buffered until it ends."""
    ws = driver()
    head = frame(BINARY, b"", length=2**62)
    payload = mask(bytes(LIMIT + 10))  # the key's phase is kept by starting at 0
    chunks = [payload[i : i + 8192] for i in range(0, len(payload), 8192)]
    events = feed(ws, head, *chunks)
    assert_failed(ws, events, 1009)


def test_text_limit_counts_bytes_not_characters() -> None:
    """ws_max_message_size is in bytes: a text message of LIMIT characters
    of four bytes each is four times over it."""
    ws = driver()
    text = "😀" * (LIMIT // 2)  # 2 * LIMIT bytes of UTF-8
    events = feed(ws, frame(TEXT, text.encode()))
    assert_failed(ws, events, 1009)


def test_nothing_is_delivered_after_a_failure() -> None:
    ws = driver()
    events = feed(ws, frame(BINARY, bytes(LIMIT + 1)) + frame(TEXT, b"late"))
    assert_failed(ws, events, 1009)
    assert [e for e in feed(ws, frame(TEXT, b"later")) if not isinstance(e, Closed)] == []


# -- protocol violations (section 5, 7.4.1) ---------------------------------------------

VIOLATIONS: dict[str, tuple[bytes, int]] = {
    "unmasked": (frame(TEXT, b"hi", masked=False), 1002),
    "unmasked-ping": (frame(PING, b"", masked=False), 1002),
    "invalid-utf8": (frame(TEXT, b"ab\xff\xfe"), 1007),
    "utf8-surrogate": (frame(TEXT, b"\xed\xa0\x80"), 1007),
    "invalid-utf8-across-fragments": (
        frame(TEXT, b"ab\xe2\x82", fin=False) + frame(CONT, b"\x28", fin=True),
        1007,
    ),
    "truncated-utf8-at-end": (frame(TEXT, b"ab\xe2\x82"), 1007),
    "fragmented-ping": (frame(PING, b"x", fin=False), 1002),
    "fragmented-close": (frame(CLOSE, close_payload(1000), fin=False), 1002),
    "control-too-long": (frame(PING, b"x" * 126), 1002),
    "reserved-opcode-3": (frame(0x3, b"x"), 1002),
    "reserved-opcode-7": (frame(0x7, b"x"), 1002),
    "reserved-control-opcode-b": (frame(0xB, b""), 1002),
    "reserved-control-opcode-f": (frame(0xF, b""), 1002),
    "rsv1-without-extension": (frame(TEXT, b"x", rsv1=True), 1002),
    "rsv2": (bytes([0x80 | 0x20 | TEXT, 0x80 | 1]) + MASK + mask(b"x"), 1002),
    "rsv3": (bytes([0x80 | 0x10 | BINARY, 0x80 | 1]) + MASK + mask(b"x"), 1002),
    "continuation-first": (frame(CONT, b"x"), 1002),
    "new-message-inside-fragmented": (
        frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"),
        1002,
    ),
    "length-not-minimal-16": (bytes([0x82, 0x80 | 126, 0, 5]) + MASK + mask(b"12345"), 1002),
    "length-not-minimal-64": (
        bytes([0x82, 0x80 | 127]) + (5).to_bytes(8, "big") + MASK + mask(b"12345"),
        1002,
    ),
    "length-msb-set": (bytes([0x82, 0x80 | 127]) + (2**63 + 5).to_bytes(8, "big") + MASK, 1002),
    "close-one-byte": (frame(CLOSE, b"\x03"), 1002),
    "close-code-1005-on-wire": (frame(CLOSE, close_payload(1005)), 1002),
    "close-code-1006-on-wire": (frame(CLOSE, close_payload(1006)), 1002),
    "close-code-999": (frame(CLOSE, close_payload(999)), 1002),
    "close-code-5000": (frame(CLOSE, close_payload(5000)), 1002),
    "close-reason-invalid-utf8": (frame(CLOSE, close_payload(1000) + b"\xff"), 1007),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_protocol_violation_is_failed_with_its_code(case: str) -> None:
    data, code = VIOLATIONS[case]
    ws = driver()
    events = feed(ws, frame(TEXT, b"before"), data)
    assert events[0] == "before"
    assert_failed(ws, events[1:], code)


@pytest.mark.parametrize("case", ["unmasked", "invalid-utf8", "fragmented-ping"])
def test_violation_fed_byte_by_byte(case: str) -> None:
    data, code = VIOLATIONS[case]
    ws = driver()
    events = feed(ws, *(data[i : i + 1] for i in range(len(data))))
    assert_failed(ws, events, code)


# -- the closing handshake (section 5.5.1, 7) -------------------------------------------


def test_peer_closes_first_and_gets_its_code_echoed() -> None:
    ws = driver()
    events = feed(ws, frame(TEXT, b"last"), frame(CLOSE, close_payload(1000, "bye")))
    assert events == ["last", Closed(1000, "bye")]
    frames = take_output(ws)
    assert [(f.opcode, f.close_code) for f in frames] == [(CLOSE, 1000)]
    assert ws.close_done and not ws.open
    # Nothing more: not a second close, not what the peer sends after.
    assert ws.send_close(1001) == b""
    assert feed(ws, frame(TEXT, b"after"), frame(CLOSE, close_payload(1000))) == []
    assert not ws.output


@pytest.mark.parametrize(
    "after",
    [frame(TEXT, b"after"), frame(PING, b"p"), frame(TEXT, b"x", masked=False)],
    ids=["message", "ping", "violation"],
)
def test_bytes_behind_the_peers_close_are_ignored(after: bytes) -> None:
    """Section 5.5.1: nothing follows a close frame; what does is dropped
    (no message, no pong, no second close)."""
    ws = driver()
    events = feed(ws, frame(CLOSE, close_payload(1000)) + after)
    assert events == [Closed(1000, "")]
    assert [f.close_code for f in take_output(ws)] == [1000]


@pytest.mark.parametrize("code", [1001, 1011, 3000, 4999])
def test_peer_close_codes_are_reported(code: int) -> None:
    ws = driver()
    assert feed(ws, frame(CLOSE, close_payload(code, "why"))) == [Closed(code, "why")]
    assert take_output(ws)[0].close_code == code


def test_peer_close_without_code_is_1005() -> None:
    ws = driver()
    assert feed(ws, frame(CLOSE)) == [Closed(1005, "")]
    frames = take_output(ws)
    assert len(frames) == 1 and frames[0].opcode == CLOSE
    # 1005 is never put on the wire: the echo carries no code.
    assert frames[0].payload == b""
    assert ws.close_done


def test_server_closes_first_then_peer_replies() -> None:
    ws = driver()
    frames = parse_frames(ws.send_close(1001, "going away"))
    assert [(f.opcode, f.close_code, f.close_reason) for f in frames] == [
        (CLOSE, 1001, "going away")
    ]
    assert ws.closed == Closed(1001, "going away")
    done_before_reply = ws.close_done
    assert not done_before_reply
    # Messages still in flight from the peer are not delivered; its pings
    # are not answered once this side closed.
    assert feed(ws, frame(TEXT, b"in flight"), frame(PING, b"p")) == []
    assert not ws.output
    events = feed(ws, frame(CLOSE, close_payload(1001)))
    assert events == [Closed(1001, "going away")]
    assert not ws.output  # the handshake is over: no second close frame
    assert ws.close_done
    assert ws.send_close(1000) == b""


def test_send_close_twice_sends_one_frame() -> None:
    ws = driver()
    assert ws.send_close(1000)
    assert ws.send_close(1000) == b""


@pytest.mark.parametrize(
    ("code", "sent"),
    [
        (1000, 1000),
        (1001, 1001),
        (1008, 1008),
        (1011, 1011),
        (1014, 1014),
        (3000, 3000),
        (4999, 4999),
        (999, 1000),
        (1004, 1000),
        (1005, 1000),
        (1006, 1000),
        (1015, 1000),
        (1016, 1000),
        (2999, 1000),
        (5000, 1000),
        (0, 1000),
    ],
)
def test_send_close_puts_only_sendable_codes_on_the_wire(code: int, sent: int) -> None:
    ws = driver()
    frames = parse_frames(ws.send_close(code))
    assert [f.close_code for f in frames] == [sent]
    assert ws.closed == Closed(sent, "")


def test_send_close_cuts_a_long_reason_to_fit() -> None:
    """Control frames carry at most 125 bytes (section 5.5): two for the
    code, the reason cut on a character boundary."""
    ws = driver()
    reason = "é" * 100  # 200 bytes
    frames = parse_frames(ws.send_close(1000, reason))
    payload = frames[0].payload
    assert len(payload) <= 125
    cut = frames[0].close_reason  # valid UTF-8, or this raises
    assert reason.startswith(cut) and len(cut) >= 60
    assert ws.closed == Closed(1000, cut)


def test_close_reply_after_server_close_from_peer_with_other_code() -> None:
    """The app hears the code it closed with, whatever the reply says."""
    ws = driver()
    ws.send_close(4000, "done")
    assert feed(ws, frame(CLOSE, close_payload(1000))) == [Closed(4000, "done")]


# -- permessage-deflate (RFC 7692) ------------------------------------------------------

OFFER = "permessage-deflate; client_max_window_bits"


def test_compressed_messages_round_trip() -> None:
    """The client's compressor keeps its context from message to message
    (no client_no_context_takeover): the server's inflater must too."""
    ws = driver(offer=OFFER)
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    texts = ["héllo " * 50, "héllo " * 50 + "again", "€"]
    events = feed(ws, *(frame(TEXT, deflate(t.encode(), c), rsv1=True) for t in texts))
    assert events == texts
    # Binary, and uncompressed messages on a compressing connection.
    data = bytes(range(256)) * 10
    events = feed(ws, frame(BINARY, deflate(data, c), rsv1=True), frame(TEXT, b"plain"))
    assert events == [data, "plain"]
    assert not ws.output


def test_compressed_fragmented_message() -> None:
    ws = driver(offer=OFFER)
    text = "fragmented " * 500
    payload = deflate(text.encode())
    third = len(payload) // 3
    events = feed(
        ws,
        frame(TEXT, payload[:third], fin=False, rsv1=True),
        frame(CONT, payload[third : 2 * third], fin=False),
        frame(CONT, payload[2 * third :], fin=True),
    )
    assert events == [text]


def test_ping_between_compressed_fragments() -> None:
    """Section 5.4 allows a control frame between the fragments of any
    message, compressed ones included (RFC 7692 compresses the message,
    not the frame)."""
    ws = driver(offer=OFFER)
    text = "fragmented " * 500
    payload = deflate(text.encode())
    half = len(payload) // 2
    events = feed(
        ws,
        frame(TEXT, payload[:half], fin=False, rsv1=True),
        frame(PING, b"keepalive"),
        frame(CONT, payload[half:], fin=True),
    )
    assert summary(events) == summary([text]) and events == [text]
    assert [(f.opcode, f.payload) for f in take_output(ws)] == [(PONG_OP, b"keepalive")]


def test_server_messages_are_compressed_for_the_client() -> None:
    """What the server sends decodes with a client-side permessage-deflate."""
    ext = negotiate_deflate([OFFER], LIMIT)
    assert ext is not None
    ws = WSDriver(LIMIT, ext)
    client_ext = PerMessageDeflate()
    client_ext.finalize(ext.accept_params)
    client = Connection(ConnectionType.CLIENT, [client_ext])
    text = "compress me " * 200
    wire = ws.send_message(text) + ws.send_message(b"\x00" * 5000) + ws.send_message(text)
    frames = parse_frames(wire)
    assert all(f.rsv1 for f in frames)
    assert len(wire) < len(text)  # it was compressed
    client.receive_data(wire)
    got = [e.data for e in client.events() if isinstance(e, (TextMessage, BytesMessage))]
    assert got == [text, b"\x00" * 5000, text]


def test_the_server_compressor_holds_a_small_window() -> None:
    """A socket that sends compressed messages keeps its compressor for
    as long as it is open: it holds a 4 KiB window (~38 KiB of zlib state,
    against ~262 KiB at zlib's defaults), which a client's full-window
    inflater reads unchanged."""
    import random

    ext = negotiate_deflate([OFFER], LIMIT)
    assert ext is not None
    ws = WSDriver(LIMIT, ext)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        wire = ws.send_message("warm up " * 10)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024, held
    # Text with repeats further apart than the window, then within it.
    rnd = random.Random(7)
    words = ["".join(rnd.choice("abcdefgh") for _ in range(6)) for _ in range(2000)]
    text = " ".join(words) * 3
    wire += ws.send_message(text)
    client_ext = PerMessageDeflate()
    client_ext.finalize(ext.accept_params)
    client = Connection(ConnectionType.CLIENT, [client_ext])
    client.receive_data(wire)
    got = [e.data for e in client.events() if isinstance(e, TextMessage)]
    assert got == ["warm up " * 10, text]


def test_compressed_message_at_the_limit_is_delivered() -> None:
    ws = driver(offer=OFFER)
    assert feed(ws, frame(BINARY, deflate(bytes(LIMIT)), rsv1=True)) == [bytes(LIMIT)]
    # The inflation budget is per message, not per connection.
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    three_quarters = bytes(LIMIT * 3 // 4)
    events = feed(ws, *(frame(BINARY, deflate(three_quarters, c), rsv1=True) for _ in range(3)))
    assert events == [three_quarters] * 3


def test_compressed_message_over_the_limit_is_1009() -> None:
    ws = driver(offer=OFFER)
    events = feed(ws, frame(BINARY, deflate(bytes(LIMIT + 1)), rsv1=True))
    assert_failed(ws, events, 1009)


def test_compressed_fragments_adding_up_over_the_limit_are_1009() -> None:
    ws = driver(offer=OFFER)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = bytes(LIMIT // 4)
    events = feed(
        ws, frame(BINARY, c.compress(piece) + c.flush(zlib.Z_SYNC_FLUSH), fin=False, rsv1=True)
    )
    for _ in range(5):
        events += feed(ws, frame(CONT, c.compress(piece) + c.flush(zlib.Z_SYNC_FLUSH), fin=False))
        if events:
            break
    assert_failed(ws, events, 1009)


@dataclass
class Cost:
    seconds: float = 0.0
    peak: int = 0


@contextmanager
def measured() -> Iterator[Cost]:
    """Wall time and the peak of Python's allocations (zlib's included)."""
    cost = Cost()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        cost.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


BOMB = 50 * MB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = zeros_bomb(BOMB)
    assert len(data) < 100 * 1024  # about a thousand to one
    return data


@pytest.mark.parametrize("chunk", [None, 4096], ids=["one-chunk", "4k-chunks"])
def test_deflate_bomb_is_stopped_at_the_limit(bomb: bytes, chunk: int | None) -> None:
    """50 MiB of zeros in 50 KiB: inflation stops at the limit, so neither
    time nor memory grows with what the bomb would inflate to."""
    limit = MB
    ws = driver(limit, OFFER)
    wire = frame(BINARY, bomb, rsv1=True)
    chunks = [wire] if chunk is None else [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
    with measured() as cost:
        events = feed(ws, *chunks)
    assert_failed(ws, events, 1009)
    assert cost.seconds < 1.0, f"{cost.seconds:.2f}s"
    # The wire bytes are already held; on top, about one message's worth.
    assert cost.peak < 3 * limit, f"peak {cost.peak / MB:.1f} MiB"


def test_deflate_bomb_in_fragments_is_stopped_at_the_limit() -> None:
    """Many small compressed frames of one message: the budget spans them."""
    limit = MB
    ws = driver(limit, OFFER)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MB // 2)
    parts = [frame(BINARY, c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH), fin=False, rsv1=True)]
    parts += [
        frame(CONT, c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH), fin=False) for _ in range(99)
    ]
    wire = b"".join(parts)
    assert len(wire) < 200 * 1024
    with measured() as cost:
        events = feed(ws, wire)
    assert_failed(ws, events, 1009)
    assert cost.seconds < 1.0, f"{cost.seconds:.2f}s"
    assert cost.peak < 3 * limit, f"peak {cost.peak / MB:.1f} MiB"


def test_deflate_bomb_with_pings_between_fragments_is_stopped() -> None:
    """A control frame between the fragments of a compressed message must
    neither end its decompression nor reset its inflation budget: the
    fragments after a ping still inflate, and the message is still 1009."""
    limit = MB
    ws = driver(limit, OFFER)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MB // 2)
    parts = [frame(BINARY, c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH), fin=False, rsv1=True)]
    for _ in range(99):
        parts.append(frame(PING, b"reset?"))
        parts.append(frame(CONT, c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH), fin=False))
    parts.append(frame(CONT, c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH), fin=True))
    with measured() as cost:
        events = feed(ws, b"".join(parts))
    assert cost.peak < 3 * limit, f"peak {cost.peak / MB:.1f} MiB"
    delivered = [e for e in events if isinstance(e, bytes)]
    assert not delivered, f"a corrupted message was delivered: {summary(delivered)}"
    assert_failed(ws, events, 1009)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(TEXT, b"not deflate at all \xff\xff\xff", rsv1=True), 1007),
        (frame(TEXT, deflate(b"ab\xff"), rsv1=True), 1007),
        (frame(TEXT, deflate(b"a"), rsv1=True, fin=False) + frame(CONT, b"x", rsv1=True), 1002),
        (frame(PING, b"x", rsv1=True), 1002),
    ],
    ids=["not-deflate", "inflates-to-invalid-utf8", "rsv1-on-continuation", "rsv1-on-ping"],
)
def test_compression_violations(data: bytes, code: int) -> None:
    ws = driver(offer=OFFER)
    assert_failed(ws, feed(ws, data), code)


def test_received_messages_are_counted_in_wire_bytes() -> None:
    """BODY_BUFFER bounds the messages queued ahead of the app in bytes: a
    text message counts its UTF-8 size, up to four bytes a character."""
    from flask_async_worker.server_ws import _size

    assert _size(b"\xff" * 10) == 10
    assert _size("plain ascii") == 11
    assert _size("é" * 10) == 20
    assert _size("\U0001f600" * 10) == 40
    # A lone surrogate (a client cannot send one; the count must not fail).
    assert _size("\ud800") == 3
