"""HTTP/1.1 conformance and robustness against a real gunicorn arbiter, once
with each HTTP/1.1 parser (the ``http_parser`` fixture).

Malformed input goes over raw sockets, valid traffic through httpx and curl.
Every refusal is checked for its exact status, for the application never
seeing the request (``/hit?tag=...`` records a tag in ``/events``), for one
warning line in the error log, and for the worker surviving it (the same
worker pid still answers).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import IO

import httpx
import pytest

from .conftest import Gunicorn, parser_env, raw_request, status_of

CURL_TIMEOUT = 10


# -- servers (one per module, shared by the tests) ---------------------------------


def start(
    *args: str, env: dict[str, str] | None = None, parser: str | None = None
) -> Iterator[Gunicorn]:
    if parser is not None:
        env = parser_env(parser, env)
    server = Gunicorn("asgi_app:app", *args, env=env, wait=False)
    try:
        server.wait_ready()
        if parser is not None:
            # The worker really runs the parser under test.
            server.wait_for_log(rf"HTTP/1\.1 parser: {parser}\b")
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(http_parser: str) -> Iterator[Gunicorn]:
    yield from start("--keep-alive", "5", parser=http_parser)


@pytest.fixture(scope="module")
def limited(http_parser: str) -> Iterator[Gunicorn]:
    yield from start(
        "--limit-request-line",
        "100",
        "--limit-request-fields",
        "5",
        "--limit-request-field_size",
        "100",
        "--header-map",
        "refuse",
        parser=http_parser,
    )


# -- helpers -----------------------------------------------------------------------


def read_response(f: IO[bytes], method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Read one response (status, lower-cased headers, de-chunked body)."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1."), f"not a status line: {status_line!r}"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    if method == "HEAD" or status in (204, 304) or status < 200:
        body = b""
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int(f.readline().strip(), 16)
            if size == 0:
                assert f.readline() == b"\r\n"
                break
            body += f.read(size)
            assert f.readline() == b"\r\n"
    else:
        body = f.read()
    return status, headers, body


def get(server: Gunicorn, path: str) -> bytes:
    data = raw_request(
        server.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
    )
    assert status_of(data) == 200, data
    return data.partition(b"\r\n\r\n")[2]


def events(server: Gunicorn) -> list[str]:
    return get(server, "/events").decode().splitlines()


def worker_pid(server: Gunicorn) -> int:
    pids = server.worker_pids()
    assert len(pids) == 1, f"the worker was replaced: {pids}\n{server.log()}"
    return pids[0]


def assert_alive(server: Gunicorn) -> None:
    """The same worker that booted still answers a normal request."""
    pid = worker_pid(server)
    assert int(get(server, "/pid")) == pid


def warnings_since(server: Gunicorn, mark: int) -> list[str]:
    text = server.log_path.read_bytes()[mark:].decode(errors="replace")
    return [line for line in text.splitlines() if "[WARNING]" in line]


def log_mark(server: Gunicorn) -> int:
    return server.log_path.stat().st_size


def wait_for_events(server: Gunicorn, before: int, timeout: float = 3.0) -> list[str]:
    """Events recorded after the first ``before`` ones; waits for at least one."""
    deadline = time.monotonic() + timeout
    while True:
        new = events(server)[before:]
        if new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", *args],
        capture_output=True,
        timeout=CURL_TIMEOUT,
        check=False,
    )


# -- 1. request smuggling and malformed heads --------------------------------------

HIT = b"POST /hit?tag=%s HTTP/1.1\r\n"

BAD_REQUESTS = {
    "cl-and-te": (
        HIT + b"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        HIT + b"Host: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    "conflicting-cl": (
        HIT + b"Host: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "repeated-cl": (
        HIT + b"Host: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    "cl-list": (HIT + b"Host: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "cl-sign": (HIT + b"Host: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    "te-chunked-identity": (
        HIT + b"Host: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip-only": (HIT + b"Host: x\r\nTransfer-Encoding: gzip\r\n\r\nhello", 400),
    "te-chunked-twice": (
        HIT + b"Host: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "te-http10": (
        b"POST /hit?tag=%s HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip-chunked": (
        HIT + b"Host: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "obs-fold": (HIT + b"Host: x\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400),
    "obs-fold-te": (
        HIT + b"Host: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "bare-lf": (b"POST /hit?tag=%s HTTP/1.1\nHost: x\nContent-Length: 0\n\n", 400),
    "bare-lf-mixed": (HIT + b"Host: x\nContent-Length: 0\r\n\r\n", 400),
    "bare-cr": (HIT + b"Host: x\rX: y\r\nContent-Length: 0\r\n\r\n", 400),
    "space-before-colon": (HIT + b"Host: x\r\nContent-Length : 5\r\n\r\nhello", 400),
    "space-before-colon-te": (
        HIT + b"Host: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "tab-before-colon": (HIT + b"Host: x\r\nX-Foo\t: 1\r\nContent-Length: 0\r\n\r\n", 400),
    "nul-in-value": (HIT + b"Host: x\r\nX-Foo: a\x00b\r\nContent-Length: 0\r\n\r\n", 400),
    "invalid-chunk-size": (
        HIT + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-size-overflow": (
        HIT + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "missing-host": (b"POST /hit?tag=%s HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
    "two-hosts": (HIT + b"Host: x\r\nHost: y\r\nContent-Length: 0\r\n\r\n", 400),
    "host-with-space": (HIT + b"Host: exa mple.com\r\nContent-Length: 0\r\n\r\n", 400),
    "host-with-userinfo": (HIT + b"Host: user@example.com\r\nContent-Length: 0\r\n\r\n", 400),
    "host-with-slash": (HIT + b"Host: example.com/evil\r\nContent-Length: 0\r\n\r\n", 400),
    "bad-version": (b"POST /hit?tag=%s HTTP/1.2\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 505),
    "contradictory-scheme-headers": (
        HIT + b"Host: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n"
        b"Content-Length: 0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize(("request_bytes", "status"), BAD_REQUESTS.values(), ids=BAD_REQUESTS)
def test_bad_request_refused(server, request_bytes, status, request):
    tag = request.node.callspec.id.encode()
    mark = log_mark(server)
    before = len(events(server))
    response = raw_request(server.port, request_bytes.replace(b"%s", tag, 1))
    assert status_of(response) == status, response
    assert b"connection: close" in response.lower()
    time.sleep(0.1)
    warnings = warnings_since(server, mark)
    assert len(warnings) == 1, warnings
    assert "Invalid request" in warnings[0]
    # The application never takes the request (or its body) as valid.
    recorded = [e for e in events(server)[before:] if e.startswith(f"hit {tag.decode()}")]
    assert not [e for e in recorded if "complete=True" in e], recorded
    if b"chunk" not in tag:
        # A refused head never reaches the app at all.
        assert recorded == []
    assert_alive(server)


# -- 2. gunicorn's request limits ------------------------------------------------


def line_of(size: int, tag: bytes) -> bytes:
    """A request line of exactly ``size`` bytes (CRLF not counted)."""
    line = b"GET /hit?tag=%s&pad= HTTP/1.1" % tag
    pad = size - len(line)
    return line.replace(b"&pad=", b"&pad=" + b"a" * pad)


def field_of(size: int) -> bytes:
    """A header field line of exactly ``size`` bytes (CRLF not counted)."""
    return b"X-Long: " + b"a" * (size - 8)


# gunicorn's semantics: a request line longer than --limit-request-line, more
# fields than --limit-request-fields, a field line whose length with its CRLF
# exceeds --limit-request-field_size.
LIMIT_CASES = {
    "request-line": (line_of(101, b"request-line") + b"\r\nHost: x\r\n\r\n", 414),
    "request-line-unfinished": (b"GET /" + b"a" * 300, 414),
    "fields": (
        b"GET /hit?tag=fields HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(5))
        + b"\r\n",
        431,
    ),
    "field-size": (
        b"GET /hit?tag=field-size HTTP/1.1\r\nHost: x\r\n" + field_of(99) + b"\r\n\r\n",
        431,
    ),
    "field-unfinished": (
        b"GET /hit?tag=field-unfinished HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 1000,
        431,
    ),
    # Not a size limit, but another flag this server sets: refused like gunicorn.
    "header-map-refuse": (
        b"GET /hit?tag=underscore HTTP/1.1\r\nHost: x\r\nX_Foo: 1\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize(("request_bytes", "status"), LIMIT_CASES.values(), ids=LIMIT_CASES)
def test_limit_refused(limited, request_bytes, status):
    mark = log_mark(limited)
    response = raw_request(limited.port, request_bytes)
    assert status_of(response) == status, response
    time.sleep(0.1)
    assert len(warnings_since(limited, mark)) == 1
    assert not [e for e in events(limited) if e.startswith("hit ")]
    assert_alive(limited)


FITS = {
    "request-line": line_of(100, b"fits") + b"\r\nHost: x\r\n\r\n",
    "fields": (
        b"GET /hit?tag=fits HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(4))
        + b"\r\n"
    ),
    "field-size": b"GET /hit?tag=fits HTTP/1.1\r\nHost: x\r\n" + field_of(98) + b"\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", FITS.values(), ids=FITS)
def test_limit_allows_what_fits(limited, request_bytes):
    response = raw_request(limited.port, request_bytes, read_until_close=False)
    assert status_of(response) == 200, response


# -- 3. valid traffic --------------------------------------------------------------


def test_keepalive_with_httpx(server):
    with httpx.Client(base_url=server.url) as client:
        ports = {client.get("/scope").json()["client"][1] for _ in range(3)}
        r = client.post("/echo", content=b"y" * 50_000)
        assert r.content == b"y" * 50_000
        ports.add(client.get("/scope").json()["client"][1])
    assert len(ports) == 1


def test_pipelining_in_order_with_bodies(server):
    requests = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
        b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n"
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(requests)
        f = sock.makefile("rb")
        assert read_response(f)[::2] == (200, b"first")
        assert read_response(f)[::2] == (200, b"slept")
        assert read_response(f)[::2] == (200, b"second")
        status, headers, _ = read_response(f, "HEAD")
        assert (status, headers["content-length"]) == (200, "5")
        assert read_response(f)[::2] == (200, b"hello")
        assert f.read() == b""


def test_chunked_request_body_with_curl(server, tmp_path):
    payload = bytes(range(256)) * 400
    path = tmp_path / "payload"
    path.write_bytes(payload)
    result = curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}", f"{server.url}/echo"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_chunked_response_with_curl(server):
    result = curl("--raw", "-i", f"{server.url}/stream?n=3")
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert re.search(rb"(?im)^transfer-encoding: chunked\r?$", head)
    assert body == b"7\r\nchunk0\n\r\n7\r\nchunk1\n\r\n7\r\nchunk2\n\r\n0\r\n\r\n"
    # And de-chunked by a client.
    assert httpx.get(f"{server.url}/stream?n=3").content == b"chunk0\nchunk1\nchunk2\n"


def test_expect_continue_answered_when_app_reads(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        f = sock.makefile("rb")
        status, _, _ = read_response(f)
        assert status == 100
        sock.sendall(b"hello")
        status, _, body = read_response(f)
        assert (status, body) == (200, b"hello")


def test_expect_continue_not_sent_when_app_answers_unread(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        f = sock.makefile("rb")
        status, headers, body = read_response(f)
        assert (status, body) == (200, b"hello")
        # The body was never read: the connection cannot be reused.
        assert headers["connection"] == "close"
        assert f.read() == b""


def test_expect_continue_with_curl(server):
    result = curl("-H", "Expect: 100-continue", "--data-binary", "x" * 2000, f"{server.url}/echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"x" * 2000


def test_head_keeps_content_length_and_sends_no_body(server):
    r = httpx.head(f"{server.url}/")
    assert r.status_code == 200
    assert r.headers["content-length"] == "5"
    assert r.content == b""
    result = curl("-I", f"{server.url}/stream?n=2")
    assert result.returncode == 0, result.stderr
    assert status_of(result.stdout) == 200
    assert result.stdout.endswith(b"\r\n\r\n")


def test_http10_response_closes(server):
    start = time.monotonic()
    data = raw_request(server.port, b"GET / HTTP/1.0\r\n\r\n", timeout=5)
    assert time.monotonic() - start < 2
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert body == b"hello"
    assert re.search(rb"(?im)^connection: close\r?$", head)
    # A streamed response to HTTP/1.0 is close-delimited, never chunked.
    data = raw_request(server.port, b"GET /stream?n=2 HTTP/1.0\r\n\r\n", timeout=5)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert body == b"chunk0\nchunk1\n"


def test_connection_close_honoured(server):
    start = time.monotonic()
    data = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert time.monotonic() - start < 2
    assert status_of(data) == 200
    assert re.search(rb"(?im)^connection: close\r?$", data)
    assert data.endswith(b"\r\n\r\nhello")


def scope_of(server: Gunicorn, head: bytes) -> dict[str, object]:
    data = raw_request(server.port, head)
    assert status_of(data) == 200, data
    return json.loads(data.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def test_absolute_form_target(server):
    scope = scope_of(
        server,
        b"GET http://example.com:8080/scope?a=1 HTTP/1.1\r\nHost: other\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1"
    hosts = [v for n, v in scope["headers"] if n == "host"]  # type: ignore[attr-defined]
    assert hosts == ["example.com:8080"]


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/scope?a=1#frag", "/scope", "a=1"),
        (b"/scope#frag?b=2", "/scope", ""),
        (b"http://example.com/scope?a=1#f?x=y", "/scope", "a=1"),
    ],
)
def test_fragment_never_reaches_query(server, target, path, query):
    scope = scope_of(server, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
    assert (scope["path"], scope["query_string"]) == (path, query)


# -- 4. a body cut short -----------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "close-after-delay", "half-close"])
def test_truncated_body_never_complete(server, how):
    before = len(events(server))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /length HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        sock.sendall(b"a" * 400)
        if how == "close-after-delay":
            time.sleep(0.3)
        elif how == "half-close":
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(3)
            # The server closes (perhaps with a 400), never answers 200.
            assert b" 200 " not in sock.makefile("rb").read()
    recorded = [e for e in wait_for_events(server, before) if e.startswith("length")]
    assert recorded in ([], ["length complete=False n=400"], ["length complete=False n=0"])
    assert_alive(server)


# -- 7. application errors ---------------------------------------------------------


def test_app_exception_is_500_and_logged_once(server):
    mark = log_mark(server)
    r = httpx.get(f"{server.url}/error")
    assert r.status_code == 500
    assert r.headers["connection"] == "close"
    time.sleep(0.1)
    log = server.log_path.read_bytes()[mark:].decode()
    assert log.count("Error handling request GET /error") == 1
    assert log.count("Traceback (most recent call last)") == 1
    assert log.count("RuntimeError: boom from /error") == 1
    assert_alive(server)


def test_app_exception_after_start_truncates(server):
    start = time.monotonic()
    data = raw_request(server.port, b"GET /error-after-start HTTP/1.1\r\nHost: x\r\n\r\n")
    assert time.monotonic() - start < 3
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert re.search(rb"(?im)^transfer-encoding: chunked\r?$", head)
    assert body == b"7\r\npartial\r\n"  # no terminating 0-size chunk
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/error-after-start")
    assert_alive(server)


def test_no_response_is_500(server):
    r = httpx.get(f"{server.url}/no-response")
    assert r.status_code == 500
    assert_alive(server)


@pytest.mark.parametrize("path", ["/crlf-header", "/bad-header-name"])
def test_bad_response_header_is_500(server, path):
    data = raw_request(server.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    assert status_of(data) == 500
    assert b"evil" not in data.lower()
    assert b"x-bad" not in data.lower()
    assert_alive(server)


def test_response_header_whitespace_is_stripped(server):
    """Leading/trailing whitespace is not part of a field value: stripped,
    as gunicorn does, never a broken head."""
    data = raw_request(server.port, b"GET /padded-header HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(data) == 200
    assert b"\r\nx-padded: value\r\n" in data.lower()
    assert_alive(server)


# -- 8. early hints ----------------------------------------------------------------


def test_early_hints(server):
    data = raw_request(
        server.port, b"GET /early-hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 103 ")
    hints, _, final = data.partition(b"\r\n\r\n")
    assert b"link: </style.css>; rel=preload; as=style" in hints.lower()
    assert final.startswith(b"HTTP/1.1 200 ")
    assert final.endswith(b"\r\n\r\nafter hints")


def test_early_hints_not_sent_to_http10(server):
    data = raw_request(server.port, b"GET /early-hints HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b" 103 " not in data
