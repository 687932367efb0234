"""The HAProxy PROXY protocol header (versions 1 and 2) as a sans-IO parser.

A balancer in front of the worker prepends one header to each connection
that names the real client; without it every request would seem to come
from the balancer.  Parsing is a pure function of the bytes received so far
so the connection driver keeps the buffering and the I/O, and so a header
can be tested by feeding it one byte at a time.

Section numbers refer to
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt.  The header
is mandatory once enabled: section 2 forbids guessing whether it is present,
since a guess would let any client that reaches the port forge its address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .errors import ProtocolError

__all__ = ["ProxyInfo", "parse_proxy_header"]

_MODES: Final = frozenset({"v1", "v2", "auto"})

# §2.1: "PROXY" and exactly one space open a version 1 line.
_V1_PREFIX: Final = b"PROXY "
# §2.1: the worst case line ("PROXY UNKNOWN" with full IPv6 fields) is 107
# bytes including the CRLF, so a receiver never needs to buffer more.
_V1_MAX_LINE: Final = 107
_V1_TCP: Final = (b"TCP4", b"TCP6")
_V1_UNKNOWN: Final = b"UNKNOWN"
# §2.1: IPv4 is dotted decimal; IPv6 is hex groups and colons, with dots for
# an embedded IPv4 tail.  Anything else (a "%zone" suffix, whitespace, signs)
# is refused before ``ipaddress`` sees it, as it accepts more than §2.1 does.
_V1_ADDR_CHARS: Final = {
    b"TCP4": frozenset(b"0123456789."),
    b"TCP6": frozenset(b"0123456789abcdefABCDEF:."),
}
_V1_ADDR_MAX: Final = {
    b"TCP4": len("255.255.255.255"),
    b"TCP6": len("ffff:" * 6 + "255.255.255.255"),
}
_DIGITS: Final = frozenset(b"0123456789")
# §2.1: decimal in [0..65535]; "heading zeroes are not permitted".
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")

# §2.2: the signature cannot start an HTTP request nor a version 1 line.
_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = 16  # signature, ver/cmd, fam/proto, 16-bit length
_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1
_AF_INET: Final = 0x1
_AF_INET6: Final = 0x2
_AF_UNIX: Final = 0x3
_PROTO_UNSPEC: Final = 0x0
_PROTO_STREAM: Final = 0x1
_PROTO_DGRAM: Final = 0x2
# §2.2: address block size per family (two addresses, then two ports; UNIX
# has two 108-byte paths and no ports).
_V2_ADDR_LEN: Final = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_V2_TCP: Final = {
    _AF_INET: ("TCP4", socket.AF_INET, 4),
    _AF_INET6: ("TCP6", socket.AF_INET6, 16),
}


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What the header announced.

    ``protocol`` is "UNKNOWN" whenever the header carries no usable TCP
    endpoints (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC/UDP/UNIX); the spec then
    wants the real connection endpoints used, so the addresses are None.
    """

    version: int
    protocol: str
    client_addr: str | None
    client_port: int | None
    proxy_addr: str | None
    proxy_port: int | None

    def environ(self) -> dict[str, str]:
        """The keys gunicorn's workers set, so applications see the same
        environ under either server; empty when the real peer must be kept."""
        if (
            self.client_addr is None
            or self.client_port is None
            or self.proxy_addr is None
            or self.proxy_port is None
        ):
            return {}
        return {
            "PROXY_PROTOCOL": self.protocol,
            "REMOTE_ADDR": self.client_addr,
            "REMOTE_PORT": str(self.client_port),
            "PROXY_ADDR": self.proxy_addr,
            "PROXY_PORT": str(self.proxy_port),
        }


def _unknown(version: int) -> ProxyInfo:
    return ProxyInfo(version, "UNKNOWN", None, None, None, None)


def parse_proxy_header(buf: bytes | bytearray, mode: str) -> tuple[ProxyInfo, int] | None:
    """Parse the header at the start of ``buf`` without consuming anything.

    Returns None while the bytes so far may still grow into a valid header,
    else the result and the header's length, so the caller can hand the
    rest to the HTTP parser.  Every rule is checked as soon as the bytes it
    needs are present, so a bogus peer is dropped without waiting for it.
    """
    if mode not in _MODES:
        raise ValueError(f"proxy protocol mode must be v1, v2 or auto, not {mode!r}")
    if not buf:
        return None
    for version, signature, parse in _VERSIONS:
        seen = min(len(buf), len(signature))
        if buf[:seen] != signature[:seen]:
            continue
        if mode in (version, "auto"):
            return parse(buf) if seen == len(signature) else None
        if seen == len(signature):
            raise ProtocolError(f"PROXY protocol {version} header, but only {mode} is accepted")
    raise ProtocolError(f"connection does not start with a PROXY protocol {mode} header")


def _parse_v1(buf: bytes | bytearray) -> tuple[ProxyInfo, int] | None:
    head = bytes(buf[:_V1_MAX_LINE])
    end = head.find(b"\r\n")
    complete = end >= 0
    if complete:
        line = head[len(_V1_PREFIX) : end]
    elif len(head) >= _V1_MAX_LINE:
        raise ProtocolError(f"PROXY v1 line longer than {_V1_MAX_LINE} bytes")
    else:
        # A final CR may be the start of the CRLF; judge it when the LF comes.
        line = head[len(_V1_PREFIX) :].removesuffix(b"\r")

    proto, sep, rest = line.partition(b" ")
    if proto == _V1_UNKNOWN:
        # §2.1: for UNKNOWN "the receiver must ignore anything presented
        # before the CRLF".
        return (_unknown(1), end + 2) if complete else None
    if proto in _V1_TCP and (sep or not complete):
        fields = _v1_tcp_fields(proto, rest, complete)
        if fields is None:
            return None
        src, dst, sport, dport = fields
        return ProxyInfo(1, proto.decode(), src, sport, dst, dport), end + 2
    if not complete and not sep and any(p.startswith(proto) for p in (*_V1_TCP, _V1_UNKNOWN)):
        return None
    raise ProtocolError("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN")


def _v1_tcp_fields(proto: bytes, rest: bytes, complete: bool) -> tuple[str, str, int, int] | None:
    """Check every field as soon as it is (or cannot be) complete, so a
    malformed line is refused before its CRLF arrives."""
    # §2.1: source address, destination address, source port, destination
    # port, each separated by exactly one space.
    parts = rest.split(b" ")
    if len(parts) > 4 or (complete and len(parts) < 4):
        raise ProtocolError(f"PROXY v1 {proto.decode()} line needs exactly 4 fields")
    addrs: list[str] = []
    ports: list[int] = []
    for index, part in enumerate(parts):
        is_addr = index < 2
        chars = _V1_ADDR_CHARS[proto] if is_addr else _DIGITS
        limit = _V1_ADDR_MAX[proto] if is_addr else len("65535")
        if not chars.issuperset(part) or len(part) > limit:
            raise ProtocolError(f"invalid PROXY v1 field {part[: limit + 1]!r}")
        if not complete and index == len(parts) - 1:
            break  # still arriving
        if is_addr:
            addrs.append(_v1_address(proto, part))
        else:
            ports.append(_v1_port(part))
    if not complete:
        return None
    return addrs[0], addrs[1], ports[0], ports[1]


def _v1_address(proto: bytes, part: bytes) -> str:
    text = part.decode("ascii")
    try:
        # ipaddress refuses IPv4 octets with leading zeros, as §2.1 requires.
        if proto == b"TCP4":
            ipaddress.IPv4Address(text)
        else:
            ipaddress.IPv6Address(text)
    except ValueError:
        raise ProtocolError(f"invalid PROXY v1 {proto.decode()} address {text!r}") from None
    return text


def _v1_port(part: bytes) -> int:
    if _V1_PORT.fullmatch(part) is None or int(part) > 0xFFFF:
        raise ProtocolError(f"invalid PROXY v1 port {part!r}")
    return int(part)


def _parse_v2(buf: bytes | bytearray) -> tuple[ProxyInfo, int] | None:
    if len(buf) <= len(_V2_SIGNATURE):
        return None
    # §2.2: the 13th byte is version (high nibble, must be 2) and command
    # (low nibble: LOCAL or PROXY); receivers must drop anything else.
    version, command = divmod(buf[12], 16)
    if version != 2:
        raise ProtocolError(f"unsupported PROXY protocol version {version}")
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProtocolError(f"unsupported PROXY v2 command {command}")
    if command == _CMD_PROXY and len(buf) > 13:
        # §2.2: unassigned family or transport values "must be rejected as
        # invalid by receivers".  LOCAL ignores this byte altogether.
        family, transport = divmod(buf[13], 16)
        if family > _AF_UNIX or transport > _PROTO_DGRAM:
            raise ProtocolError(f"invalid PROXY v2 family/protocol byte {buf[13]:#04x}")
    if len(buf) < _V2_FIXED:
        return None
    # §2.2: the header is always exactly 16 + length bytes, whatever it holds.
    length = int.from_bytes(buf[14:16], "big")
    total = _V2_FIXED + length
    if command == _CMD_LOCAL:
        # §2.2: LOCAL means "use the real connection endpoints and discard
        # the protocol block including the family".
        return (_unknown(2), total) if len(buf) >= total else None

    family, transport = divmod(buf[13], 16)
    if transport != _PROTO_UNSPEC and length < _V2_ADDR_LEN.get(family, 0):
        raise ProtocolError(f"PROXY v2 address block of {length} bytes is too short")
    if len(buf) < total:
        return None
    tcp = _V2_TCP.get(family) if transport == _PROTO_STREAM else None
    if tcp is None:
        # §2.2: UNSPEC means the address is to be ignored, and a receiver
        # "automatically falls back to the UNSPEC mode" for UDP and UNIX.
        return _unknown(2), total
    name, af, size = tcp
    block = bytes(buf[_V2_FIXED : _V2_FIXED + 2 * size + 4])
    # §2.2: TLVs may follow the address block; ``length`` covers them and
    # nothing here needs them, so they are skipped unread.
    return (
        ProxyInfo(
            2,
            name,
            socket.inet_ntop(af, block[:size]),
            int.from_bytes(block[2 * size : 2 * size + 2], "big"),
            socket.inet_ntop(af, block[size : 2 * size]),
            int.from_bytes(block[2 * size + 2 :], "big"),
        ),
        total,
    )


_Parser = Callable[[bytes | bytearray], tuple[ProxyInfo, int] | None]
# The two signatures differ in their first byte, so at most one matches.
_VERSIONS: Final[tuple[tuple[str, bytes, _Parser], ...]] = (
    ("v1", _V1_PREFIX, _parse_v1),
    ("v2", _V2_SIGNATURE, _parse_v2),
)
