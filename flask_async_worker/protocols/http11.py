"""HTTP/1.1 (RFC 9112) as a sans-IO driver: bytes in, events and bytes out.

h11 does the framing (Content-Length and chunked bodies, keep-alive and
pipelining state).  h11 is lenient where a server in front of an application
must not be: it unfolds obs-fold lines, accepts bare LF line endings and
control characters in field values, lets Transfer-Encoding and
Content-Length coexist, and knows nothing of gunicorn's request limits.  So
each request head is first found and checked here, byte for byte, and only a
head that passed reaches h11.  Every refusal is a :class:`ProtocolError`
carrying its status; none reaches the application.

The driver's public surface (``receive_data``, ``next_event``,
``send_response``/``send_body``/``send_end``, ``start_next_cycle``) is the
seam a faster parser can implement too; the conformance tests drive it only
through that surface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h11

from .errors import ProtocolError
from .events import END_OF_BODY, Body, Event, Headers, Request

# One pass over a head finds every byte RFC 9112 forbids there: control
# characters other than HTAB, a CR not followed by LF, a LF not preceded by
# CR (a bare-LF line ending, section 2.2).
_FORBIDDEN_IN_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
# obs-fold (RFC 9112 section 5.2): a field line starting with SP or HTAB.
_OBS_FOLD = re.compile(rb"\r\n[ \t]")
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
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
_SUPPORTED_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
# RFC 9112 section 3.2: a request-target is visible ASCII only.
_TARGET_INVALID = re.compile(rb"[^\x21-\x7e]")
_REASON_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


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


class H11Driver:
    """One HTTP/1.1 connection's protocol state.

    Bytes go in through :meth:`receive_data`; :meth:`next_event` yields
    :class:`Request`, :class:`Body` and :class:`EndOfBody` events and
    returns ``None`` when it needs more bytes or while a response is pending
    (pipelined requests wait their turn).  Response bytes come back from the
    ``send_*`` methods for the caller to write.
    """

    __slots__ = (
        "_conn",
        "_head_buf",
        "_head_checked",
        "_head_scan",
        "_limits",
        "_request",
        "eof",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # h11's own bound on an incomplete event also covers chunk-size lines
        # and trailers, which never pass through the head check.
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_size)
        self._head_buf = bytearray()
        self._head_scan = 0
        self._head_checked = False
        self._request: Request | None = None
        self.eof = False

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self.eof = True
        elif not self._head_checked and self._request is None:
            self._head_buf += data
        self._conn.receive_data(data)

    @property
    def awaiting_head(self) -> bool:
        """True between requests: a head is being (or about to be) received."""
        return self._request is None

    @property
    def head_started(self) -> bool:
        """True once some bytes of the next request head have arrived."""
        return self._request is None and len(self._head_buf) > 0

    def next_event(self) -> Event | None:
        if self._request is None:
            if not self._head_checked and not self._check_head():
                return None
            return self._read_head()
        if self._conn.their_state is h11.MUST_CLOSE:
            # RFC 9112 section 9.6: after a request that closes the
            # connection, anything more the client sent is never processed.
            return None
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(str(exc), exc.error_status_hint) from None
        if type(event) is h11.Data:
            return Body(bytes(event.data))
        if type(event) is h11.EndOfMessage:
            return END_OF_BODY
        if (
            type(event) is h11.ConnectionClosed or (event is h11.NEED_DATA and self.eof)
        ) and self._conn.their_state is h11.SEND_BODY:
            raise ProtocolError("connection closed in the middle of the request body")
        return None

    def _check_head(self) -> bool:
        """Find the end of the next head and refuse what h11 would let by.

        Returns False while the head is incomplete.  Bounded: a head that
        outgrows the limits is refused before it is complete.
        """
        buf = self._head_buf
        limits = self._limits
        start = max(0, self._head_scan - 3)
        end = buf.find(b"\n\r\n", start)
        bare = buf.find(b"\n\n", start)
        if bare != -1 and (end == -1 or bare < end):
            raise ProtocolError("bare LF line ending in request head")
        if end == -1:
            self._head_scan = len(buf)
            first_line = buf.find(b"\n")
            if limits.max_request_line and (
                (first_line == -1 and len(buf) > limits.max_request_line + 1)
                or first_line > limits.max_request_line + 1
            ):
                raise ProtocolError("request line too long", 414)
            if len(buf) > limits.max_head_size:
                raise ProtocolError("request head too large", 431)
            return False
        head = bytes(buf[: end + 3])
        # Bytes past the head are the body or the next pipelined request: h11
        # holds them; this buffer only ever holds the head being checked.
        self._head_buf = bytearray()
        self._head_scan = 0
        self._head_checked = True
        self._validate_head(head)
        return True

    def _validate_head(self, head: bytes) -> None:
        limits = self._limits
        if head.startswith(b"\r\n"):
            # RFC 9112 section 2.2 lets a server skip empty lines before the
            # request line, but h11 does not; refuse rather than desync.
            raise ProtocolError("empty line before request line")
        line_end = head.find(b"\r\n")
        if limits.max_request_line and line_end > limits.max_request_line:
            raise ProtocolError("request line too long", 414)
        bad = _FORBIDDEN_IN_HEAD.search(head)
        if bad is not None:
            raise ProtocolError(f"forbidden byte {bad.group()!r} in request head")
        if _OBS_FOLD.search(head) is not None:
            raise ProtocolError("obsolete line folding in request head")
        lines = head.count(b"\r\n") - 2
        if lines > limits.max_fields:
            raise ProtocolError("too many header fields", 431)
        if limits.max_field_size:
            pos = line_end + 2
            limit = limits.max_field_size
            while True:
                nxt = head.find(b"\r\n", pos)
                if nxt == pos or nxt == -1:
                    break
                # gunicorn counts the field line with its CRLF.
                if nxt - pos + 2 > limit:
                    raise ProtocolError("header field too large", 431)
                pos = nxt + 2
        te_values = _TRANSFER_ENCODING.findall(head)
        cl_values = _CONTENT_LENGTH.findall(head)
        if te_values:
            if cl_values:
                raise ProtocolError("both Transfer-Encoding and Content-Length")
            _check_transfer_encoding(te_values, head[:line_end])
        elif cl_values:
            if len(cl_values) > 1:
                raise ProtocolError("more than one Content-Length")
            if _DIGITS.fullmatch(cl_values[0]) is None:
                raise ProtocolError("invalid Content-Length")

    def _read_head(self) -> Request | None:
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(str(exc), exc.error_status_hint) from None
        if type(event) is not h11.Request:
            if type(event) is h11.ConnectionClosed or self.eof:
                return None
            raise ProtocolError(f"unexpected {event!r} before a request")
        request = self._build_request(event)
        self._request = request
        return request

    def _build_request(self, event: h11.Request) -> Request:
        version = _SUPPORTED_VERSIONS.get(event.http_version)
        if version is None:
            raise ProtocolError("HTTP version not supported", 505)
        headers: Headers = list(event.headers)
        host: bytes | None = None
        expect_continue = False
        content_type_seen = False
        close = version != "1.1"
        has_body = False
        for name, value in headers:
            if name == b"host":
                host = value
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    raise ProtocolError("unsupported expectation", 417)
                expect_continue = version == "1.1"
            elif name == b"content-type":
                # RFC 9110 section 5.3: a singleton field repeated is ambiguous.
                if content_type_seen:
                    raise ProtocolError("more than one Content-Type")
                content_type_seen = True
            elif name == b"connection":
                close = close or b"close" in [t.strip(b" \t").lower() for t in value.split(b",")]
            elif name == b"transfer-encoding":
                has_body = True
            elif name == b"content-length":
                # Checked to be 1-18 digits by _validate_head.
                has_body = int(value) > 0
        if host is not None and _HOST.fullmatch(host) is None:
            raise ProtocolError("invalid Host header")
        target = event.target
        method = event.method
        if method == b"CONNECT":
            # Whatever its target: h11 would treat a 2xx answer as a tunnel.
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
        conn = self._conn
        return Request(
            method,
            target,
            path,
            query,
            authority,
            version,
            headers,
            keep_alive=not close and conn.our_state is not h11.MUST_CLOSE,
            expect_continue=expect_continue and has_body,
            has_body=has_body,
        )

    @property
    def body_complete(self) -> bool:
        state = self._conn.their_state
        return state is not h11.SEND_BODY and state is not h11.ERROR

    @property
    def waiting_for_continue(self) -> bool:
        request = self._request
        return (
            request is not None
            and request.expect_continue
            and bool(self._conn.they_are_waiting_for_100_continue)
        )

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._conn.trailing_data[0])

    # -- output --------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers) -> bytes:
        try:
            return self._conn.send(h11.InformationalResponse(status_code=status, headers=headers))
        except h11.LocalProtocolError as exc:
            raise ValueError(str(exc)) from None

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        # h11 writes the reason phrase unchecked (RFC 9112 section 4:
        # HTAB / SP / VCHAR / obs-text only).
        if _REASON_INVALID.search(reason) is not None:
            raise ValueError(f"invalid reason phrase {reason!r}")
        try:
            return self._conn.send(
                h11.Response(status_code=status, headers=headers, reason=reason)
            )
        except h11.LocalProtocolError as exc:
            raise ValueError(str(exc)) from None

    def send_body(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data))

    def send_end(self) -> bytes:
        return self._conn.send(h11.EndOfMessage())

    @property
    def response_will_close(self) -> bool:
        """The response being sent ends the connection (h11 decided, from
        HTTP/1.0, ``Connection: close`` on either side, or framing)."""
        request = self._request
        if request is not None and not request.keep_alive:
            return True
        return self._conn.our_state is h11.MUST_CLOSE

    def start_next_cycle(self) -> bool:
        """After a complete exchange, get ready for the next request.

        Returns False when the connection must close instead.
        """
        conn = self._conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        self._request = None
        self._head_checked = False
        leftover = conn.trailing_data[0]
        if leftover:
            self._head_buf = bytearray(leftover)
        return True


def _check_transfer_encoding(values: list[bytes], request_line: bytes) -> None:
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
