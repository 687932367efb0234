"""PROXY protocol v1/v2 header parsing (flask_async_worker.protocols.proxy).

Section numbers refer to
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest

from flask_async_worker.protocols.errors import ProtocolError
from flask_async_worker.protocols.proxy import ProxyInfo, parse_proxy_header

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
UNKNOWN_V1 = ProxyInfo(1, "UNKNOWN", None, None, None, None)
UNKNOWN_V2 = ProxyInfo(2, "UNKNOWN", None, None, None, None)


def v2(
    body: bytes = b"", *, ver_cmd: int = 0x21, fam: int = 0x11, length: int | None = None
) -> bytes:
    """A v2 header whose length field defaults to the body's real length."""
    size = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + bytes_ports(sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + bytes_ports(sport, dport)
    )


def bytes_ports(sport: int, dport: int) -> bytes:
    return sport.to_bytes(2, "big") + dport.to_bytes(2, "big")


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
V1_LONGEST_TCP6 = (
    b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)
# §2.1 worst case: 107 bytes including the CRLF.
V1_LONGEST_UNKNOWN = b"PROXY UNKNOWN " + b"f" * 91 + b"\r\n"
V2_TCP4 = v2(inet("192.0.2.1", "198.51.100.7", 56324, 443))
V2_TCP6 = v2(inet6("2001:db8::1", "2001:db8::2", 56324, 443), fam=0x21)

VALID: list[tuple[bytes, ProxyInfo]] = [
    (V1_TCP4, ProxyInfo(1, "TCP4", "192.0.2.1", 56324, "198.51.100.7", 443)),
    (V1_TCP6, ProxyInfo(1, "TCP6", "2001:db8::1", 56324, "2001:db8::2", 443)),
    (
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        ProxyInfo(1, "TCP4", "0.0.0.0", 0, "255.255.255.255", 65535),
    ),
    (
        V1_LONGEST_TCP6,
        ProxyInfo(
            1,
            "TCP6",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
        ),
    ),
    # §2.1: hex digits may be upper or lower case; v1 addresses are kept as
    # sent, like gunicorn does.
    (
        b"PROXY TCP6 2001:DB8::A ::ffff:192.0.2.1 1 2\r\n",
        ProxyInfo(1, "TCP6", "2001:DB8::A", 1, "::ffff:192.0.2.1", 2),
    ),
    (b"PROXY TCP6 :: ::1 10 20\r\n", ProxyInfo(1, "TCP6", "::", 10, "::1", 20)),
    # §2.1: UNKNOWN, with or without the optional rest of the line.
    (b"PROXY UNKNOWN\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN 192.0.2.1 198.51.100.7 1 2\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN whatever \x00\xff\r junk\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN \r\n", UNKNOWN_V1),
    (V1_LONGEST_UNKNOWN, UNKNOWN_V1),
    (V2_TCP4, ProxyInfo(2, "TCP4", "192.0.2.1", 56324, "198.51.100.7", 443)),
    (V2_TCP6, ProxyInfo(2, "TCP6", "2001:db8::1", 56324, "2001:db8::2", 443)),
    (
        v2(inet("0.0.0.0", "255.255.255.255", 0, 65535)),
        ProxyInfo(2, "TCP4", "0.0.0.0", 0, "255.255.255.255", 65535),
    ),
    (
        v2(inet6("::ffff:192.0.2.1", "::", 1, 2), fam=0x21),
        ProxyInfo(2, "TCP6", "::ffff:192.0.2.1", 1, "::", 2),
    ),
    # §2.2: TLVs after the address block are covered by the length, skipped.
    (
        v2(inet("10.0.0.1", "10.0.0.2", 1, 2) + tlv(0x01, b"h2") + tlv(0x04, b"")),
        ProxyInfo(2, "TCP4", "10.0.0.1", 1, "10.0.0.2", 2),
    ),
    (
        v2(inet6("::1", "::2", 3, 4) + tlv(0x20, bytes(5)), fam=0x21),
        ProxyInfo(2, "TCP6", "::1", 3, "::2", 4),
    ),
    # §2.2: LOCAL discards the whole block, family byte included.
    (v2(ver_cmd=0x20, fam=0x00), UNKNOWN_V2),
    (v2(inet("10.0.0.1", "10.0.0.2", 1, 2), ver_cmd=0x20), UNKNOWN_V2),
    (v2(b"\xff" * 5, ver_cmd=0x20, fam=0xFF), UNKNOWN_V2),
    # §2.2: UNSPEC family or transport: address information is ignored.
    (v2(fam=0x00), UNKNOWN_V2),
    (v2(b"ignored", fam=0x00), UNKNOWN_V2),
    (v2(fam=0x10), UNKNOWN_V2),
    (v2(fam=0x01), UNKNOWN_V2),
    (v2(fam=0x20), UNKNOWN_V2),
    # §2.2: unsupported valid combinations fall back to UNSPEC.
    (v2(inet("10.0.0.1", "10.0.0.2", 53, 53), fam=0x12), UNKNOWN_V2),
    (v2(inet6("::1", "::2", 53, 53), fam=0x22), UNKNOWN_V2),
    (v2(b"/run/a.sock".ljust(108, b"\0") + bytes(108), fam=0x31), UNKNOWN_V2),
    (v2(bytes(216), fam=0x32), UNKNOWN_V2),
]
VALID_IDS = [f"{i}-{data[:20]!r}" for i, (data, _) in enumerate(VALID)]


def mode_for(data: bytes) -> str:
    return "v2" if data.startswith(SIG) else "v1"


def other_mode(data: bytes) -> str:
    return "v1" if data.startswith(SIG) else "v2"


def first_failure(data: bytes, mode: str) -> int:
    """The shortest prefix of ``data`` that raises; every shorter one must
    ask for more bytes."""
    for size in range(len(data) + 1):
        try:
            result = parse_proxy_header(data[:size], mode)
        except ProtocolError:
            return size
        assert result is None, (size, result)
    pytest.fail("never raised")


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
@pytest.mark.parametrize("explicit", [True, False], ids=["exact-mode", "auto"])
def test_valid_header_followed_by_http(data: bytes, expected: ProxyInfo, explicit: bool) -> None:
    mode = mode_for(data) if explicit else "auto"
    assert parse_proxy_header(data + HTTP, mode) == (expected, len(data))
    assert parse_proxy_header(data, mode) == (expected, len(data))


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_byte_by_byte(data: bytes, expected: ProxyInfo) -> None:
    stream = data + HTTP
    buf = bytearray()
    results = []
    for byte in stream:
        buf.append(byte)
        snapshot = bytes(buf)
        results.append(parse_proxy_header(buf, "auto"))
        assert buf == snapshot  # the caller's buffer is never consumed
    assert results[: len(data) - 1] == [None] * (len(data) - 1)
    assert results[len(data) - 1 :] == [(expected, len(data))] * (len(HTTP) + 1)
    consumed = len(data)
    assert stream[consumed:] == HTTP


@pytest.mark.parametrize("data", [V1_TCP4, V2_TCP4, b"PROXY UNKNOWN\r\n", v2(ver_cmd=0x20)])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_accepts_bytes_and_bytearray(data: bytes, kind: type[bytes] | type[bytearray]) -> None:
    result = parse_proxy_header(kind(data), "auto")
    assert result is not None
    assert result[1] == len(data)


@pytest.mark.parametrize("mode", ["v1", "v2", "auto"])
def test_empty_buffer_needs_more(mode: str) -> None:
    assert parse_proxy_header(b"", mode) is None
    assert parse_proxy_header(bytearray(), mode) is None


@pytest.mark.parametrize("mode", ["", "V1", "off", "both", "v3"])
def test_unknown_mode_is_a_programming_error(mode: str) -> None:
    with pytest.raises(ValueError, match="mode"):
        parse_proxy_header(V1_TCP4, mode)


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_version_the_mode_does_not_allow(data: bytes, expected: ProxyInfo) -> None:
    # The signatures differ in the first byte, so the very first one decides.
    assert first_failure(data, other_mode(data)) == 1
    with pytest.raises(ProtocolError, match=f"only {other_mode(data)} is accepted"):
        parse_proxy_header(data, other_mode(data))


@pytest.mark.parametrize("mode", ["v1", "v2", "auto"])
@pytest.mark.parametrize(
    ("data", "size_if_v1_allowed"),
    [
        (HTTP, 1),
        (b"POST / HTTP/1.1\r\n", 2),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 3),
        (b"\x16\x03\x01\x02\x00", 1),  # a TLS ClientHello
        (b" PROXY TCP4", 1),
        (b"\n\r\n\r\x00", 1),
        (b"\x00", 1),
    ],
)
def test_no_proxy_header_is_refused_at_once(
    data: bytes, size_if_v1_allowed: int, mode: str
) -> None:
    # §2: the receiver "must not try to guess whether the protocol header is
    # present or not", so plain HTTP is an error, not a pass-through.
    assert first_failure(data, mode) == (1 if mode == "v2" else size_if_v1_allowed)
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(data, mode)
    assert info.value.status == 400


def at(data: bytes, marker: bytes) -> int:
    """Prefix length ending with the first byte of ``marker``."""
    return data.index(marker) + 1


EARLY_V1: list[tuple[bytes, int]] = [
    # §2.1: exact "PROXY" and exactly one space.
    (b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 5),
    (b"PRoXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 3),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 1),
    (b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", 6),
    (b"PROXY\r\n", 6),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 7),
    # Protocol names are exact and case sensitive.
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 7),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 10),
    (b"PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n", 10),
    (b"PROXY TCP4\r\n", 12),
    (b"PROXY TCP41 1.2.3.4 5.6.7.8 1 2\r\n", 11),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 8),
    (b"PROXY UNKNOWNX\r\n", 14),
    (b"PROXY UNKNOWN\r\r\n", 15),
    (b"PROXY \r\n", 8),
    # Address and port characters are checked as they arrive.
    (b"PROXY TCP4 1::2 5.6.7.8 1 2\r\n", 13),
    (b"PROXY TCP4 1.2.3.4x 5.6.7.8 1 2\r\n", 19),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", 19),
    (b"PROXY TCP6 ::g ::1 1 2\r\n", 14),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", 28),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 28),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n", 29),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n", 29),
    # ... and a field too long for its kind is refused before its end.
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", 33),
    (b"PROXY TCP4 1111111111111111 5.6.7.8 1 2\r\n", 27),
    (b"PROXY TCP6 " + b"0:" * 23 + b" ::1 1 2\r\n", 11 + 46),
    # Each completed field is validated when its separator arrives.
    (b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", 21),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", 20),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", 17),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8.9 1 2\r\n", 29),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", 29),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", 19),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 19),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", 31),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", 30),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 33),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 12),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", 20),
    # A fifth field or a trailing space.
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 31),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 31),
    # The line ends with CRLF, not a bare CR or LF.
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 32),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 30),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", 31),
    (b"PROXY TCP4 1.2.3.4\r\n", 20),
    # §2.1: 107 bytes including the CRLF is the most a receiver buffers.
    (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", 107),
    (b"PROXY UNKNOWN " + b"f" * 200, 107),
    (b"PROXY UNKNOWN \n" + b"x" * 200, 107),
    (b"PROXY TCP6 " + b":" * 200, 11 + 46),
    # UNKNOWN is followed by a space or the CRLF, nothing else.
    (b"PROXY UNKNOWN\n" + b"x" * 200, 14),
]


@pytest.mark.parametrize(("data", "size"), EARLY_V1, ids=[repr(d[:40]) for d, _ in EARLY_V1])
@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_malformed_v1_refused_as_early_as_possible(data: bytes, size: int, mode: str) -> None:
    assert first_failure(data, mode) == size


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1",
        b"PROXY TCP4 1.2.3.4 5.6.7.8",
        b"PROXY TCP4",
        b"PROXY TCP6 ::1 ::2 1 2 3",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 ",
        b"PROXY TCP4 1.2.3.4 5.6.7.8  2",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 02",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 8_0",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa1",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -0",
        b"PROXY TCP4 1.2.3.4 ::1 1 2",
        b"PROXY TCP4 1.2.3.4 5.6.7.08 1 2",
        b"PROXY TCP4 1.2.3.4 5.6.7 1 2",
        b"PROXY TCP4 1.2.3.4 5.6.7.8. 1 2",
        b"PROXY TCP4 1.2.3.4 .5.6.7.8 1 2",
        b"PROXY TCP4 1.2.3.4 1.2.3.256 1 2",
        b"PROXY TCP6 ::1 1.2.3.4 1 2",
        b"PROXY TCP6 ::1 ::1::2 1 2",
        b"PROXY TCP6 ::1 12345:: 1 2",
        b"PROXY TCP6 ::1 : 1 2",
        b"PROXY TCP6 ::1 ::: 1 2",
        b"PROXY TCP6 ::1 1:2:3:4:5:6:7 1 2",
        b"PROXY TCP6 ::1 ::ffff:1.2.3.256 1 2",
        b"PROXY TCP6 ::1 ::1%1 1 2",
        b"PROXY TCP6 ::1 [::1] 1 2",
        b"PROXY TCP6  ::1 1 2",
        b"PROXY tcp6 ::1 ::2 1 2",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00",
        b"PROXY Unknown",
        b"PROXY",
        b"PROXY ",
    ],
)
@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_malformed_complete_v1_line(line: bytes, mode: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(line + b"\r\n" + HTTP, mode)
    assert info.value.status == 400


def test_v1_length_limit_is_exactly_107_bytes() -> None:
    assert len(V1_LONGEST_UNKNOWN) == 107
    assert parse_proxy_header(V1_LONGEST_UNKNOWN + HTTP, "v1") == (UNKNOWN_V1, 107)
    too_long = b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n"
    with pytest.raises(ProtocolError, match="107"):
        parse_proxy_header(too_long, "v1")
    # 106 bytes without a CRLF may still end in one: wait.
    assert parse_proxy_header(V1_LONGEST_UNKNOWN[:106], "v1") is None


EARLY_V2: list[tuple[bytes, int]] = [
    # §2.2: every signature byte is checked as it arrives.
    *((SIG[:i] + bytes([SIG[i] ^ 0x01]) + SIG[i + 1 :], i + 1) for i in range(1, 12)),
    # §2.2: version nibble must be 2.
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x11), 13),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x31), 13),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x01), 13),
    (v2(ver_cmd=0x10), 13),
    # §2.2: command must be LOCAL or PROXY.
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x22), 13),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x2F), 13),
    # §2.2: unassigned family or transport nibble under PROXY.
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), fam=0x41), 14),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), fam=0xF1), 14),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), fam=0x13), 14),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), fam=0x1F), 14),
    (v2(fam=0x03), 14),
    # §2.2: an address block shorter than the family needs is refused as
    # soon as the length field is read, without waiting for the block.
    (v2(bytes(11), fam=0x11), 16),
    (v2(fam=0x11), 16),
    (v2(bytes(11), fam=0x12), 16),
    (v2(bytes(35), fam=0x21), 16),
    (v2(inet("1.2.3.4", "5.6.7.8", 1, 2), fam=0x21), 16),
    (v2(bytes(35), fam=0x22), 16),
    (v2(bytes(215), fam=0x31), 16),
    (v2(bytes(100), fam=0x32), 16),
]


@pytest.mark.parametrize(("data", "size"), EARLY_V2, ids=[repr(d[:16]) for d, _ in EARLY_V2])
@pytest.mark.parametrize("mode", ["v2", "auto"])
def test_malformed_v2_refused_as_early_as_possible(data: bytes, size: int, mode: str) -> None:
    assert first_failure(data + HTTP, mode) == size


@pytest.mark.parametrize("mode", ["v2", "auto"])
def test_v2_length_field_bounds_the_wait(mode: str) -> None:
    extra = tlv(0xE0, b"x" * 97)  # 100 bytes of TLV
    data = v2(inet("1.2.3.4", "5.6.7.8", 1, 2) + extra)
    assert len(data) == 16 + 12 + 100
    for size in range(len(data)):
        assert parse_proxy_header(data[:size], mode) is None
    expected = ProxyInfo(2, "TCP4", "1.2.3.4", 1, "5.6.7.8", 2)
    assert parse_proxy_header(data, mode) == (expected, len(data))
    # The length field, not the content, decides where the header ends:
    # the HTTP bytes after it are not looked at.
    assert parse_proxy_header(data + b"\x00garbage", mode) == (expected, len(data))


def test_v2_maximum_length() -> None:
    data = v2(inet("1.2.3.4", "5.6.7.8", 1, 2) + bytes(0xFFFF - 12))
    assert len(data) == 16 + 0xFFFF
    assert parse_proxy_header(data[:-1], "v2") is None
    result = parse_proxy_header(data + HTTP, "v2")
    assert result is not None
    assert result[1] == len(data)


def test_v2_local_waits_for_its_block_too() -> None:
    # §2.2: receivers "must not assume zero is presented for LOCAL".
    data = v2(bytes(20), ver_cmd=0x20, fam=0x11)
    assert parse_proxy_header(data[:-1], "v2") is None
    assert parse_proxy_header(data + HTTP, "v2") == (UNKNOWN_V2, 36)


def test_v2_local_does_not_check_address_length() -> None:
    # LOCAL ignores the family, so a short block for AF_INET is fine.
    assert parse_proxy_header(v2(bytes(3), ver_cmd=0x20, fam=0x11), "v2") == (UNKNOWN_V2, 19)


def test_v2_addresses_use_the_address_block_prefix_only() -> None:
    # Extra bytes inside the block (before any TLV) do not shift the ports.
    block = inet("10.1.2.3", "10.4.5.6", 1000, 2000) + b"\xff" * 8
    info = ProxyInfo(2, "TCP4", "10.1.2.3", 1000, "10.4.5.6", 2000)
    assert parse_proxy_header(v2(block), "v2") == (info, 36)


def test_environ_for_tcp_matches_gunicorn_keys() -> None:
    info, _ = parse_proxy_header(V1_TCP4, "v1") or pytest.fail("incomplete")
    assert info.environ() == {
        "PROXY_PROTOCOL": "TCP4",
        "REMOTE_ADDR": "192.0.2.1",
        "REMOTE_PORT": "56324",
        "PROXY_ADDR": "198.51.100.7",
        "PROXY_PORT": "443",
    }
    info6, _ = parse_proxy_header(V2_TCP6, "v2") or pytest.fail("incomplete")
    assert info6.environ() == {
        "PROXY_PROTOCOL": "TCP6",
        "REMOTE_ADDR": "2001:db8::1",
        "REMOTE_PORT": "56324",
        "PROXY_ADDR": "2001:db8::2",
        "PROXY_PORT": "443",
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [(d, e) for d, e in VALID if e.protocol == "UNKNOWN"],
)
def test_environ_is_empty_when_the_real_peer_is_kept(data: bytes, expected: ProxyInfo) -> None:
    result = parse_proxy_header(data, "auto")
    assert result == (expected, len(data))
    assert expected.environ() == {}


def test_environ_values_are_all_strings() -> None:
    for data, _ in VALID:
        info, _ = parse_proxy_header(data, "auto") or pytest.fail("incomplete")
        assert all(isinstance(v, str) for v in info.environ().values())


def test_proxy_info_is_frozen_and_slotted() -> None:
    info = ProxyInfo(1, "TCP4", "1.2.3.4", 1, "5.6.7.8", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.client_addr = "6.6.6.6"  # type: ignore[misc]
    assert not hasattr(info, "__dict__")
    assert info == ProxyInfo(1, "TCP4", "1.2.3.4", 1, "5.6.7.8", 2)
    assert hash(info) == hash(ProxyInfo(1, "TCP4", "1.2.3.4", 1, "5.6.7.8", 2))
