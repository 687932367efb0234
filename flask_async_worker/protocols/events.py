"""The event vocabulary every protocol driver speaks.

HTTP/1.1 and HTTP/2 drivers turn bytes into these events and the server turns
them into ASGI messages, so the request-handling code in ``server.py`` is
written once for both wire formats.  Events are plain slotted classes rather
than dataclasses because one is built per request on the hot path.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


class Request:
    """A complete, validated request head.

    ``path`` is the raw path (percent-encoding intact, no query, no
    fragment); ``authority`` is the host the request is for, taken from an
    absolute-form target when there is one (RFC 9112 section 3.2.2), else from
    the Host header.  ``headers`` names are lower-case.
    """

    __slots__ = (
        "authority",
        "expect_continue",
        "has_body",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes,
        authority: bytes,
        http_version: str,
        headers: Headers,
        *,
        keep_alive: bool,
        expect_continue: bool,
        has_body: bool,
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.authority = authority
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.has_body = has_body
        #: Connection lists "upgrade": the request may ask to switch protocols.
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.http_version}>"


class Body:
    """A piece of the request body, already de-chunked."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfBody:
    """The request body is complete (and any trailers were consumed)."""

    __slots__ = ()


END_OF_BODY = EndOfBody()

Event = Request | Body | EndOfBody
