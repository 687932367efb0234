"""Conformance tests for the sans-IO HTTP/1.1 drivers (protocols/http11.py on
h11, protocols/httptools_driver.py on llhttp).

The driver is used only through its public surface: ``receive_data``,
``next_event``, the ``send_*`` methods, ``start_next_cycle`` and the
``body_complete`` / ``waiting_for_continue`` / ``head_started`` /
``response_will_close`` properties.  Every test takes the ``make_driver``
factory (or the ``driver`` fixture built with it), which is parametrized over
:data:`IMPLEMENTATIONS`, so every driver passes every test.  The differential
tests at the end feed the same (mutated) bytes to every driver and require the
same verdicts, which finds the cases no list of examples thought of.

Section numbers refer to RFC 9112 (HTTP/1.1) and RFC 9110 (HTTP semantics).
Every refusal is checked for its exact status, because the status is what a
client (or a proxy in front of the worker) sees.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from flask_async_worker.protocols.errors import ProtocolError
from flask_async_worker.protocols.events import Body, EndOfBody, Event, Headers, Request
from flask_async_worker.protocols.http11 import H11Driver, Limits
from flask_async_worker.protocols.http11_rules import HTTP11Driver
from flask_async_worker.protocols.httptools_driver import HttptoolsDriver
from flask_async_worker.server import http11_driver_class
from flask_async_worker.settings import Extra

# The surface server.py relies on, which every driver must offer.
Driver = HTTP11Driver

MakeDriver = Callable[..., Driver]

# Each entry is a class built from a Limits.  The LENIENT_* sets list the
# implementations known to accept what the marked tests refuse (h11 parses
# trailers and chunk extensions leniently and lets control bytes other than
# CR/LF/NUL into response field values; the server checks those values
# itself, and the httptools driver refuses all three).
IMPLEMENTATIONS = [
    pytest.param(H11Driver, id="h11"),
    pytest.param(HttptoolsDriver, id="httptools"),
]
DRIVER_CLASSES: list[type] = [H11Driver, HttptoolsDriver]
LENIENT_TRAILERS: set[type] = {H11Driver}
LENIENT_CHUNK_EXTENSIONS: set[type] = {H11Driver}
LENIENT_RESPONSE_VALUES: set[type] = {H11Driver}


@pytest.fixture(params=IMPLEMENTATIONS)
def make_driver(request: pytest.FixtureRequest) -> MakeDriver:
    cls = request.param

    def make(limits: Limits | None = None) -> Driver:
        driver: Driver = cls(limits if limits is not None else Limits())
        return driver

    return make


@pytest.fixture
def driver(make_driver: MakeDriver) -> Driver:
    return make_driver()


# -- helpers --------------------------------------------------------------------


def req(
    *fields: bytes | str,
    line: bytes | str = b"GET / HTTP/1.1",
    host: bytes | str | None = b"example.com",
    body: bytes = b"",
) -> bytes:
    """A request head (CRLF line endings) with a Host field first, then body."""
    lines = [_b(line)]
    if host is not None:
        lines.append(b"Host: " + _b(host))
    lines += [_b(f) for f in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _b(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def drain(driver: Driver) -> list[Event]:
    """All events the buffered bytes yield right now."""
    events: list[Event] = []
    while True:
        event = driver.next_event()
        if event is None:
            return events
        events.append(event)
        assert len(events) < 10_000, "driver does not stop yielding events"


def feed(driver: Driver, data: bytes) -> list[Event]:
    driver.receive_data(data)
    return drain(driver)


def one_request(driver: Driver, data: bytes) -> Request:
    events = feed(driver, data)
    assert events, "no event for a complete request head"
    request = events[0]
    assert isinstance(request, Request)
    return request


def refusal(
    driver: Driver,
    pieces: Iterable[bytes],
    forbid: tuple[type, ...] = (Request,),
    drain_first: bool = False,
) -> tuple[ProtocolError, int]:
    """Feed pieces (``b""`` is end of input) until the driver refuses them;
    no event of a ``forbid`` type may come out before.  Returns the error and
    how many bytes had been fed."""
    fed = 0
    try:
        if drain_first:
            drain(driver)
        for piece in pieces:
            fed += len(piece)
            for event in feed(driver, piece):
                assert not isinstance(event, forbid), f"accepted: {event!r}"
    except ProtocolError as exc:
        return exc, fed
    pytest.fail("the driver did not refuse the input")


def refused(driver: Driver, data: bytes | Iterable[bytes]) -> ProtocolError:
    """Feed data (one piece or many); the driver must refuse it."""
    return refusal(driver, [data] if isinstance(data, bytes) else data)[0]


def assert_refused(driver: Driver, data: bytes | Iterable[bytes], status: int) -> None:
    error = refused(driver, data)
    assert error.status == status, f"{error.detail!r}: got {error.status}, want {status}"


def respond(
    driver: Driver, status: int = 200, body: bytes = b"ok", headers: Headers | None = None
) -> bytes:
    """A whole response with a Content-Length."""
    if headers is None:
        headers = [(b"content-length", b"%d" % len(body))]
    out = driver.send_response(status, headers)
    if body:
        out += driver.send_body(body)
    return out + driver.send_end()


def first_request(events: list[Event]) -> Request:
    assert events, "no event"
    request = events[0]
    assert isinstance(request, Request), request
    return request


def started(driver: Driver) -> bool:
    return driver.head_started


def waiting(driver: Driver) -> bool:
    return driver.waiting_for_continue


def closing(driver: Driver) -> bool:
    return driver.response_will_close


def body_of(events: Iterable[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def kinds(events: Iterable[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def summary(events: Iterable[Event | tuple[str, int]]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples, adjacent Body pieces merged."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, Request):
            out.append(
                (
                    "request",
                    event.method,
                    event.target,
                    event.path,
                    event.query,
                    event.authority,
                    event.http_version,
                    tuple(event.headers),
                    event.keep_alive,
                    event.expect_continue,
                    event.has_body,
                )
            )
        elif isinstance(event, Body):
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + event.data)
            elif event.data:
                out.append(("body", event.data))
        elif isinstance(event, EndOfBody):
            out.append(("end",))
        else:
            out.append(event)
    return out


def serve(driver: Driver, pieces: Iterable[bytes]) -> list[tuple[Any, ...]]:
    """Act as the server: feed pieces, answer each request as soon as its
    body is complete, start the next cycle.  Returns the event summary, with
    a trailing ("error", status) if the driver refused something."""
    events: list[Event | tuple[str, int]] = []
    closed = False
    try:
        for piece in pieces:
            driver.receive_data(piece)
            while not closed:
                event = driver.next_event()
                if event is None:
                    break
                events.append(event)
                if isinstance(event, EndOfBody):
                    respond(driver)
                    if not driver.start_next_cycle():
                        closed = True
    except ProtocolError as exc:
        events.append(("error", exc.status))
    return summary(events)


# -- basics ---------------------------------------------------------------------


def test_simple_get(driver: Driver) -> None:
    assert not started(driver)
    events = feed(driver, req(b"Accept: */*", line=b"GET /a/b?x=1&y=2 HTTP/1.1"))
    assert kinds(events) == ["Request", "EndOfBody"]
    request = events[0]
    assert isinstance(request, Request)
    assert request.method == b"GET"
    assert request.target == b"/a/b?x=1&y=2"
    assert request.path == b"/a/b"
    assert request.query == b"x=1&y=2"
    assert request.authority == b"example.com"
    assert request.http_version == "1.1"
    assert request.headers == [(b"host", b"example.com"), (b"accept", b"*/*")]
    assert request.keep_alive
    assert not request.has_body
    assert not request.expect_continue
    assert driver.body_complete
    assert not started(driver)


def test_header_names_lowercased_values_kept(driver: Driver) -> None:
    request = one_request(driver, req(b"X-MiXeD:  Value With Case  "))
    assert (b"x-mixed", b"Value With Case") in request.headers


def test_post_with_content_length(driver: Driver) -> None:
    events = feed(driver, req(b"Content-Length: 5", line=b"POST /p HTTP/1.1", body=b"hello"))
    assert kinds(events)[0] == "Request"
    assert first_request(events).has_body
    assert body_of(events) == b"hello"
    assert isinstance(events[-1], EndOfBody)
    assert driver.body_complete


def test_content_length_zero_has_no_body(driver: Driver) -> None:
    events = feed(driver, req(b"Content-Length: 0", line=b"POST / HTTP/1.1"))
    assert kinds(events) == ["Request", "EndOfBody"]
    assert not first_request(events).has_body


def test_body_not_complete_until_all_bytes(driver: Driver) -> None:
    events = feed(driver, req(b"Content-Length: 10", line=b"POST / HTTP/1.1", body=b"abc"))
    assert kinds(events) == ["Request", "Body"]
    assert not driver.body_complete
    assert kinds(feed(driver, b"defghij")) == ["Body", "EndOfBody"]
    assert driver.body_complete


def test_chunked_body(driver: Driver) -> None:
    body = b'5\r\nhello\r\nA;ext=1;q="x"\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n'
    events = feed(driver, req(b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.1", body=body))
    assert first_request(events).has_body
    assert body_of(events) == b"hello0123456789"
    assert isinstance(events[-1], EndOfBody)


def test_transfer_encoding_is_case_insensitive(driver: Driver) -> None:
    events = feed(
        driver,
        req(
            b"Transfer-Encoding:  Chunked ", line=b"POST / HTTP/1.1", body=b"3\r\nabc\r\n0\r\n\r\n"
        ),
    )
    assert body_of(events) == b"abc"
    assert isinstance(events[-1], EndOfBody)


def test_head_started(driver: Driver) -> None:
    assert not started(driver)
    driver.receive_data(b"G")
    assert driver.next_event() is None
    assert started(driver)
    events = feed(driver, req()[1:] + b"GE")
    assert kinds(events) == ["Request", "EndOfBody"]
    assert not started(driver)  # a request is in progress
    respond(driver)
    assert driver.start_next_cycle()
    assert started(driver)  # "GE" of the next request is waiting
    assert driver.next_event() is None


# -- RFC 9112 section 6: message framing and request smuggling -------------------

POST = b"POST / HTTP/1.1"

FRAMING_ERRORS = [
    # section 6.1: a sender MUST NOT send CL with TE; a server may reject.
    ("cl_and_te", [b"Content-Length: 5", b"Transfer-Encoding: chunked"], 400),
    ("te_and_cl", [b"Transfer-Encoding: chunked", b"Content-Length: 5"], 400),
    ("cl_and_te_case", [b"content-length: 0", b"TRANSFER-ENCODING: chunked"], 400),
    # section 6.3 item 5: differing or repeated Content-Length values.
    ("cl_conflict", [b"Content-Length: 5", b"Content-Length: 6"], 400),
    ("cl_two_equal", [b"Content-Length: 5", b"Content-Length: 5"], 400),
    ("cl_list_equal", [b"Content-Length: 5, 5"], 400),
    ("cl_list", [b"Content-Length: 5,6"], 400),
    ("cl_plus", [b"Content-Length: +5"], 400),
    ("cl_minus", [b"Content-Length: -5"], 400),
    ("cl_hex", [b"Content-Length: 0x5"], 400),
    ("cl_trailing_alpha", [b"Content-Length: 5a"], 400),
    ("cl_decimal", [b"Content-Length: 5.0"], 400),
    ("cl_inner_space", [b"Content-Length: 5 5"], 400),
    ("cl_empty", [b"Content-Length: "], 400),
    ("cl_huge", [b"Content-Length: " + b"9" * 30], 400),
    ("cl_obs_text", [b"Content-Length: 5\xa0"], 400),
    # section 6.3 item 4: TE whose final coding is not chunked.
    ("te_chunked_gzip", [b"Transfer-Encoding: chunked, gzip"], 400),
    ("te_gzip", [b"Transfer-Encoding: gzip"], 400),
    ("te_identity", [b"Transfer-Encoding: identity"], 400),
    ("te_empty", [b"Transfer-Encoding: "], 400),
    ("te_trailing_comma", [b"Transfer-Encoding: chunked,"], 400),
    ("te_leading_comma", [b"Transfer-Encoding: , chunked"], 400),
    ("te_chunked_twice", [b"Transfer-Encoding: chunked, chunked"], 400),
    ("te_two_lines", [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], 400),
    ("te_split_lines", [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"], 501),
    ("te_xchunked", [b"Transfer-Encoding: xchunked"], 400),
    ("te_chunked_semicolon", [b"Transfer-Encoding: chunked;q=1"], 400),
    # section 6.1: codings other than chunked are not implemented.
    ("te_gzip_chunked", [b"Transfer-Encoding: gzip, chunked"], 501),
    # RFC 9110 section 5.3 (driver rule): a repeated singleton is ambiguous.
    ("content_type_twice", [b"Content-Type: a/b", b"Content-Type: c/d"], 400),
]


@pytest.mark.parametrize(
    ("fields", "status"), [pytest.param(f, s, id=i) for i, f, s in FRAMING_ERRORS]
)
def test_framing_errors(driver: Driver, fields: list[bytes], status: int) -> None:
    assert_refused(driver, req(*fields, line=POST, body=b"0\r\n\r\n"), status)


def test_transfer_encoding_in_http10_refused(driver: Driver) -> None:
    data = req(b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0", host=None)
    assert_refused(driver, data + b"0\r\n\r\n", 400)


@pytest.mark.parametrize("value", [b"5", b" 5 ", b"\t5\t", b"005"])
def test_content_length_with_whitespace_or_leading_zeros(driver: Driver, value: bytes) -> None:
    events = feed(driver, req(b"Content-Length:" + value, line=POST, body=b"abcde"))
    assert body_of(events) == b"abcde"
    assert isinstance(events[-1], EndOfBody)


# -- RFC 9112 sections 2.2 and 5: bytes that may not appear in a head -------------

HEAD_ERRORS = [
    # section 5.2: obs-fold
    ("obs_fold_space", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n"),
    ("obs_fold_tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n"),
    ("obs_fold_first_line", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
    (
        "obs_fold_smuggle_te",
        b"POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
    ),
    # section 2.2: bare LF line endings
    ("bare_lf_request_line", b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
    ("bare_lf_field", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
    ("bare_lf_end", b"GET / HTTP/1.1\r\nHost: a\n\n"),
    ("bare_lf_final", b"GET / HTTP/1.1\r\nHost: a\r\n\n"),
    ("bare_lf_final_only", b"GET / HTTP/1.1\r\nHost: a\n\r\n"),
    ("bare_lf_all", b"GET / HTTP/1.1\nHost: a\n\n"),
    ("bare_lf_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n"),
    # section 2.2: bare CR
    ("bare_cr_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
    ("bare_cr_request_line", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("bare_cr_line_end", b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n"),
    ("bare_cr_only_endings", b"GET / HTTP/1.1\rHost: a\r\r\n\r\n"),
    # section 5.1: no whitespace between field name and colon
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    ("tab_before_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: 1\r\n\r\n"),
    ("space_before_colon_cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nabcde"),
    (
        "space_before_colon_te",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    ),
    # RFC 9110 section 5.5: CTLs other than HTAB
    ("nul_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
    ("soh_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"),
    ("us_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x1fb\r\n\r\n"),
    ("del_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"),
    ("vt_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0bb\r\n\r\n"),
    ("ff_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0cb\r\n\r\n"),
    ("nul_in_name", b"GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: 1\r\n\r\n"),
    ("nul_in_target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("nul_in_method", b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n"),
    # section 5.1: field-name is a token
    ("no_colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
    ("empty_name", b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n"),
    ("space_in_name", b"GET / HTTP/1.1\r\nHost: a\r\nX Y: v\r\n\r\n"),
    ("paren_in_name", b"GET / HTTP/1.1\r\nHost: a\r\nX(Y): v\r\n\r\n"),
    ("obs_text_in_name", b"GET / HTTP/1.1\r\nHost: a\r\nX\xe9: v\r\n\r\n"),
    # section 2.2 lets a server skip a leading empty line; this one refuses it
    ("leading_empty_line", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("leading_bare_lf", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
]


@pytest.mark.parametrize("data", [pytest.param(d, id=i) for i, d in HEAD_ERRORS])
def test_forbidden_bytes_in_head(driver: Driver, data: bytes) -> None:
    assert_refused(driver, data, 400)


@pytest.mark.parametrize("data", [pytest.param(d, id=i) for i, d in HEAD_ERRORS])
def test_forbidden_bytes_in_head_byte_by_byte(make_driver: MakeDriver, data: bytes) -> None:
    assert_refused(make_driver(), bytewise(data), 400)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"a\tb", b"a\tb"),
        (b"caf\xc3\xa9", b"caf\xc3\xa9"),
        (b"\x80\xff", b"\x80\xff"),
        (b"a \t b", b"a \t b"),
        (b"", b""),
    ],
)
def test_htab_and_obs_text_allowed(driver: Driver, value: bytes, expected: bytes) -> None:
    request = one_request(driver, req(b"X-V: " + value))
    assert (b"x-v", expected) in request.headers


# -- RFC 9112 section 7.1: chunk framing ------------------------------------------

CHUNK_ERRORS = [
    ("non_hex", b"Z\r\nhello\r\n0\r\n\r\n"),
    ("hex_prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("empty_size", b"\r\nhello\r\n0\r\n\r\n"),
    ("leading_space", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("bare_lf_after_size", b"5\nhello\r\n0\r\n\r\n"),
    ("bare_cr_after_size", b"5\rhello\r\n0\r\n\r\n"),
    ("no_crlf_after_data", b"5\r\nhelloXX0\r\n\r\n"),
    ("lf_after_data", b"5\r\nhello\n0\r\n\r\n"),
    ("data_longer_than_size", b"3\r\nhello\r\n0\r\n\r\n"),
    ("overflowing_size", b"1" + b"0" * 24 + b"\r\nhello\r\n0\r\n\r\n"),
    ("underscore", b"1_0\r\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in CHUNK_ERRORS])
def test_invalid_chunks(driver: Driver, body: bytes) -> None:
    data = req(b"Transfer-Encoding: chunked", line=POST, body=body)
    error, _ = refusal(driver, [data], forbid=(EndOfBody,))
    assert error.status == 400


@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in CHUNK_ERRORS])
def test_invalid_chunks_byte_by_byte(make_driver: MakeDriver, body: bytes) -> None:
    driver = make_driver()
    assert kinds(feed(driver, req(b"Transfer-Encoding: chunked", line=POST))) == ["Request"]
    error, _ = refusal(driver, bytewise(body), forbid=(EndOfBody,))
    assert error.status == 400


def test_chunk_size_line_is_bounded(make_driver: MakeDriver) -> None:
    limits = Limits(max_request_line=64, max_fields=4, max_field_size=32)
    driver = make_driver(limits)
    feed(driver, req(b"Transfer-Encoding: chunked", line=POST))
    pieces = [b"5;" + b"x" * 100] + [b"x"] * limits.max_head_size
    error, _ = refusal(driver, pieces, forbid=(Body, EndOfBody))
    assert error.status == 431


def test_trailer_section_is_bounded(make_driver: MakeDriver) -> None:
    driver = make_driver(SMALL)
    feed(driver, req(b"Transfer-Encoding: chunked", line=POST, body=b"0\r\n"))
    error, fed = refusal(driver, [b"X: 1\r\n"] * SMALL.max_head_size, forbid=(EndOfBody,))
    assert error.status == 431
    assert fed <= SMALL.max_head_size + 16


@pytest.mark.parametrize(
    ("body", "lenient_ok"),
    [
        pytest.param(b"0\r\n\n", True, id="bare_lf_terminator"),
        pytest.param(b"0\r\nX: 1\n\r\n", True, id="bare_lf_trailer"),
        pytest.param(b"0\r\nX: 1\r\n 2\r\n\r\n", True, id="obs_fold_trailer"),
        pytest.param(b"0\r\nX: \x01\r\n\r\n", True, id="ctl_in_trailer"),
        pytest.param(b"0\r\nX : 1\r\n\r\n", False, id="space_before_colon_trailer"),
        pytest.param(b"0\r\nNoColon\r\n\r\n", False, id="no_colon_trailer"),
    ],
)
def test_trailer_section_is_strict(
    make_driver: MakeDriver, request: pytest.FixtureRequest, body: bytes, lenient_ok: bool
) -> None:
    """A trailer section gets the same rules as a head (RFC 9112 section 7.1.2
    refers to section 5): a front end and the worker must agree where the
    message ends."""
    driver = make_driver()
    if lenient_ok and type(driver) in LENIENT_TRAILERS:
        request.applymarker(pytest.mark.xfail(strict=True, reason="h11 parses trailers leniently"))
    data = req(b"Transfer-Encoding: chunked", line=POST, body=body)
    error, _ = refusal(driver, [data], forbid=(EndOfBody,))
    assert error.status == 400


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"5;a=\rb\r\n", id="bare_cr_in_extension"),
        pytest.param(b"5;a\x7f=b\r\n", id="del_in_extension"),
        pytest.param(b"5;a=\x01\r\n", id="ctl_in_extension"),
    ],
)
def test_chunk_extension_is_strict(
    make_driver: MakeDriver, request: pytest.FixtureRequest, line: bytes
) -> None:
    """A parser that ends a chunk line at a bare CR reads a different body
    from one that does not: a chunk extension may not hide one."""
    driver = make_driver()
    if type(driver) in LENIENT_CHUNK_EXTENSIONS:
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="h11 accepts any byte in an extension")
        )
    data = req(b"Transfer-Encoding: chunked", line=POST, body=line + b"hello\r\n0\r\n\r\n")
    error, _ = refusal(driver, [data], forbid=(EndOfBody,))
    assert error.status == 400


def test_chunk_extension_and_whitespace_allowed(driver: Driver) -> None:
    body = b'5;name;q="a b"\r\nhello\r\n3 \t\r\nabc\r\n0;last\r\n\r\n'
    events = feed(driver, req(b"Transfer-Encoding: chunked", line=POST, body=body))
    assert body_of(events) == b"helloabc"
    assert isinstance(events[-1], EndOfBody)


# -- RFC 9112 section 3.2 / RFC 9110 section 7.2: Host ----------------------------


def test_missing_host_http11(driver: Driver) -> None:
    assert_refused(driver, req(host=None), 400)


@pytest.mark.parametrize(
    "fields",
    [
        [b"Host: a.example"],
        [b"host: example.com"],
        [b"HOST: other"],
    ],
)
def test_two_host_fields(driver: Driver, fields: list[bytes]) -> None:
    assert_refused(driver, req(*fields), 400)


@pytest.mark.parametrize(
    "host",
    [
        b"a b",
        b"a@b",
        b"user@example.com",
        b"exa mple",
        b"example.com:abc",
        b"example.com:123456",
        b"example.com:80:80",
        b"example.com::80",
        b"[::1",
        b"::1",
        b"a/b",
        b"a?b",
        b"a#b",
        b"a\\b",
        b"\xc3\xa9xample.com",
        b"example.com/",
        b"a, b",
    ],
)
def test_malformed_host(driver: Driver, host: bytes) -> None:
    assert_refused(driver, req(host=host), 400)


@pytest.mark.parametrize(
    "host",
    [
        b"example.com",
        b"example.com:8080",
        b"127.0.0.1",
        b"127.0.0.1:80",
        b"[::1]",
        b"[::1]:8080",
        b"[fe80::1%25eth0]",
        b"xn--bcher-kva.example",
        b"localhost",
        b"my_host-1.example",
        b"",
    ],
)
def test_valid_host(driver: Driver, host: bytes) -> None:
    request = one_request(driver, req(host=host))
    assert request.authority == host


def test_http10_without_host(driver: Driver) -> None:
    events = feed(driver, req(line=b"GET /x HTTP/1.0", host=None))
    assert kinds(events) == ["Request", "EndOfBody"]
    request = events[0]
    assert isinstance(request, Request)
    assert request.http_version == "1.0"
    assert request.authority == b""
    assert request.path == b"/x"


def test_http10_with_host(driver: Driver) -> None:
    request = one_request(driver, req(line=b"GET / HTTP/1.0", host=b"h.example"))
    assert request.authority == b"h.example"


# -- RFC 9112 section 3.2: request target -----------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query", "authority"),
    [
        (b"http://example.com:8080/a/b?x=1", b"/a/b", b"x=1", b"example.com:8080"),
        (b"http://example.com", b"/", b"", b"example.com"),
        (b"http://example.com?x=1", b"/", b"x=1", b"example.com"),
        (b"https://example.com/s", b"/s", b"", b"example.com"),
        (b"HTTP://Example.COM/p", b"/p", b"", b"Example.COM"),
        (b"http://[::1]:81/v6", b"/v6", b"", b"[::1]:81"),
        (b"http://example.com/a?b=1#frag", b"/a", b"b=1", b"example.com"),
        (b"http://example.com#frag", b"/", b"", b"example.com"),
    ],
)
def test_absolute_form(
    driver: Driver, target: bytes, path: bytes, query: bytes, authority: bytes
) -> None:
    # RFC 9112 section 3.2.2: the target's authority overrides Host.
    request = one_request(driver, req(line=b"GET " + target + b" HTTP/1.1", host=b"ignored"))
    assert (request.path, request.query, request.authority) == (path, query, authority)
    assert request.target == target
    assert [v for n, v in request.headers if n == b"host"] == [authority]


@pytest.mark.parametrize(
    "target",
    [
        b"ftp://example.com/",
        b"javascript://example.com/",
        b"http:/example.com/",
        b"http:example.com/",
        b"http://",
        b"http:///path",
        b"http://user@example.com/",
        b"http://user:pass@example.com/",
        b"http://example.com:80x/",
        b"http://example.com\\@evil.example/",
        b"1http://example.com/",
        b"example.com/path",
        b"path",
    ],
)
def test_bad_absolute_form(driver: Driver, target: bytes) -> None:
    assert_refused(driver, req(line=b"GET " + target + b" HTTP/1.1"), 400)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/a?b=1#frag", b"/a", b"b=1"),
        (b"/a#x?y", b"/a", b""),
        (b"/a#", b"/a", b""),
        (b"/#?x=1", b"/", b""),
        (b"/a?b=1#x#y", b"/a", b"b=1"),
        (b"/a%23b?c%23d", b"/a%23b", b"c%23d"),
        (b"/?", b"/", b""),
        (b"//double/slash", b"//double/slash", b""),
    ],
)
def test_fragments_never_reach_path_or_query(
    driver: Driver, target: bytes, path: bytes, query: bytes
) -> None:
    request = one_request(driver, req(line=b"GET " + target + b" HTTP/1.1"))
    assert (request.path, request.query) == (path, query)


def test_asterisk_form_with_options(driver: Driver) -> None:
    request = one_request(driver, req(line=b"OPTIONS * HTTP/1.1"))
    assert (request.method, request.path, request.query) == (b"OPTIONS", b"*", b"")
    assert request.authority == b"example.com"


@pytest.mark.parametrize("line", [b"GET * HTTP/1.1", b"POST * HTTP/1.1", b"OPTIONS *x HTTP/1.1"])
def test_asterisk_form_only_with_options(driver: Driver, line: bytes) -> None:
    assert_refused(driver, req(line=line), 400)


@pytest.mark.parametrize(
    "line",
    [
        b"CONNECT example.com:443 HTTP/1.1",
        b"CONNECT [::1]:443 HTTP/1.1",
        # CONNECT only has an authority form; whatever the target, the
        # method is not supported and must not reach the application.
        b"CONNECT / HTTP/1.1",
        b"CONNECT http://example.com/ HTTP/1.1",
    ],
)
def test_connect_not_implemented(driver: Driver, line: bytes) -> None:
    assert_refused(driver, req(line=line), 501)


@pytest.mark.parametrize(
    "line",
    [
        b"GET /a b HTTP/1.1",
        b"GET /caf\xc3\xa9 HTTP/1.1",
        b"GET /\x80 HTTP/1.1",
        b"GET /a\tb HTTP/1.1",
        b"GET /\x7f HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"GET /  HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b" GET / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b"GET",
        b"GET /",
        b"GET  HTTP/1.1",
        b"G@T / HTTP/1.1",
        b"GET / http/1.1",
        b"GET / HTTP/11",
        b"GET / HTTP/1.",
        b"GET / HTTP/1.1.1",
    ],
)
def test_malformed_request_line(driver: Driver, line: bytes) -> None:
    assert_refused(driver, req(line=line), 400)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
)
def test_unsupported_versions(driver: Driver, data: bytes) -> None:
    assert_refused(driver, data, 505)


def test_http09_request_line(driver: Driver) -> None:
    # An HTTP/0.9 simple request has no version; it never ends in a blank line
    # before more data, so send one to force a verdict.
    assert_refused(driver, b"GET /\r\n\r\n", 400)


# -- limits (gunicorn's limit_request_line / _fields / _field_size) ----------------

SMALL = Limits(max_request_line=64, max_fields=4, max_field_size=32)


def line_of(length: int) -> bytes:
    """A request line of exactly ``length`` bytes."""
    start, end = b"GET /", b" HTTP/1.1"
    return start + b"a" * (length - len(start) - len(end)) + end


def test_request_line_at_limit(make_driver: MakeDriver) -> None:
    request = one_request(make_driver(SMALL), req(line=line_of(64)))
    assert len(request.target) == 64 - len(b"GET  HTTP/1.1")


def test_request_line_too_long(make_driver: MakeDriver) -> None:
    assert_refused(make_driver(SMALL), req(line=line_of(65)), 414)


def test_request_line_too_long_refused_before_crlf(make_driver: MakeDriver) -> None:
    driver = make_driver(SMALL)
    error, fed = refusal(driver, bytewise(b"GET /" + b"a" * 10_000))
    assert error.status == 414
    # Refused as soon as the line is provably too long (65 bytes and no CR).
    assert fed <= SMALL.max_request_line + 2


def test_request_line_too_long_in_one_piece_without_crlf(make_driver: MakeDriver) -> None:
    assert_refused(make_driver(SMALL), b"GET /" + b"a" * 200, 414)


def test_request_line_at_limit_arriving_slowly(make_driver: MakeDriver) -> None:
    driver = make_driver(SMALL)
    data = req(line=line_of(64))
    events: list[Event] = []
    for i in range(len(data)):
        events += feed(driver, data[i : i + 1])
    assert kinds(events) == ["Request", "EndOfBody"]


def test_unlimited_request_line(make_driver: MakeDriver) -> None:
    limits = Limits(max_request_line=0, max_fields=4, max_field_size=32)
    request = one_request(make_driver(limits), req(line=line_of(5000)))
    assert len(request.path) > 4000


def test_unlimited_field_size(make_driver: MakeDriver) -> None:
    limits = Limits(max_request_line=64, max_fields=4, max_field_size=0)
    request = one_request(make_driver(limits), req(b"X: " + b"v" * 10_000))
    assert (b"x", b"v" * 10_000) in request.headers


def test_fields_at_limit(make_driver: MakeDriver) -> None:
    request = one_request(make_driver(SMALL), req(b"A: 1", b"B: 2", b"C: 3"))
    assert len(request.headers) == 4


def test_too_many_fields(make_driver: MakeDriver) -> None:
    assert_refused(make_driver(SMALL), req(b"A: 1", b"B: 2", b"C: 3", b"D: 4"), 431)


# As in gunicorn, a field line's size counts its CRLF.


def test_field_at_size_limit(make_driver: MakeDriver) -> None:
    field = b"X: " + b"v" * 27
    assert len(field + b"\r\n") == SMALL.max_field_size
    request = one_request(make_driver(SMALL), req(field))
    assert (b"x", b"v" * 27) in request.headers


def test_field_too_large(make_driver: MakeDriver) -> None:
    assert_refused(make_driver(SMALL), req(b"X: " + b"v" * 28), 431)


@pytest.mark.parametrize("step", [1, 7, 50])
def test_head_growing_beyond_limit(make_driver: MakeDriver, step: int) -> None:
    """Fields that are each fine, but never end: refused before completion."""
    driver = make_driver(SMALL)
    data = b"GET / HTTP/1.1\r\n" + b"X: 0123456789\r\n" * 1000
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    error, fed = refusal(driver, pieces)
    assert error.status == 431
    # Refused once the head outgrew the limit, never waiting for its end.
    assert fed <= SMALL.max_head_size + step


def test_default_limits_refuse_endless_head(driver: Driver) -> None:
    chunk = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    error, fed = refusal(driver, [b"GET / HTTP/1.1\r\n"] + [chunk] * 10_000)
    assert error.status == 431
    assert fed <= Limits().max_head_size + len(chunk)


def test_default_limits_request_line(make_driver: MakeDriver) -> None:
    limit = Limits().max_request_line
    assert_refused(make_driver(), req(line=line_of(limit + 1)), 414)
    assert one_request(make_driver(), req(line=line_of(limit))).method == b"GET"


# -- RFC 9110 section 10.1.1: Expect -----------------------------------------------


def expect_head(expect: bytes = b"100-continue", line: bytes = POST) -> bytes:
    host = None if line.endswith(b"1.0") else b"example.com"
    return req(b"Content-Length: 5", b"Expect: " + expect, line=line, host=host)


def test_expect_continue_until_informational(driver: Driver) -> None:
    request = one_request(driver, expect_head())
    assert request.expect_continue
    assert waiting(driver)
    assert driver.next_event() is None
    assert waiting(driver)
    out = driver.send_informational(100, [])
    assert out.startswith(b"HTTP/1.1 100 ")
    assert out.endswith(b"\r\n\r\n")
    assert not waiting(driver)
    events = feed(driver, b"hello")
    assert body_of(events) == b"hello"
    assert isinstance(events[-1], EndOfBody)
    out = respond(driver)
    assert out.startswith(b"HTTP/1.1 200 ")
    assert driver.start_next_cycle()


def test_expect_continue_until_body_arrives(driver: Driver) -> None:
    one_request(driver, expect_head())
    assert waiting(driver)
    events = feed(driver, b"he")
    assert body_of(events) == b"he"
    assert not waiting(driver)


def test_expect_continue_answered_by_final_response(driver: Driver) -> None:
    one_request(driver, expect_head())
    assert waiting(driver)
    driver.send_response(413, [(b"content-length", b"0")])
    assert not waiting(driver)
    driver.send_end()
    # The body was never read, so the connection cannot be reused.
    assert not driver.start_next_cycle()


def test_expect_continue_with_chunked_body(driver: Driver) -> None:
    request = one_request(
        driver, req(b"Expect: 100-continue", b"Transfer-Encoding: chunked", line=POST)
    )
    assert request.expect_continue
    assert waiting(driver)
    events = feed(driver, b"2\r\nok\r\n0\r\n\r\n")
    assert body_of(events) == b"ok"
    assert not waiting(driver)


@pytest.mark.parametrize("value", [b"100-CONTINUE", b"100-Continue"])
def test_expect_continue_case_insensitive(driver: Driver, value: bytes) -> None:
    assert one_request(driver, expect_head(value)).expect_continue


@pytest.mark.parametrize(
    "value", [b"something-else", b"100-continue, foo", b"200-ok", b"100-continuex", b""]
)
def test_unsupported_expectation(driver: Driver, value: bytes) -> None:
    assert_refused(driver, expect_head(value), 417)


def test_expect_continue_ignored_for_http10(driver: Driver) -> None:
    request = one_request(driver, expect_head(line=b"POST / HTTP/1.0"))
    assert not request.expect_continue
    assert not waiting(driver)
    events = feed(driver, b"hello")
    assert body_of(events) == b"hello"


def test_expect_continue_without_body(driver: Driver) -> None:
    events = feed(driver, req(b"Expect: 100-continue"))
    assert kinds(events) == ["Request", "EndOfBody"]
    request = events[0]
    assert isinstance(request, Request)
    assert not request.has_body
    assert not request.expect_continue
    assert not waiting(driver)


def test_expect_continue_without_body_before_end_event(driver: Driver) -> None:
    driver.receive_data(req(b"Expect: 100-continue"))
    request = driver.next_event()
    assert isinstance(request, Request)
    assert not request.expect_continue
    assert not waiting(driver)


# -- RFC 9112 section 9.3: persistence and pipelining -------------------------------

GET_A = req(line=b"GET /a HTTP/1.1")
GET_B = req(line=b"GET /b HTTP/1.1")
GET_C = req(line=b"GET /c HTTP/1.1")
POST_CL = req(b"Content-Length: 5", line=b"POST /cl HTTP/1.1", body=b"hello")
POST_CHUNKED = req(
    b"Transfer-Encoding: chunked",
    line=b"POST /chunked HTTP/1.1",
    body=b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nTrailer: 1\r\n\r\n",
)


def paths(summaries: list[tuple[Any, ...]]) -> list[bytes]:
    return [s[3] for s in summaries if s[0] == "request"]


def test_pipelined_requests_one_at_a_time(driver: Driver) -> None:
    driver.receive_data(GET_A + GET_B + GET_C)
    seen: list[bytes] = []
    for _ in range(3):
        events = drain(driver)
        assert kinds(events) == ["Request", "EndOfBody"]
        assert isinstance(events[0], Request)
        seen.append(events[0].path)
        # Nothing more until the response is sent and the cycle restarted.
        assert driver.next_event() is None
        driver.send_response(200, [(b"content-length", b"2")])
        assert driver.next_event() is None
        driver.send_body(b"ok")
        driver.send_end()
        assert driver.next_event() is None
        assert driver.next_event() is None
        assert driver.start_next_cycle()
    assert seen == [b"/a", b"/b", b"/c"]
    assert driver.next_event() is None
    assert not started(driver)


def test_pipelined_with_bodies(driver: Driver) -> None:
    result = serve(driver, [POST_CL + POST_CHUNKED + GET_A])
    assert paths(result) == [b"/cl", b"/chunked", b"/a"]
    bodies = [s[1] for s in result if s[0] == "body"]
    assert bodies == [b"hello", b"abcdefg"]
    assert [s[0] for s in result] == [
        "request", "body", "end", "request", "body", "end", "request", "end",
    ]  # fmt: skip


def test_chunked_body_then_pipelined_request(driver: Driver) -> None:
    events = feed(driver, POST_CHUNKED + GET_B)
    assert body_of(events) == b"abcdefg"
    assert isinstance(events[-1], EndOfBody)
    respond(driver)
    assert driver.start_next_cycle()
    events = drain(driver)
    assert first_request(events).path == b"/b"


def test_next_request_arriving_during_response(driver: Driver) -> None:
    feed(driver, GET_A)
    assert feed(driver, GET_B[:10]) == []
    driver.send_response(200, [(b"content-length", b"0")])
    assert feed(driver, GET_B[10:]) == []
    driver.send_end()
    assert driver.start_next_cycle()
    assert started(driver)
    events = drain(driver)
    assert first_request(events).path == b"/b"


@pytest.mark.parametrize("data", [POST_CL, POST_CHUNKED])
def test_body_split_byte_by_byte(driver: Driver, data: bytes) -> None:
    events: list[Event] = []
    for i in range(len(data)):
        events += feed(driver, data[i : i + 1])
    assert kinds(events)[0] == "Request"
    assert isinstance(events[-1], EndOfBody)
    assert body_of(events) in (b"hello", b"abcdefg")
    assert all(len(e.data) <= 1 for e in events if isinstance(e, Body))


SMUGGLED_SECOND = [
    ("cl_and_te", req(b"Content-Length: 4", b"Transfer-Encoding: chunked", line=POST), 400),
    ("two_cl", req(b"Content-Length: 4", b"Content-Length: 5", line=POST), 400),
    ("te_gzip", req(b"Transfer-Encoding: gzip", line=POST), 400),
    ("te_gzip_chunked", req(b"Transfer-Encoding: x,chunked", line=POST), 501),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400),
    ("bare_lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare_cr", b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", 400),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("nul", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", 400),
    ("two_hosts", req(b"Host: b"), 400),
    ("no_host", req(host=None), 400),
    ("bad_host", req(host=b"a@b"), 400),
    ("too_many_fields", req(*[b"F%d: v" % i for i in range(10)]), 431),
    ("field_too_large", req(b"X: " + b"v" * 40), 431),
    ("line_too_long", req(line=line_of(65)), 414),
    ("line_too_long_open", b"GET /" + b"a" * 100, 414),
    ("endless_head", b"GET / HTTP/1.1\r\n" + b"X: 0123456789\r\n" * 40, 431),
    ("http2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("expect", req(b"Expect: nope"), 417),
]


@pytest.mark.parametrize(
    ("second", "status"), [pytest.param(d, s, id=i) for i, d, s in SMUGGLED_SECOND]
)
@pytest.mark.parametrize("first", [GET_A, POST_CL, POST_CHUNKED], ids=["get", "cl", "chunked"])
def test_second_pipelined_head_is_as_strict(
    make_driver: MakeDriver, first: bytes, second: bytes, status: int
) -> None:
    driver = make_driver(SMALL)
    events = feed(driver, first + second)
    assert kinds(events)[0] == "Request"
    assert isinstance(events[-1], EndOfBody)
    respond(driver)
    assert driver.start_next_cycle()
    error, _ = refusal(driver, [], drain_first=True)
    assert error.status == status


@pytest.mark.parametrize(
    ("second", "status"), [pytest.param(d, s, id=i) for i, d, s in SMUGGLED_SECOND]
)
@pytest.mark.parametrize("when", ["before_response", "after_cycle"])
def test_second_head_arriving_later_is_as_strict(
    make_driver: MakeDriver, second: bytes, status: int, when: str
) -> None:
    driver = make_driver(SMALL)
    assert kinds(feed(driver, POST_CL)) == ["Request", "Body", "EndOfBody"]
    if when == "before_response":
        assert feed(driver, second) == []
    respond(driver)
    assert driver.start_next_cycle()
    error, _ = refusal(driver, [second] if when == "after_cycle" else [], drain_first=True)
    assert error.status == status


def test_body_bytes_are_not_parsed_as_a_head(driver: Driver) -> None:
    """A body that looks like a request stays a body."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    data = req(b"Content-Length: %d" % len(inner), line=POST, body=inner) + GET_B
    result = serve(driver, [data])
    assert paths(result) == [b"/", b"/b"]
    assert [s[1] for s in result if s[0] == "body"] == [inner]


# -- closing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(req(line=b"GET / HTTP/1.0", host=None), id="http10"),
        pytest.param(req(b"Connection: keep-alive", line=b"GET / HTTP/1.0"), id="http10_ka"),
        pytest.param(req(b"Connection: close"), id="close"),
        pytest.param(req(b"Connection: Close"), id="close_case"),
        pytest.param(req(b"Connection: keep-alive, close"), id="close_list"),
        pytest.param(req(b"Connection: upgrade", b"Connection: close"), id="close_2nd_line"),
    ],
)
def test_request_asks_to_close(driver: Driver, data: bytes) -> None:
    events = feed(driver, data + GET_B)
    request = events[0]
    assert isinstance(request, Request)
    assert not request.keep_alive
    assert closing(driver)
    out = respond(driver)
    assert closing(driver)
    assert b"connection: close" in out.lower()
    assert not driver.start_next_cycle()
    # RFC 9112 section 9.6: what follows a "close" request is not processed.
    assert drain(driver) == []
    driver.receive_data(b"")
    assert drain(driver) == []


def test_body_after_close_request_is_still_read(driver: Driver) -> None:
    data = req(b"Connection: close", b"Content-Length: 3", line=POST, body=b"abc")
    events = feed(driver, data + POST_CL)
    assert kinds(events) == ["Request", "Body", "EndOfBody"]
    assert body_of(events) == b"abc"
    assert drain(driver) == []


def test_upgrade_request_answered_normally(driver: Driver) -> None:
    """This driver does not switch protocols: an Upgrade request is an
    ordinary request, and the connection goes on after the answer."""
    data = req(b"Connection: Upgrade", b"Upgrade: websocket", line=b"GET /ws HTTP/1.1")
    events = feed(driver, data + GET_B)
    assert kinds(events) == ["Request", "EndOfBody"]
    assert drain(driver) == []
    respond(driver, 426, b"")
    assert driver.start_next_cycle()
    events = drain(driver)
    assert first_request(events).path == b"/b"


def test_upgrade_request_with_body_answered_normally(driver: Driver) -> None:
    """llhttp treats what follows an upgrade head as another protocol; the
    body and the next request must still be read as HTTP/1.1."""
    data = req(
        b"Connection: Upgrade", b"Upgrade: h2c", b"Content-Length: 5", line=POST, body=b"hello"
    )
    result = serve(driver, [data + GET_B + POST_CHUNKED + GET_C])
    assert paths(result) == [b"/", b"/b", b"/chunked", b"/c"]
    assert [s[1] for s in result if s[0] == "body"] == [b"hello", b"abcdefg"]


@pytest.mark.parametrize("method", [b"FOO", b"get", b"M-SEARCH", b"X.Y_Z~1", b"PURGE", b"QUERY"])
def test_extension_methods(driver: Driver, method: bytes) -> None:
    """RFC 9110 section 9.1: a method is any token (and case-sensitive); the
    application decides whether it knows it."""
    result = serve(driver, [req(line=method + b" /m HTTP/1.1") + GET_B])
    assert [s[1] for s in result if s[0] == "request"] == [method, b"GET"]


def test_keep_alive_by_default(driver: Driver) -> None:
    request = one_request(driver, req(b"Connection: keep-alive"))
    assert request.keep_alive
    assert not closing(driver)
    respond(driver)
    assert not closing(driver)
    assert driver.start_next_cycle()


def test_response_asks_to_close(driver: Driver) -> None:
    one_request(driver, GET_A)
    out = respond(driver, headers=[(b"content-length", b"2"), (b"connection", b"close")])
    assert b"connection: close" in out.lower()
    assert closing(driver)
    assert not driver.start_next_cycle()


def test_http10_response_without_length_is_close_delimited(driver: Driver) -> None:
    one_request(driver, req(line=b"GET / HTTP/1.0", host=None))
    out = driver.send_response(200, [])
    out += driver.send_body(b"abc")
    out += driver.send_end()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert out.endswith(b"\r\n\r\nabc")
    assert b"transfer-encoding" not in out.lower()
    assert closing(driver)


def test_http11_response_without_length_is_chunked(driver: Driver) -> None:
    one_request(driver, GET_A)
    out = driver.send_response(200, [])
    out += driver.send_body(b"abc")
    out += driver.send_end()
    assert b"transfer-encoding: chunked" in out.lower()
    assert out.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert not closing(driver)
    assert driver.start_next_cycle()


def test_head_response_has_no_body(driver: Driver) -> None:
    feed(driver, req(line=b"HEAD /h HTTP/1.1") + GET_B)
    out = driver.send_response(200, [(b"content-length", b"10")])
    out += driver.send_end()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 10\r\n" in out.lower()
    assert out.endswith(b"\r\n\r\n")
    assert not closing(driver)
    assert driver.start_next_cycle()
    events = drain(driver)
    assert first_request(events).path == b"/b"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(driver: Driver, status: int) -> None:
    one_request(driver, GET_A)
    out = driver.send_response(status, []) + driver.send_end()
    assert out.endswith(b"\r\n\r\n")
    assert b"transfer-encoding" not in out.lower()
    assert driver.start_next_cycle()


def test_cannot_start_next_cycle_mid_exchange(driver: Driver) -> None:
    feed(driver, req(b"Content-Length: 50", line=POST, body=b"he") + GET_B)
    assert not driver.start_next_cycle()  # body not read, no response
    respond(driver)
    assert not driver.start_next_cycle()  # body still not read


# -- end of input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "cut"),
    [
        pytest.param(req(b"Content-Length: 10", line=POST, body=b"hello"), 0, id="cl_mid"),
        pytest.param(req(b"Content-Length: 10", line=POST), 0, id="cl_none"),
        pytest.param(POST_CHUNKED, 3, id="chunked_in_trailer"),
        pytest.param(POST_CHUNKED, 14, id="chunked_in_terminator"),
        pytest.param(POST_CHUNKED, 20, id="chunked_in_data"),
        pytest.param(POST_CHUNKED, 26, id="chunked_in_size"),
        pytest.param(req(b"Transfer-Encoding: chunked", line=POST), 0, id="chunked_none"),
    ],
)
def test_eof_in_body(driver: Driver, data: bytes, cut: int) -> None:
    if cut:
        data = data[:-cut]
    events = feed(driver, data)
    assert isinstance(events[0], Request)
    assert not any(isinstance(e, EndOfBody) for e in events)
    error, _ = refusal(driver, [b""], forbid=(EndOfBody,))
    assert error.status == 400
    assert not driver.body_complete


@pytest.mark.parametrize("cut", [1, 2, 3, 10, len(GET_A) - 1])
def test_eof_in_head(driver: Driver, cut: int) -> None:
    assert feed(driver, GET_A[:cut]) == []
    driver.receive_data(b"")
    assert drain(driver) == []
    assert drain(driver) == []


def test_eof_when_idle(driver: Driver) -> None:
    driver.receive_data(b"")
    assert drain(driver) == []


def test_eof_after_complete_request(driver: Driver) -> None:
    events = feed(driver, GET_A)
    driver.receive_data(b"")
    events += drain(driver)
    assert kinds(events) == ["Request", "EndOfBody"]
    respond(driver)
    driver.start_next_cycle()
    assert drain(driver) == []


def test_eof_in_second_pipelined_head(driver: Driver) -> None:
    feed(driver, GET_A + GET_B[:12])
    driver.receive_data(b"")
    respond(driver)
    driver.start_next_cycle()
    assert drain(driver) == []


# -- response side -----------------------------------------------------------------

INJECTIONS = [b"a\r\nX-Injected: 1", b"a\nX-Injected: 1", b"a\rX-Injected: 1", b"a\x00b"]


@pytest.mark.parametrize("value", INJECTIONS)
def test_response_header_value_injection(driver: Driver, value: bytes) -> None:
    one_request(driver, GET_A)
    with pytest.raises(ValueError):
        driver.send_response(200, [(b"x-v", value), (b"content-length", b"0")])
    # Nothing went out; a clean error response can still be sent.
    out = driver.send_response(500, [(b"content-length", b"0")]) + driver.send_end()
    assert b"injected" not in out.lower()
    assert out.startswith(b"HTTP/1.1 500 ")


@pytest.mark.parametrize("name", [b"x-a\r\nx-injected", b"x a", b"x:a", b"", b"x\x00"])
def test_response_header_name_injection(driver: Driver, name: bytes) -> None:
    one_request(driver, GET_A)
    with pytest.raises(ValueError):
        driver.send_response(200, [(name, b"v")])


@pytest.mark.parametrize("reason", [b"OK\r\nX-Injected: 1", b"OK\nX-Injected: 1", b"O\x00K"])
def test_response_reason_injection(driver: Driver, reason: bytes) -> None:
    one_request(driver, GET_A)
    with pytest.raises(ValueError):
        driver.send_response(200, [(b"content-length", b"0")], reason)
    out = driver.send_response(200, [(b"content-length", b"0")], b"Fine") + driver.send_end()
    assert out.startswith(b"HTTP/1.1 200 Fine\r\n")
    assert b"injected" not in out.lower()


@pytest.mark.parametrize("value", INJECTIONS)
def test_informational_header_injection(driver: Driver, value: bytes) -> None:
    one_request(driver, GET_A)
    with pytest.raises(ValueError):
        driver.send_informational(103, [(b"link", value)])


def test_informational_103(driver: Driver) -> None:
    one_request(driver, GET_A)
    out = driver.send_informational(103, [(b"link", b"</s.css>; rel=preload")])
    assert out.startswith(b"HTTP/1.1 103 ")
    assert b"link: </s.css>; rel=preload\r\n" in out.lower()
    out = respond(driver)
    assert out.startswith(b"HTTP/1.1 200 ")


def test_response_with_reason(driver: Driver) -> None:
    one_request(driver, GET_A)
    out = driver.send_response(200, [(b"content-length", b"0")], b"OK")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")


def test_response_control_byte_in_value(
    make_driver: MakeDriver, request: pytest.FixtureRequest
) -> None:
    driver = make_driver()
    if type(driver) in LENIENT_RESPONSE_VALUES:
        request.applymarker(pytest.mark.xfail(strict=True, reason="h11 allows CTLs but NUL"))
    one_request(driver, GET_A)
    with pytest.raises(ValueError):
        driver.send_response(200, [(b"x-v", b"a\x01b"), (b"content-length", b"0")])


def test_response_body_longer_than_content_length(driver: Driver) -> None:
    one_request(driver, GET_A)
    driver.send_response(200, [(b"content-length", b"2")])
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do
        driver.send_body(b"too long")


# -- the same events however the bytes are split -------------------------------------

STREAM = (
    GET_A
    + POST_CL
    + req(b"Expect: 100-continue", b"Content-Length: 3", line=b"PUT /e?q=1 HTTP/1.1", body=b"xyz")
    + POST_CHUNKED
    + req(b"Accept: */*", b"X-Obs: caf\xc3\xa9", line=b"GET http://h.example/abs?x#f HTTP/1.1")
    + req(b"Connection: close", line=b"DELETE /last HTTP/1.1")
)

BAD_STREAMS = [
    GET_A + req(b"Content-Length: 1", b"Transfer-Encoding: chunked", line=POST, body=b"0\r\n\r\n"),
    POST_CHUNKED + b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
    POST_CL + b"GET / HTTP/1.1\r\nHost: a\n\r\n" + GET_B,
    GET_A + req(b"Transfer-Encoding: chunked", line=POST, body=b"5\r\nhelloXX0\r\n\r\n"),
]


def splits(data: bytes, points: Iterable[int]) -> list[bytes]:
    cuts = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


def test_stream_reference(driver: Driver) -> None:
    result = serve(driver, [STREAM])
    assert paths(result) == [b"/a", b"/cl", b"/e", b"/chunked", b"/abs", b"/last"]
    assert result[-1] == ("end",)


def test_every_two_way_split(make_driver: MakeDriver) -> None:
    expected = serve(make_driver(), [STREAM])
    for cut in range(1, len(STREAM)):
        assert serve(make_driver(), splits(STREAM, [cut])) == expected, cut


def test_byte_by_byte(make_driver: MakeDriver) -> None:
    expected = serve(make_driver(), [STREAM])
    assert serve(make_driver(), bytewise(STREAM)) == expected


def test_random_splits(make_driver: MakeDriver) -> None:
    expected = serve(make_driver(), [STREAM])
    rng = random.Random(9112)
    for _ in range(300):
        points = rng.sample(range(1, len(STREAM)), rng.randint(2, 40))
        assert serve(make_driver(), splits(STREAM, points)) == expected, points


@pytest.mark.parametrize("stream", BAD_STREAMS)
def test_refusal_independent_of_split(make_driver: MakeDriver, stream: bytes) -> None:
    expected = serve(make_driver(), [stream])
    assert expected[-1][0] == "error"
    for cut in range(1, len(stream)):
        assert serve(make_driver(), splits(stream, [cut])) == expected, cut
    assert serve(make_driver(), bytewise(stream)) == expected
    rng = random.Random(7230)
    for _ in range(50):
        points = rng.sample(range(1, len(stream)), rng.randint(2, 20))
        assert serve(make_driver(), splits(stream, points)) == expected, points


# -- differential: every driver gives the same verdict on the same bytes --------------

MUTATION_SEEDS = [
    STREAM,
    POST_CHUNKED + GET_A,
    req(b"Connection: close", b"X-A: b", line=b"GET /x?y=1 HTTP/1.0") + GET_B,
    b"GET http://a.b:80/p?q#f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1;a=b\r\nx\r\n0\r\nT: 1\r\n\r\n",
]
MUTATIONS = [
    b"\r", b"\n", b" ", b"\t", b":", b",", b";", b"0", b"a", b"\x00", b"\x7f", b"\x80",
    b"\r\n", b"\r\n\r\n", b"#", b"?", b"/", b"@", b"HTTP/1.0", b"Host: h\r\n",
    b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
    b"Expect: 100-continue\r\n", b"Upgrade: x\r\nConnection: upgrade\r\n",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out) + 1)
        op = rng.random()
        if op < 0.4:
            out[pos:pos] = rng.choice(MUTATIONS)
        elif op < 0.7:
            del out[pos : pos + rng.randint(1, 3)]
        else:
            out[pos : pos + 1] = rng.choice(MUTATIONS)
    return bytes(out)


def verdict(cls: type, data: bytes, limits: Limits, eof: bool) -> list[tuple[Any, ...]]:
    driver: Driver = cls(limits)
    return serve(driver, [data, b""] if eof else [data])


def test_mutated_requests_same_verdict() -> None:
    """Random edits of valid streams: where h11 refuses, every driver
    refuses with the same status; where it accepts, every driver yields the
    same events.  The one licensed difference is a stricter verdict on a
    chunked body (the LENIENT_* sets above)."""
    rng = random.Random(9110)
    reference, *others = DRIVER_CLASSES
    for _ in range(1500):
        data = mutate(rng, rng.choice(MUTATION_SEEDS))
        limits = SMALL if rng.random() < 0.2 else Limits()
        eof = rng.random() < 0.3
        expected = verdict(reference, data, limits, eof)
        for cls in others:
            got = verdict(cls, data, limits, eof)
            if got == expected:
                continue
            assert b"chunked" in data.lower(), (cls, data, expected, got)
            assert got[-1] == ("error", 400), (cls, data, expected, got)


def normalized(response: bytes) -> tuple[bytes, list[tuple[bytes, Any]], bytes]:
    """A response with header names lower-cased, fields sorted and
    Connection tokens merged: what a client can tell apart."""
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    fields: list[tuple[bytes, Any]] = []
    tokens: set[bytes] = set()
    for line in lines:
        name, _, value = line.partition(b": ")
        if name.lower() == b"connection":
            tokens |= {t.strip() for t in value.lower().split(b",")}
        else:
            fields.append((name.lower(), value))
    if tokens:
        fields.append((b"connection", sorted(tokens)))
    return status_line.split(b" ")[1], sorted(fields), body


def exchange(
    cls: type, request: bytes, status: int, headers: Headers, pieces: list[bytes]
) -> tuple[Any, ...]:
    driver: Driver = cls(Limits())
    feed(driver, request)
    try:
        out = driver.send_response(status, list(headers))
        for piece in pieces:
            out += driver.send_body(piece)
        out += driver.send_end()
    except Exception:
        return ("refused",)
    return normalized(out), driver.response_will_close, driver.start_next_cycle()


RESPONSE_REQUESTS = [
    GET_A,
    req(line=b"HEAD / HTTP/1.1"),
    req(line=b"GET / HTTP/1.0", host=None),
    req(line=b"HEAD / HTTP/1.0", host=None),
    req(b"Connection: close"),
]
RESPONSE_HEADERS: list[Headers] = [
    [],
    [(b"content-length", b"3")],
    [(b"Content-Length", b"3"), (b"content-length", b"3")],
    [(b"content-length", b"3"), (b"content-length", b"4")],
    [(b"content-length", b"3, 3")],
    [(b"content-length", b"x")],
    [(b"transfer-encoding", b"Chunked")],
    [(b"transfer-encoding", b"gzip")],
    [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")],
    [(b"connection", b"close")],
    [(b"connection", b"keep-alive")],
    [(b"connection", b"Upgrade, close"), (b"x-a", b"b")],
    [(b"x-a", b" b")],
]


@pytest.mark.parametrize("request_bytes", RESPONSE_REQUESTS)
def test_responses_framed_alike(request_bytes: bytes) -> None:
    """Every driver frames a response as h11 does: same status, fields (up
    to order and case), body bytes, keep-alive decision, and refusals."""
    reference, *others = DRIVER_CLASSES
    for headers, pieces, status in itertools.product(
        RESPONSE_HEADERS, [[], [b"abc"], [b"a", b"", b"bc"], [b"abcd"]], [200, 204, 304, 404]
    ):
        expected = exchange(reference, request_bytes, status, headers, pieces)
        for cls in others:
            got = exchange(cls, request_bytes, status, headers, pieces)
            assert got == expected, (cls, headers, pieces, status)


# -- choosing the driver (FLASK_ASYNC_WORKER_HTTP_PARSER) ------------------------------


def test_http_parser_setting() -> None:
    assert Extra.from_environ({}).http_parser == "auto"
    assert Extra.from_environ({"FLASK_ASYNC_WORKER_HTTP_PARSER": " H11 "}).http_parser == "h11"
    with pytest.raises(ValueError, match="FLASK_ASYNC_WORKER_HTTP_PARSER"):
        Extra.from_environ({"FLASK_ASYNC_WORKER_HTTP_PARSER": "llhttp"})


@pytest.mark.parametrize(
    ("setting", "importable", "expected"),
    [
        ("auto", True, HttptoolsDriver),
        ("auto", False, H11Driver),
        ("httptools", True, HttptoolsDriver),
        ("h11", True, H11Driver),
        ("h11", False, H11Driver),
    ],
)
def test_driver_selection(
    monkeypatch: pytest.MonkeyPatch, setting: str, importable: bool, expected: type
) -> None:
    if not importable:
        # None in sys.modules makes the import fail as a missing package does.
        monkeypatch.setitem(sys.modules, "flask_async_worker.protocols.httptools_driver", None)
    name, make = http11_driver_class(setting)
    assert make is expected
    assert name == ("h11" if expected is H11Driver else "httptools")


def test_explicit_httptools_must_be_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask_async_worker.protocols.httptools_driver", None)
    with pytest.raises(RuntimeError, match="httptools"):
        http11_driver_class("httptools")
