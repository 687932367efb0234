"""HTTP/1.1 (RFC 9112) on httptools (llhttp): the fast sans-IO driver.

The same surface, the same events and the same refusals as
:class:`~.http11.H11Driver`, at a fraction of its cost per request.  The
work is divided so that nothing the application sees depends on which
parser ran:

* The head is found and checked byte for byte by :mod:`.http11_rules`
  before any parser sees it, and the parsed head becomes a
  :class:`Request` there too, exactly as for the h11 driver.
* The request line is split by one regular expression.  llhttp knows a
  fixed list of methods (RFC 9110 allows any token), and accepts two spaces
  between the parts and an HTTP/0.9 line; splitting the line here keeps
  extension methods working and the version handling identical.
* llhttp splits the field lines, in C and strictly (token names, no
  whitespace before the colon, no control bytes).  It is fed the field
  section behind a constant request line, so it only ever sees one shape
  of message.
* Bodies are framed here: Content-Length is counting, chunked is a small
  strict decoder whose trailer section gets a head's checks.  llhttp
  cannot be paused at the end of a message through httptools (and says
  nothing of where a message ended), so if it framed bodies it would run
  on into the next pipelined head before that head was checked.
* Responses are written here: the head is one ``join`` of the status line
  and the fields, framed as h11 frames it (Content-Length, chunked for an
  HTTP/1.1 peer, close-delimited for HTTP/1.0, nothing for HEAD/204/304).
"""

from __future__ import annotations

import re
from http import HTTPStatus

import httptools

from .errors import ProtocolError
from .events import END_OF_BODY, Body, Event, Headers, Request
from .http11_rules import (
    BAD_VALUE,
    REASON_INVALID,
    REQUEST_LINE,
    TOKEN,
    Limits,
    build_request,
    find_head_end,
    validate_head,
    validate_trailers,
)

__all__ = ["HttptoolsDriver"]

# llhttp is given this line before each field section (see the module doc).
_START_LINE = b"GET / HTTP/1.1\r\n"
# RFC 9112 section 7.1: chunk-size [ chunk-ext ] CRLF.  As h11: 1-20 hex
# digits and optional whitespace before the CRLF; unlike h11, an extension
# may not hide a bare CR or another control byte.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?[ \t]*")
_CONTENT_LENGTH_MAX_DIGITS = 20
# Status lines of the registered statuses with their standard reasons, built
# once: the server sends those reasons, so most responses format nothing.
_STATUS_LINES = {
    int(s): (s.phrase.encode("ascii"), b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode("ascii")))
    for s in HTTPStatus
}
# The response fields that decide framing or persistence.
_LENGTH_FIELD, _TRANSFER_ENCODING_FIELD, _CONNECTION_FIELD = range(3)
_FRAMING_FIELDS = {
    b"content-length": _LENGTH_FIELD,
    b"transfer-encoding": _TRANSFER_ENCODING_FIELD,
    b"connection": _CONNECTION_FIELD,
}

# What the peer is sending.
_HEAD = 0  # a request head (no request in progress)
_LENGTH = 1  # a Content-Length body (or none: zero bytes left)
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_CHUNK_CRLF = 4
_TRAILERS = 5
_DONE = 6  # the request is complete; waiting for start_next_cycle
_ERROR = 7

# What we are sending.
_OUT_IDLE = 0  # no request to answer yet
_OUT_HEAD = 1  # informational responses or the response head may go out
_OUT_BODY = 2
_OUT_DONE = 3
_OUT_ERROR = 4

# How the response body is framed.
_W_LENGTH = 0
_W_CHUNKED = 1
_W_CLOSE = 2  # an HTTP/1.0 peer, no length: the body ends with the connection


class _Fields:
    """llhttp's callback target: the field lines of one head.

    A separate object rather than the driver itself, so the parser's bound
    callbacks hold no reference back to the driver (no reference cycle per
    connection).
    """

    __slots__ = ("complete", "headers")

    def __init__(self) -> None:
        self.headers: Headers = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a value but keeps what follows.
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_message_complete(self) -> None:
        self.complete = True


class HttptoolsDriver:
    """One HTTP/1.1 connection's protocol state, parsed with llhttp (the
    :class:`~.http11_rules.HTTP11Driver` surface)."""

    __slots__ = (
        "_buf",
        "_close",
        "_error_status",
        "_fields",
        "_in",
        "_limits",
        "_out",
        "_out_remaining",
        "_parser",
        "_remaining",
        "_request",
        "_scan",
        "_waiting",
        "_writer",
        "eof",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # Unconsumed input, always starting at the next byte to parse: the
        # transport's bytes object as is when one read holds whole requests,
        # a bytearray (cheap to append to and to cut from the front) when
        # bytes are left over or arrive in pieces.
        self._buf: bytes | bytearray = b""
        self._scan = 0  # how far a search for a line or head end already got
        self._fields = _Fields()
        # Reused from one request to the next while llhttp is back at the
        # start of a message; replaced after a head it left in another state.
        self._parser: httptools.HttpRequestParser | None = None
        self._request: Request | None = None
        self._in = _HEAD
        self._remaining = 0
        self._error_status = 400
        self._waiting = False
        self._out = _OUT_IDLE
        self._writer = _W_LENGTH
        self._out_remaining = 0
        self._close = False
        self.eof = False

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self.eof = True
            return
        buf = self._buf
        if not buf:
            self._buf = data if type(data) is bytes else bytes(data)
        elif type(buf) is bytearray:
            buf += data
        else:
            grown = bytearray(buf)
            grown += data
            self._buf = grown

    @property
    def awaiting_head(self) -> bool:
        """True between requests: a head is being (or about to be) received."""
        return self._in == _HEAD

    @property
    def head_started(self) -> bool:
        """True once some bytes of the next request head have arrived."""
        return self._in == _HEAD and len(self._buf) > 0

    def next_event(self) -> Event | None:
        state = self._in
        if state == _HEAD:
            return self._next_head()
        if state == _LENGTH:
            remaining = self._remaining
            if not remaining:
                return self._end_of_body()
            if not self._buf:
                return self._need_more()
            data = self._take(remaining)
            self._remaining = remaining - len(data)
            self._waiting = False
            return Body(data)
        if state == _DONE:
            # Pipelined bytes wait for start_next_cycle; after a request
            # that closes the connection (RFC 9112 section 9.6) they are
            # never processed.
            return None
        if state == _ERROR:
            raise ProtocolError("the request was already refused", self._error_status)
        return self._next_chunk_event()

    def _take(self, n: int) -> bytes:
        """Remove and return up to ``n`` bytes from the front of the input."""
        buf = self._buf
        if n >= len(buf):
            self._buf = b""
            return buf if type(buf) is bytes else bytes(buf)
        if isinstance(buf, bytearray):
            data = bytes(buf[:n])
            del buf[:n]  # O(1): CPython moves a bytearray's start
            return data
        self._buf = bytearray(memoryview(buf)[n:])
        return buf[:n]

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._in = _ERROR
        self._error_status = exc.status
        return exc

    def _need_more(self) -> Event | None:
        if self.eof:
            raise self._fail(ProtocolError("connection closed in the middle of the request body"))
        return None

    def _end_of_body(self) -> Event:
        self._in = _DONE
        self._waiting = False
        return END_OF_BODY

    def _next_head(self) -> Request | None:
        buf = self._buf
        if not buf:
            return None
        limits = self._limits
        try:
            end = find_head_end(buf, self._scan, limits)
            if end == -1:
                self._scan = len(buf)
                return None
            self._scan = 0
            head = self._take(end)
            validate_head(head, limits)
            line = REQUEST_LINE.match(head)
            if line is None:
                raise ProtocolError("invalid request line")
            method, target, version = line.groups()
            headers = self._parse_fields(head, line.end())
            request, length = build_request(method, target, version, headers)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self._request = request
        self._out = _OUT_HEAD
        self._waiting = request.expect_continue
        if length >= 0:
            self._in = _LENGTH
            self._remaining = length
        else:
            self._in = _CHUNK_SIZE
        return request

    def _parse_fields(self, head: bytes, start: int) -> Headers:
        """The field lines of ``head`` from ``start`` on, split by llhttp."""
        parser = self._parser
        fields = self._fields
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(fields)
        headers: Headers = []
        fields.headers = headers
        fields.complete = False
        try:
            parser.feed_data(_START_LINE + head[start:])
        except httptools.HttpParserUpgrade:
            # llhttp stops after a head asking for an upgrade.  This driver
            # does not switch protocols: the request is an ordinary one.
            self._parser = None
        except httptools.HttpParserError as exc:
            self._parser = None
            raise ProtocolError(f"invalid header field ({exc})") from None
        else:
            if not fields.complete or not parser.should_keep_alive():
                # llhttp now waits for a body (framed here instead) or for
                # nothing more: the next head gets a fresh parser.
                self._parser = None
        return headers

    def _next_chunk_event(self) -> Event | None:
        """RFC 9112 section 7.1, strictly; one event per call."""
        while True:
            state = self._in
            buf = self._buf
            if state == _CHUNK_DATA:
                if not buf:
                    return self._need_more()
                data = self._take(self._remaining)
                self._remaining -= len(data)
                if not self._remaining:
                    self._in = _CHUNK_CRLF
                self._waiting = False
                return Body(data)
            if state == _CHUNK_CRLF:
                if buf[:2] == b"\r\n":
                    self._take(2)
                    self._in = _CHUNK_SIZE
                    continue
                if len(buf) >= 2 or (buf and buf[:1] != b"\r"):
                    raise self._fail(ProtocolError("chunk data not followed by CRLF"))
                return self._need_more()
            if state == _CHUNK_SIZE:
                nl = buf.find(b"\n", self._scan)
                if nl == -1:
                    if len(buf) > self._limits.max_head_size:
                        # 431 as h11 answers any unbounded line or section.
                        raise self._fail(ProtocolError("chunk size line too long", 431))
                    self._scan = len(buf)
                    return self._need_more()
                self._scan = 0
                if nl == 0 or buf[nl - 1] != 0x0D:
                    raise self._fail(ProtocolError("bare LF after chunk size"))
                match = _CHUNK_LINE.fullmatch(buf, 0, nl - 1)
                if match is None:
                    raise self._fail(ProtocolError("invalid chunk size line"))
                size = int(match.group(1), 16)
                self._take(nl + 1)
                if size:
                    self._remaining = size
                    self._in = _CHUNK_DATA
                else:
                    self._in = _TRAILERS
                continue
            return self._trailers()

    def _trailers(self) -> Event | None:
        buf = self._buf
        if buf[:2] == b"\r\n":
            self._take(2)
            return self._end_of_body()
        if buf[:1] == b"\n":
            raise self._fail(ProtocolError("bare LF ending the chunked body"))
        start = max(0, self._scan - 3)
        end = buf.find(b"\n\r\n", start)
        if buf.find(b"\n\n", start, len(buf) if end == -1 else end + 1) != -1:
            raise self._fail(ProtocolError("bare LF in trailer section"))
        if end == -1:
            if len(buf) > self._limits.max_head_size:
                raise self._fail(ProtocolError("trailer section too large", 431))
            self._scan = len(buf)
            return self._need_more()
        self._scan = 0
        try:
            validate_trailers(self._take(end + 3))
        except ProtocolError as exc:
            raise self._fail(exc) from None
        # Trailers are read and dropped, as with h11: ASGI has no place for
        # request trailers.
        return self._end_of_body()

    @property
    def body_complete(self) -> bool:
        state = self._in
        return state in (_HEAD, _DONE)

    @property
    def waiting_for_continue(self) -> bool:
        return self._waiting

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """The bytes after the last head, for the protocol the connection
        switches to; the driver is not used again."""
        data = bytes(self._buf)
        self._buf = b""
        return data

    # -- output --------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers) -> bytes:
        if self._out != _OUT_HEAD:
            raise ValueError("no request awaiting a response")
        if not 100 <= status < 200 or status == 101:
            raise ValueError(f"invalid informational status {status!r}")
        known = _STATUS_LINES.get(status)
        parts = [known[1] if known is not None else b"HTTP/1.1 %d \r\n" % status]
        for name, value in headers:
            _check_field(name, value)
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        # As h11: any interim response answers the client's Expect.
        self._waiting = False
        return b"".join(parts)

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        request = self._request
        if self._out != _OUT_HEAD or request is None:
            raise ValueError("no request awaiting a response")
        if not 200 <= status < 1000:
            raise ValueError(f"invalid response status {status!r}")
        if reason and REASON_INVALID.search(reason) is not None:
            raise ValueError(f"invalid reason phrase {reason!r}")
        known = _STATUS_LINES.get(status)
        if known is not None and known[0] == reason:
            parts = [known[1]]
        else:
            parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        length = -1
        length_at = -1
        chunked = False
        connection: list[int] | None = None
        token = TOKEN.fullmatch
        bad_value = BAD_VALUE.search
        framing = _FRAMING_FIELDS.get
        for name, value in headers:
            # As _check_field, inline: this loop runs for every response.
            if token(name) is None:
                raise ValueError(f"invalid header name {name!r}")
            if bad_value(value) is not None or value.strip(b" \t") != value:
                raise ValueError(f"invalid value for header {name!r}")
            kind = framing(name.lower())
            if kind is not None:
                if kind == _LENGTH_FIELD:
                    n = _content_length(value)
                    if length == n:
                        continue  # a repeat of the same value, dropped as h11 does
                    if length != -1:
                        raise ValueError("conflicting Content-Length headers")
                    length = n
                    length_at = len(parts)
                    if not value.isdigit():
                        value = b"%d" % n
                elif kind == _TRANSFER_ENCODING_FIELD:
                    if chunked:
                        raise ValueError("more than one Transfer-Encoding header")
                    if value.lower() != b"chunked":
                        raise ValueError("only Transfer-Encoding: chunked is supported")
                    chunked = True
                    continue  # written below, where the framing is decided
                else:
                    if connection is None:
                        connection = []
                    connection.append(len(parts))
            parts += (name, b": ", value, b"\r\n")
        is_head = request.method == b"HEAD"
        need_close = False
        writer = _W_LENGTH
        out_remaining = 0 if is_head else length
        if status == 204 or status == 304:
            out_remaining = 0
            if chunked:
                parts.append(b"transfer-encoding: chunked\r\n")
        elif chunked or length == -1:
            # A body of unknown length: chunked for an HTTP/1.1 peer, ended
            # by closing the connection for an HTTP/1.0 one (RFC 9112
            # section 6.3); HEAD gets the headers a GET would have.
            if length_at != -1:
                del parts[length_at : length_at + 4]
                if connection is not None:
                    connection = [i - 4 if i > length_at else i for i in connection]
            if request.http_version == "1.0":
                if not is_head:
                    need_close = True
                    writer = _W_CLOSE
            else:
                parts.append(b"transfer-encoding: chunked\r\n")
                if not is_head:
                    writer = _W_CHUNKED
            out_remaining = 0
        close = not request.keep_alive or need_close
        if connection is not None:
            tokens = {
                t.strip(b" \t").lower() for i in connection for t in parts[i + 2].split(b",")
            }
            tokens.discard(b"")
            close = close or b"close" in tokens
            if close and tokens != {b"close"}:
                # As h11: one Connection field, "close" and the app's other
                # tokens, "keep-alive" dropped.
                for i in reversed(connection):
                    del parts[i : i + 4]
                tokens.discard(b"keep-alive")
                tokens.add(b"close")
                parts.append(b"connection: " + b", ".join(sorted(tokens)) + b"\r\n")
        elif close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._out = _OUT_BODY
        self._writer = writer
        self._out_remaining = out_remaining
        self._close = close
        self._waiting = False
        return b"".join(parts)

    def send_body(self, data: bytes) -> bytes:
        if self._out != _OUT_BODY:
            raise ValueError("no response body in progress")
        writer = self._writer
        if writer == _W_CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%b\r\n" % (len(data), data)
        if writer == _W_LENGTH:
            if len(data) > self._out_remaining:
                self._out = _OUT_ERROR
                raise ValueError("too much data for declared Content-Length")
            self._out_remaining -= len(data)
        return data

    def send_end(self) -> bytes:
        if self._out != _OUT_BODY:
            raise ValueError("no response body in progress")
        writer = self._writer
        if writer == _W_LENGTH and self._out_remaining:
            self._out = _OUT_ERROR
            raise ValueError("too little data for declared Content-Length")
        self._out = _OUT_DONE
        return b"0\r\n\r\n" if writer == _W_CHUNKED else b""

    @property
    def response_will_close(self) -> bool:
        """The response being sent ends the connection (HTTP/1.0,
        ``Connection: close`` on either side, or close-delimited framing)."""
        request = self._request
        if request is not None and not request.keep_alive:
            return True
        return self._close

    def start_next_cycle(self) -> bool:
        """After a complete exchange, get ready for the next request.

        Returns False when the connection must close instead.
        """
        if self._in != _DONE or self._out != _OUT_DONE or self._close:
            return False
        self._in = _HEAD
        self._out = _OUT_IDLE
        self._request = None
        self._scan = 0
        return True


def _check_field(name: bytes, value: bytes) -> None:
    """RFC 9110 section 5: a token name, a value without control bytes or
    surrounding whitespace (as h11 checks), so nothing the application sends
    can end the field line early."""
    if TOKEN.fullmatch(name) is None:
        raise ValueError(f"invalid header name {name!r}")
    if BAD_VALUE.search(value) is not None or value.strip(b" \t") != value:
        raise ValueError(f"invalid value for header {name!r}")


def _content_length(value: bytes) -> int:
    """A response's Content-Length as h11 reads it: digits, or a list of
    one repeated value."""
    if value.isdigit() and len(value) <= _CONTENT_LENGTH_MAX_DIGITS:
        return int(value)
    if not value.isdigit():
        values = {v.strip() for v in value.split(b",")}
        if len(values) != 1:
            raise ValueError("conflicting Content-Length values")
        value = values.pop()
        if not value.isdigit():
            raise ValueError(f"invalid Content-Length {value!r}")
    if len(value) > _CONTENT_LENGTH_MAX_DIGITS:
        raise ValueError("Content-Length too large")
    return int(value)
