"""Errors that carry their HTTP answer.

A protocol driver raises :class:`ProtocolError` with the status the client
must get; the server writes that response and closes, so no ``isinstance``
ladder decides statuses far from the rule that was broken.
"""

from __future__ import annotations

from http import HTTPStatus


class ProtocolError(Exception):
    """The peer broke the protocol; answer ``status`` (if anything can still
    be answered) and close the connection."""

    def __init__(
        self, detail: str, status: int = 400, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        #: Extra response headers the answer needs (426's Sec-WebSocket-Version).
        self.headers = headers

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"


def error_response(
    status: int, detail: str = "", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection.

    Built by hand rather than through a protocol library because it must be
    writable in any parser state, including before a request line was read.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = f"{status} {reason}\n".encode()
    if detail:
        body += detail.encode("ascii", "backslashreplace") + b"\n"
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return (
        (
            f"HTTP/1.1 {status} {reason}\r\n"
            "content-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n"
        ).encode("latin-1")
        + extra
        + b"\r\n"
        + body
    )
