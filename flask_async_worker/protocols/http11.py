"""HTTP/1.1 (RFC 9112) as a sans-IO driver: bytes in, events and bytes out.

h11 does the framing (Content-Length and chunked bodies, keep-alive and
pipelining state).  h11 is lenient where a server in front of an application
must not be: it unfolds obs-fold lines, accepts bare LF line endings and
control characters in field values, lets Transfer-Encoding and
Content-Length coexist, and knows nothing of gunicorn's request limits.  So
each request head is first found and checked here, byte for byte, and only a
head that passed reaches h11.  Every refusal is a :class:`ProtocolError`
carrying its status; none reaches the application.  The checks live in
:mod:`.http11_rules`, shared with the httptools driver, so both refuse the
same requests with the same statuses.

The driver's public surface (``receive_data``, ``next_event``,
``send_response``/``send_body``/``send_end``, ``start_next_cycle``) is the
seam a faster parser implements too (:mod:`.httptools_driver`); the
conformance tests drive both only through that surface.
"""

from __future__ import annotations

import h11

from .errors import ProtocolError
from .events import END_OF_BODY, Body, Event, Headers, Request
from .http11_rules import REASON_INVALID, Limits, build_request, find_head_end, validate_head

__all__ = ["H11Driver", "Limits"]


class H11Driver:
    """One HTTP/1.1 connection's protocol state on h11 (the
    :class:`~.http11_rules.HTTP11Driver` surface; the pure-Python fallback)."""

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
        end = find_head_end(buf, self._head_scan, self._limits)
        if end == -1:
            self._head_scan = len(buf)
            return False
        head = bytes(buf[:end])
        # Bytes past the head are the body or the next pipelined request: h11
        # holds them; this buffer only ever holds the head being checked.
        self._head_buf = bytearray()
        self._head_scan = 0
        self._head_checked = True
        validate_head(head, self._limits)
        return True

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
        request, _ = build_request(
            event.method,
            event.target,
            event.http_version,
            list(event.headers),
            closing=self._conn.our_state is h11.MUST_CLOSE,
        )
        return request

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

    def take_buffered(self) -> bytes:
        """The bytes after the last head, for the protocol the connection
        switches to; the driver is not used again."""
        return bytes(self._conn.trailing_data[0])

    # -- output --------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers) -> bytes:
        try:
            return self._conn.send(h11.InformationalResponse(status_code=status, headers=headers))
        except h11.LocalProtocolError as exc:
            raise ValueError(str(exc)) from None

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        # h11 writes the reason phrase unchecked (RFC 9112 section 4:
        # HTAB / SP / VCHAR / obs-text only).
        if REASON_INVALID.search(reason) is not None:
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
