"""The HTTP/1.1 rules every driver applies, whichever parser splits the bytes.

A parser library is built to turn well-formed bytes into fields fast, and
each one is lenient in its own places: h11 unfolds obs-fold lines, accepts
bare LF line endings and lets Transfer-Encoding and Content-Length coexist;
llhttp (httptools) accepts two spaces in a request line, an HTTP/0.9 line and
a repeated Host.  Neither knows gunicorn's request limits.  What a server in
front of an application must refuse is a property of the bytes, not of the
parser, so it is decided here, once: the head is found and checked byte for
byte before any parser sees it, and what the parser returns becomes a
:class:`Request` through the same code.  Every driver calls these functions,
which is what makes the drivers accept and refuse the same requests with the
same statuses.

The checks are written for speed as much as for strictness (they run on
every request): C-level ``bytes`` methods (``translate``, ``replace``,
``find``) instead of per-byte regular expressions where both say the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from .errors import ProtocolError
from .events import Event, Headers, Request

# RFC 9112 section 2.2 / RFC 9110 section 5.5: no control character other
# than HTAB in a head, and CR and LF only as a CRLF pair.  Once every CRLF is
# removed, none of these bytes may be left.
_NOT_IN_HEAD = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
# obs-fold (RFC 9112 section 5.2): a field line starting with SP or HTAB.
_OBS_FOLD = re.compile(rb"\n[ \t]")
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:([^\r]*)", re.IGNORECASE)
_CONTENT_LENGTH = re.compile(
    rb"\r\ncontent-length[ \t]*:[ \t]*([^\r]*?)[ \t]*(?=\r)", re.IGNORECASE
)
_DIGITS = re.compile(rb"[0-9]{1,18}")
# RFC 3986 host: IP-literal or reg-name/IPv4 (unreserved, pct-encoded,
# sub-delims), optional port.  "@" (userinfo) and anything else is refused.
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+(?:%25[\w.~-]+)?\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?"
)
#: The same rule for HTTP/2's :authority.
HOST = _HOST
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
SUPPORTED_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
# RFC 9112 section 3.2: a request-target is visible ASCII only.
_TARGET_INVALID = re.compile(rb"[^\x21-\x7e]")
#: RFC 9112 section 3: method SP request-target SP HTTP-version CRLF, with
#: exactly one SP between the parts; the version's digits are checked for
#: support later, so an unsupported one is a 505 and not a 400.
REQUEST_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r\n"
)
# A trailer section (RFC 9112 section 7.1.2) is field lines like a head's;
# checked once bare CR/LF, control bytes and obs-fold are ruled out.
_FIELD_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*\r\n")

# The fields build_request acts on; one dict lookup per field finds them.
(
    _HOST_FIELD,
    _EXPECT,
    _CONTENT_TYPE,
    _CONNECTION,
    _TRANSFER_ENCODING_FIELD,
    _CONTENT_LENGTH_FIELD,
) = range(6)
_SPECIAL_FIELDS = {
    b"host": _HOST_FIELD,
    b"expect": _EXPECT,
    b"content-type": _CONTENT_TYPE,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING_FIELD,
    b"content-length": _CONTENT_LENGTH_FIELD,
}

# Response side (RFC 9110 section 5.1/5.5, RFC 9112 section 4).
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
REASON_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Limits:
    """gunicorn's request limits, read once per worker.

    A zero ``max_request_line`` or ``max_field_size`` means unlimited, as in
    gunicorn; the head as a whole is still bounded by ``max_head_size``.
    """

    max_request_line: int = 4094
    max_fields: int = 100
    max_field_size: int = 8190

    @property
    def max_head_size(self) -> int:
        line = self.max_request_line or 8190
        field = self.max_field_size or 8190
        return line + 2 + self.max_fields * (field + 2) + 2


class HTTP11Driver(Protocol):
    """What the server needs of an HTTP/1.1 driver (the h11 and httptools
    drivers both provide it), so ``server.py`` depends on no parser.

    Bytes go in through :meth:`receive_data`; :meth:`next_event` yields
    :class:`Request`, :class:`Body` and :class:`EndOfBody` events and
    returns ``None`` when it needs more bytes or while a response is pending
    (pipelined requests wait their turn).  Response bytes come back from the
    ``send_*`` methods for the caller to write.
    """

    eof: bool

    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> Event | None: ...
    def send_informational(self, status: int, headers: Headers) -> bytes: ...
    def send_response(self, status: int, headers: Headers, reason: bytes = ...) -> bytes: ...
    def send_body(self, data: bytes) -> bytes: ...
    def send_end(self) -> bytes: ...
    def start_next_cycle(self) -> bool: ...
    @property
    def awaiting_head(self) -> bool: ...
    @property
    def head_started(self) -> bool: ...
    @property
    def body_complete(self) -> bool: ...
    @property
    def waiting_for_continue(self) -> bool: ...
    @property
    def buffered(self) -> int: ...
    def take_buffered(self) -> bytes: ...
    @property
    def response_will_close(self) -> bool: ...


def find_head_end(buf: bytes | bytearray, start: int, limits: Limits) -> int:
    """Where the head at the start of ``buf`` ends (just past its blank
    line), or -1 while it is incomplete.

    ``start`` is how far an earlier call already looked, so a head arriving
    in many pieces is scanned once.  Bounded: a head that outgrows the limits
    is refused before it is complete, and a bare-LF blank line is refused
    rather than waited past (a parser that accepts bare LF would end the head
    there; one that does not would read on into the body).
    """
    start = max(0, start - 3)
    end = buf.find(b"\n\r\n", start)
    if end != -1:
        # A bare LF before this end is refused by validate_head.
        return end + 3
    if buf.find(b"\n\n", start) != -1:
        raise ProtocolError("bare LF line ending in request head")
    first_line = buf.find(b"\n")
    max_line = limits.max_request_line
    if max_line and ((first_line == -1 and len(buf) > max_line + 1) or first_line > max_line + 1):
        raise ProtocolError("request line too long", 414)
    if len(buf) > limits.max_head_size:
        raise ProtocolError("request head too large", 431)
    return -1


def validate_head(head: bytes, limits: Limits) -> int:
    """Refuse, byte for byte, what a parser might let by; returns the length
    of the request line (without its CRLF).

    ``head`` is a complete head as :func:`find_head_end` delimited it.
    """
    if head[:2] == b"\r\n":
        # RFC 9112 section 2.2 lets a server skip empty lines before the
        # request line, but h11 does not; refuse rather than desync.
        raise ProtocolError("empty line before request line")
    line_end = head.find(b"\r\n")
    if limits.max_request_line and line_end > limits.max_request_line:
        raise ProtocolError("request line too long", 414)
    bare = head.replace(b"\r\n", b"")
    if len(bare.translate(None, _NOT_IN_HEAD)) != len(bare):
        raise ProtocolError("control character, bare CR or bare LF in request head")
    if _OBS_FOLD.search(head) is not None:
        raise ProtocolError("obsolete line folding in request head")
    # Every CR and LF is now part of a CRLF: the request line's, one per
    # field line, and the blank line's.
    fields = (len(head) - len(bare)) // 2 - 2
    if fields > limits.max_fields:
        raise ProtocolError("too many header fields", 431)
    limit = limits.max_field_size
    # A field line (with its CRLF, as gunicorn counts it) cannot be longer
    # than the field section, so a small head skips the per-line walk.
    if limit and len(head) - line_end - 4 > limit:
        pos = line_end + 2
        while True:
            nxt = head.find(b"\r\n", pos)
            if nxt == pos or nxt == -1:
                break
            if nxt - pos + 2 > limit:
                raise ProtocolError("header field too large", 431)
            pos = nxt + 2
    te_values = _TRANSFER_ENCODING.findall(head)
    cl_values = _CONTENT_LENGTH.findall(head)
    if te_values:
        if cl_values:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        check_transfer_encoding(te_values, head[:line_end])
    elif cl_values:
        if len(cl_values) > 1:
            raise ProtocolError("more than one Content-Length")
        if _DIGITS.fullmatch(cl_values[0]) is None:
            raise ProtocolError("invalid Content-Length")
    return line_end


def check_transfer_encoding(values: list[bytes], request_line: bytes) -> None:
    """RFC 9112 section 6.1 and 6.3, strictly.

    Only a final ``chunked`` frames a request body; anything else means the
    body length cannot be known, which is how requests are smuggled.
    """
    if request_line.endswith(b"HTTP/1.0"):
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
    codings = [c.strip(b" \t").lower() for v in values for c in v.split(b",")]
    if any(not c for c in codings):
        raise ProtocolError("empty transfer coding")
    if codings[-1] != b"chunked":
        raise ProtocolError("Transfer-Encoding does not end in chunked")
    if codings.count(b"chunked") > 1:
        raise ProtocolError("chunked applied more than once")
    if len(codings) > 1:
        raise ProtocolError("unsupported transfer coding", 501)


def validate_trailers(block: bytes) -> None:
    """A chunked body's trailer section (RFC 9112 section 7.1.2) gets a
    head's rules (section 5): a front end and the worker must agree where
    the message ends, so nothing a head may not hold is let by here."""
    bare = block.replace(b"\r\n", b"")
    if len(bare.translate(None, _NOT_IN_HEAD)) != len(bare):
        raise ProtocolError("control character, bare CR or bare LF in trailer section")
    if _OBS_FOLD.search(block) is not None:
        raise ProtocolError("obsolete line folding in trailer section")
    if _FIELD_LINES.fullmatch(block) is None:
        raise ProtocolError("invalid field line in trailer section")


def build_request(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: Headers,
    *,
    closing: bool = False,
) -> tuple[Request, int]:
    """The :class:`Request` for a parsed head, and its body length (``-1``
    for a chunked body, ``0`` for none).

    ``headers`` have lower-case names and stripped values; the head passed
    :func:`validate_head`.  The refusals come in the order h11 makes them
    (Host count at parse time, then version, then field by field), so a head
    with two faults gets the same status from every driver.
    """
    hosts = 0
    host: bytes | None = None
    expect_continue = False
    content_type_seen = False
    close = version != b"1.1"
    upgrade = False
    length = 0
    field_error: ProtocolError | None = None
    special = _SPECIAL_FIELDS.get
    for name, value in headers:
        kind = special(name)
        if kind is None:
            continue
        if kind == _HOST_FIELD:
            hosts += 1
            host = value
        elif kind == _EXPECT:
            if value.lower() != b"100-continue":
                field_error = field_error or ProtocolError("unsupported expectation", 417)
            expect_continue = version == b"1.1"
        elif kind == _CONTENT_TYPE:
            # RFC 9110 section 5.3: a singleton field repeated is ambiguous.
            if content_type_seen:
                field_error = field_error or ProtocolError("more than one Content-Type")
            content_type_seen = True
        elif kind == _CONNECTION:
            tokens = [t.strip(b" \t").lower() for t in value.split(b",")]
            close = close or b"close" in tokens
            upgrade = upgrade or b"upgrade" in tokens
        elif kind == _TRANSFER_ENCODING_FIELD:
            length = -1
        else:
            # Content-Length, checked to be 1-18 digits by validate_head.
            length = int(value)
    # RFC 9112 section 3.2: exactly one Host in HTTP/1.1, at most one before.
    if hosts > 1:
        raise ProtocolError("more than one Host header")
    if hosts == 0 and version == b"1.1":
        raise ProtocolError("missing Host header")
    http_version = SUPPORTED_VERSIONS.get(version)
    if http_version is None:
        raise ProtocolError("HTTP version not supported", 505)
    if field_error is not None:
        raise field_error
    if host is not None and _HOST.fullmatch(host) is None:
        raise ProtocolError("invalid Host header")
    if method == b"CONNECT":
        # Whatever its target: a 2xx answer would be taken for a tunnel.
        raise ProtocolError("CONNECT is not supported", 501)
    if _TARGET_INVALID.search(target) is not None:
        raise ProtocolError("invalid byte in request target")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        authority = host or b""
    elif target == b"*" and method == b"OPTIONS":
        path, query, authority = b"*", b"", host or b""
    else:
        match = _ABSOLUTE_FORM.fullmatch(target)
        if match is None:
            raise ProtocolError("invalid request target")
        scheme, authority, rest = match.groups()
        if scheme.lower() not in (b"http", b"https") or not authority:
            raise ProtocolError("invalid absolute-form request target")
        if _HOST.fullmatch(authority) is None:
            raise ProtocolError("invalid authority in request target")
        # RFC 9112 section 3.2.2: the target's authority wins over Host;
        # the application learns the host from the Host header.
        headers = [(n, v) for n, v in headers if n != b"host"]
        headers.append((b"host", authority))
        if rest[:1] not in (b"", b"/", b"?", b"#"):
            raise ProtocolError("invalid absolute-form request target")
        if rest[:1] != b"/":
            rest = b"/" + rest
        path, _, query = rest.partition(b"?")
    # A fragment is never sent by a conforming client; drop it so it can
    # reach neither the path nor the query string.
    if b"#" in path:
        path = path.partition(b"#")[0]
        query = b""
    elif b"#" in query:
        query = query.partition(b"#")[0]
    has_body = length != 0
    request = Request(
        method,
        target,
        path,
        query,
        authority,
        http_version,
        headers,
        keep_alive=not close and not closing,
        expect_continue=expect_continue and has_body,
        has_body=has_body,
        upgrade=upgrade,
    )
    return request, length
