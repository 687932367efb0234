"""HTTP/2 clients that misbehave on purpose, against a real arbiter.

One worker speaks cleartext HTTP/2 with prior knowledge to loopback, with
small limits and one-second timeouts so every bound is reached quickly.  The
client is h2's own state machine over a plain socket, so well-formed traffic
stays well-formed, plus hand-made frames (hyperframe) for what h2 refuses to
send.  Every frame the server sends is also parsed on its own, so a GOAWAY
or RST_STREAM is seen even after the client's state machine gives up.

Each case checks what the server answered, that the application never saw
what it must not see (``/sse?name=...`` leaves ``<name>.closed`` in the marks
directory when its generator closes), that the server logged the fault once,
and that the same worker still serves a fresh connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from .conftest import Gunicorn, SocketClient, closed_after, raw_request, status_of
from .test_timeouts import RSSSampler, wait_until

TIMEOUT = 1.0  # header, body and send timeouts
KEEPALIVE = 2
MAX_STREAMS = 4
WINDOW = 8192  # the server's initial stream window: one DATA frame can exceed it
MAX_HEADER_LIST = 16384
MAX_FIELDS = 20
MAX_LINE = 512
MAX_RESETS = 50
MAX_CONTROL = 300
MB = 1024 * 1024
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Header = tuple[bytes, bytes]


# -- the server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory, http2_engine: str) -> Path:
    return tmp_path_factory.mktemp(f"h2-marks-{http2_engine}")


@pytest.fixture(scope="module")
def server(marks: Path, http2_engine: str) -> Iterator[Gunicorn]:
    # One arbiter for the module: a worker that survives one attack must
    # also be fit for the next, and starting one per case would cost most
    # of the time budget.
    server = Gunicorn(
        "h2_app:app",
        "--http-protocols",
        "h2,h1",
        "--http2-cleartext",
        "prior-knowledge",
        "--http2-max-concurrent-streams",
        str(MAX_STREAMS),
        "--http2-initial-window-size",
        str(WINDOW),
        "--http2-max-header-list-size",
        str(MAX_HEADER_LIST),
        "--limit-request-fields",
        str(MAX_FIELDS),
        "--limit-request-line",
        str(MAX_LINE),
        "--keep-alive",
        str(KEEPALIVE),
        env={
            "FLASK_ASYNC_WORKER_HTTP2_ENGINE": http2_engine,
            "H2_TEST_MARKS": str(marks),
            "FLASK_ASYNC_WORKER_H2_MAX_RESETS": str(MAX_RESETS),
            "FLASK_ASYNC_WORKER_H2_MAX_CONTROL_FRAMES": str(MAX_CONTROL),
            "FLASK_ASYNC_WORKER_HEADER_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_BODY_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_SEND_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_TICK": "0.1",
        },
        wait=False,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pid(server: Gunicorn) -> int:
    pids = server.worker_pids()
    assert len(pids) == 1, pids
    return pids[0]


# -- a client that can misbehave -------------------------------------------------------


@dataclass
class Response:
    status: int | None = None
    headers: list[Header] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False


class H2Client(SocketClient):
    """h2's client state machine on a blocking socket to 127.0.0.1."""

    def __init__(
        self,
        port: int,
        *,
        window: int | None = None,
        rcvbuf: int | None = None,
        timeout: float = 3.0,
    ) -> None:
        super().__init__(port, rcvbuf=rcvbuf, timeout=timeout)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
            if window > 65535:
                self.conn.increment_flow_control_window(window - 65535)
        self.responses: dict[int, Response] = {}
        # Every frame the server sent, parsed independently of h2.
        self.frames: list[Frame] = []
        self.settings_received = False
        self.in_sync = True
        self._buf = bytearray()
        self.flush()

    # -- sending -------------------------------------------------------------------

    def send_frames(self, *frames: Frame) -> None:
        self.send_raw(b"".join(f.serialize() for f in frames))

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.send_raw(data)

    def request(
        self,
        path: str,
        method: str = "GET",
        *,
        extra: list[Header] | None = None,
        block: list[Header] | None = None,
        end_stream: bool = True,
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        if block is None:
            block = [
                (b":method", method.encode()),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1"),
                (b":path", path.encode()),
                *(extra or []),
            ]
        self.conn.send_headers(sid, block, end_stream=end_stream)
        self.responses[sid] = Response()
        self.flush()
        return sid

    def reserve_stream_id(self) -> int:
        """A stream id for a hand-made HEADERS frame that h2 will not reuse."""
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.highest_outbound_stream_id = sid
        return sid

    # -- receiving -----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(buf[9 : 9 + length])))
            del buf[: 9 + length]
            self.frames.append(frame)
        if not self.in_sync:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Hand-made frames put the server and h2 out of step; the raw
            # frames above still say what happened.
            self.in_sync = False
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            response = self.responses.setdefault(event.stream_id or 0, Response())
            response.headers = list(event.headers or [])
            for name, value in response.headers:
                if name == b":status":
                    response.status = int(value)
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id or 0
            self.responses.setdefault(sid, Response()).body += event.data or b""
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses.setdefault(event.stream_id or 0, Response()).ended = True
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True

    def handshake(self) -> H2Client:
        self.wait(lambda: self.settings_received, what="server SETTINGS")
        return self

    def response(self, sid: int, timeout: float = 3.0) -> Response:
        self.wait(lambda: self.responses[sid].ended, timeout, f"end of stream {sid}")
        return self.responses[sid]

    def goaway(self) -> GoAwayFrame | None:
        for frame in self.frames:
            if isinstance(frame, GoAwayFrame):
                return frame
        return None

    def resets(self) -> dict[int, int]:
        return {f.stream_id: f.error_code for f in self.frames if isinstance(f, RstStreamFrame)}

    def summary(self) -> list[str]:
        out = []
        for f in self.frames[-20:]:
            if isinstance(f, GoAwayFrame):
                out.append(
                    f"GOAWAY({f.error_code}, last={f.last_stream_id}, {f.additional_data!r})"
                )
            elif isinstance(f, RstStreamFrame):
                out.append(f"RST_STREAM({f.stream_id}, {f.error_code})")
            else:
                out.append(f"{type(f).__name__}({f.stream_id})")
        return out


def literal_block(headers: list[Header]) -> bytes:
    """A header block that leaves HPACK's dynamic table alone, so frames
    made by hand do not desynchronise the server's decoder from h2's encoder."""
    encoder = hpack.Encoder()
    return bytes(encoder.encode([hpack.NeverIndexedHeaderTuple(n, v) for n, v in headers]))


def get_block(path: str, method: bytes = b"GET") -> list[Header]:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1"),
        (b":path", path.encode()),
    ]


# -- checks ----------------------------------------------------------------------------


def log_mark(server: Gunicorn) -> int:
    return server.log_path.stat().st_size


def log_lines(server: Gunicorn, mark: int, needle: str) -> list[str]:
    text = server.log_path.read_bytes()[mark:].decode(errors="replace")
    return [line for line in text.splitlines() if needle in line]


def assert_logged_once(server: Gunicorn, mark: int, needle: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not log_lines(server, mark, needle) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a duplicate would follow at once
    lines = log_lines(server, mark, needle)
    assert len(lines) == 1, f"{needle!r} logged {len(lines)} times:\n" + "\n".join(lines)


def assert_serving(server: Gunicorn, pid: int) -> None:
    """The worker that booted with the module answers a fresh connection."""
    assert server.worker_pids() == [pid], f"the worker was replaced:\n{server.log()}"
    with H2Client(server.port) as client:
        sid = client.request("/hello")
        response = client.response(sid)
    assert (response.status, bytes(response.body)) == (200, b"hello")


def wait_for_marks(marks: Path, names: list[str], timeout: float) -> float:
    start = time.monotonic()
    while True:
        missing = [n for n in names if not (marks / f"{n}.closed").exists()]
        if not missing:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"generators still open: {missing}"
        time.sleep(0.05)


def assert_never_ran(marks: Path, name: str, wait: float = 0.3) -> None:
    """An SSE view that started would close (and mark) once its stream went."""
    time.sleep(wait)
    assert not (marks / f"{name}.closed").exists(), f"the application saw {name}"


def tcp_row(server_port: int, client_port: int, *, with_inode: bool = False) -> list[str]:
    """The kernel's /proc/net/tcp line for the server's end of one loopback
    connection (the listening socket's twin rows have inode 0)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if (local, remote) == (server_port, client_port) and (
                    int(fields[9]) or not with_inode
                ):
                    return fields
    raise AssertionError(f"no connection from port {client_port}")


def worker_socket(server_port: int, client_port: int) -> int:
    """The inode of the server's end of one loopback connection."""
    return int(tcp_row(server_port, client_port, with_inode=True)[9])


def holds_socket(pid: int, inode: int) -> bool:
    target = f"socket:[{inode}]"
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False


# -- baseline: the client and the server agree -----------------------------------------


def test_well_behaved_streams_work(server: Gunicorn, pid: int) -> None:
    """The hostile cases below mean something only if the client is right."""
    body = bytes(range(256)) * 400  # 100 KiB: needs the server's window updates
    with H2Client(server.port) as client:
        client.handshake()
        hello = client.request("/hello")
        ahello = client.request("/ahello")
        download = client.request("/download?mib=1")
        echo = client.request("/echo", "POST", end_stream=False)
        sent = 0
        while sent < len(body):
            window = client.conn.local_flow_control_window(echo)
            size = min(window, client.conn.max_outbound_frame_size, len(body) - sent)
            if size:
                client.conn.send_data(echo, body[sent : sent + size])
                client.flush()
                sent += size
            else:
                client.wait(lambda: client.conn.local_flow_control_window(echo) > 0)
        client.conn.end_stream(echo)
        client.flush()
        assert bytes(client.response(hello).body) == b"hello"
        assert bytes(client.response(ahello).body) == b"ahello"
        assert bytes(client.response(download).body) == bytes(range(256)) * 256 * 16
        assert client.response(echo).status == 200
        assert json.loads(client.responses[echo].body) == {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    assert_serving(server, pid)


# -- rapid reset -----------------------------------------------------------------------


def test_rapid_reset_ends_connection_and_its_streams(
    server: Gunicorn, pid: int, marks: Path
) -> None:
    """CVE-2023-44487: each reset stream cost the server a task while the
    client paid one frame; past the limit the whole connection goes, and
    with it the work its live streams were doing."""
    mark = log_mark(server)
    live = [f"rr-live-{i}" for i in range(MAX_STREAMS - 1)]
    with H2Client(server.port) as client:
        client.handshake()
        sids = [client.request(f"/sse?name={name}") for name in live]
        client.wait(lambda: all(client.responses[s].body for s in sids), what="SSE events")
        conn = client.conn
        for i in range(MAX_RESETS + 10):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, get_block(f"/sse?name=rr-flood-{i}"), end_stream=True)
            conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()  # the whole burst in one write
        client.wait_closed()
        goaway = client.goaway()
    assert goaway is not None, "closed without GOAWAY"
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # The application's generators of the streams still open were closed.
    wait_for_marks(marks, live, 5.0)
    assert_logged_once(server, mark, "HTTP/2 flood: too many streams reset")
    assert_serving(server, pid)


# -- control frame floods --------------------------------------------------------------


def _control_frame(kind: str, i: int) -> Frame:
    if kind == "ping":
        return PingFrame(0, opaque_data=i.to_bytes(8, "big"))
    if kind == "settings":
        return SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 16384 + i})
    # PRIORITY for streams never opened: legal, and free to send.
    return PriorityFrame(1001 + 2 * i, depends_on=0, stream_weight=16)


@pytest.mark.parametrize("kind", ["ping", "settings", "priority"])
def test_control_frame_flood_is_calmed(server: Gunicorn, pid: int, kind: str) -> None:
    """Each PING or SETTINGS makes the server write an answer; a client that
    sends them by the thousand costs the server more than itself."""
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        client.send_frames(*(_control_frame(kind, i) for i in range(MAX_CONTROL + 50)))
        client.in_sync = False  # h2 did not see the hand-made frames
        elapsed = client.wait_closed()
        goaway = client.goaway()
    assert goaway is not None, "closed without GOAWAY"
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert elapsed < 1.0
    assert_logged_once(server, mark, "HTTP/2 flood: too many control frames")
    assert_serving(server, pid)


def test_control_frames_under_the_rate_are_answered(server: Gunicorn, pid: int) -> None:
    """The bound is a rate: a busy but steady client is never calmed."""
    burst = MAX_CONTROL * 3 // 4
    with H2Client(server.port) as client:

        def pings(expected: int) -> None:
            for i in range(burst):
                client.conn.ping((expected + i).to_bytes(8, "big"))
            client.flush()
            client.wait(
                lambda: sum(isinstance(f, PingFrame) for f in client.frames) >= expected + burst,
                what="PING ACKs",
            )

        client.handshake()
        # A stream in progress, so no idle or header timeout ends the test.
        sse = client.request("/sse?name=steady-pings")
        pings(0)
        time.sleep(1.1)
        pings(burst)  # more in total than the limit, but not in one second
        sid = client.request("/hello")
        assert client.response(sid).status == 200
        assert client.responses[sse].body
        assert client.goaway() is None
        client.conn.reset_stream(sse, ErrorCodes.CANCEL)
        client.flush()
    assert_serving(server, pid)


# -- concurrent streams ----------------------------------------------------------------


def test_stream_past_the_concurrency_limit_is_refused_alone(server: Gunicorn, pid: int) -> None:
    """RFC 9113 section 5.1.2: the stream over the limit is a stream error;
    the streams within it are the client's legitimate work."""
    with H2Client(server.port) as client:
        client.handshake()
        assert client.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
        # Ignore what the server announced.
        client.conn.remote_settings.update({SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        client.conn.remote_settings.acknowledge()
        within = [client.request("/sleep?s=0.3") for _ in range(MAX_STREAMS)]
        extra = client.request("/hello")
        client.wait(lambda: extra in client.resets() or client.closed, what="refusal")
        assert client.goaway() is None, f"the whole connection was ended: {client.summary()}"
        assert client.resets()[extra] in (ErrorCodes.REFUSED_STREAM, ErrorCodes.PROTOCOL_ERROR)
        for sid in within:
            assert client.response(sid).status == 200
        # Room again: the next stream is served.
        again = client.request("/hello")
        assert client.response(again).status == 200
    assert_serving(server, pid)


# -- header list size ------------------------------------------------------------------


def test_oversized_header_list_ends_connection(server: Gunicorn, pid: int, marks: Path) -> None:
    """HPACK can inflate a few bytes into a huge header list; past the
    announced bound the decoder stops before the application is involved."""
    mark = log_mark(server)
    # Each field is well within --limit-request-field_size; together they
    # exceed --http2-max-header-list-size.
    extra = [(b"x-pad-%d" % i, b"v" * 1500) for i in range(12)]
    with H2Client(server.port) as client:
        client.handshake()
        client.request("/sse?name=oversized", extra=extra)
        client.wait_closed()
        goaway = client.goaway()
    assert goaway is not None, "closed without GOAWAY"
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert_never_ran(marks, "oversized")
    assert_logged_once(server, mark, "Oversized header block")
    assert_serving(server, pid)


# -- malformed requests ----------------------------------------------------------------

# Malformed requests (RFC 9113 section 8.1.1) and the refusals the HTTP/1.1
# drivers make, answered on their stream while the connection carries on:
# (header block, status, what is logged, the SSE name the app would mark).
STREAM_FAULTS: dict[str, tuple[list[Header], int, str, str]] = {
    "missing-path": (
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1")],
        400,
        "missing :method, :scheme or :path",
        "",
    ),
    "uppercase-name": (
        [*get_block("/sse?name=upper"), (b"X-Upper", b"1")],
        400,
        "invalid header field name",
        "upper",
    ),
    "connection-header": (
        [*get_block("/sse?name=conn"), (b"connection", b"keep-alive")],
        400,
        "connection-specific header field",
        "conn",
    ),
    "connect": (
        [(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:443")],
        501,
        "CONNECT is not supported",
        "",
    ),
    "relative-path": (
        get_block("sse?name=relative"),
        400,
        "invalid request target",
        "relative",
    ),
    "too-many-fields": (
        [*get_block("/sse?name=fields"), *((b"x-f-%d" % i, b"1") for i in range(MAX_FIELDS + 1))],
        431,
        "too many header fields",
        "fields",
    ),
    "field-too-large": (
        [*get_block("/sse?name=field"), (b"x-big", b"v" * 9000)],
        431,
        "header field too large",
        "field",
    ),
    "path-too-long": (
        get_block("/sse?name=long&pad=" + "a" * MAX_LINE),
        414,
        "request target too long",
        "long",
    ),
}


@pytest.mark.parametrize("case", sorted(STREAM_FAULTS))
def test_malformed_request_refused_on_its_stream(
    server: Gunicorn, pid: int, marks: Path, case: str
) -> None:
    """One bad request must not cost the other streams of the connection,
    which may be other users' requests behind a proxy."""
    block, status, detail, name = STREAM_FAULTS[case]
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        bad = client.request("", block=block)
        good = client.request("/hello")
        assert client.response(bad).status == status
        assert client.response(good).status == 200
        after = client.request("/ahello")
        assert bytes(client.response(after).body) == b"ahello"
        assert client.goaway() is None
    if name:
        assert_never_ran(marks, name)
    assert_logged_once(server, mark, f"Invalid request from ip=127.0.0.1: {detail}")
    assert_serving(server, pid)


def _undecodable_block(client: H2Client) -> Frame:
    # An index far past both HPACK tables.
    sid = client.reserve_stream_id()
    return HeadersFrame(sid, data=b"\xff\xff\xff\x7f", flags=["END_HEADERS"])


def _even_stream_id(client: H2Client) -> Frame:
    # Client streams are odd (RFC 9113 section 5.1.1).
    block = literal_block(get_block("/sse?name=even"))
    return HeadersFrame(1000, data=block, flags=["END_HEADERS", "END_STREAM"])


@pytest.mark.parametrize(
    ("make", "needle", "code"),
    [
        # RFC 9113 section 4.3: HPACK state lost is a COMPRESSION_ERROR.
        (_undecodable_block, "header block", ErrorCodes.COMPRESSION_ERROR),
        (_even_stream_id, "stream ID", ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=["undecodable-header-block", "even-stream-id"],
)
def test_connection_error_ends_only_that_connection(
    server: Gunicorn, pid: int, make: Callable[[H2Client], Frame], needle: str, code: int
) -> None:
    """Faults that leave the connection's state unknown (HPACK out of step,
    stream ids misused) are connection errors: GOAWAY, then close."""
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        client.send_frames(make(client))
        client.in_sync = False
        client.wait_closed()
        goaway = client.goaway()
    assert goaway is not None, "closed without GOAWAY"
    assert goaway.error_code == code
    assert_logged_once(server, mark, "Invalid HTTP/2 from ip=127.0.0.1")
    assert needle in log_lines(server, mark, "Invalid HTTP/2")[0]
    assert_serving(server, pid)


# -- body timeout ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/echo", "/echo-sync"])
def test_stalled_body_gets_408_and_connection_survives(
    server: Gunicorn, pid: int, path: str
) -> None:
    """The body timeout is the stream's own: the connection and its other
    streams carry on."""
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        sid = client.request(path, "POST", end_stream=False)
        client.conn.send_data(sid, b"x" * 100)
        client.flush()
        start = time.monotonic()
        response = client.response(sid, timeout=TIMEOUT + 3)
        elapsed = time.monotonic() - start
        assert response.status == 408
        assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 2
        other = client.request("/hello")
        assert client.response(other).status == 200
        assert client.goaway() is None
    assert_logged_once(server, mark, "Request body timeout from ip=127.0.0.1")
    assert_serving(server, pid)


# -- zero window -----------------------------------------------------------------------


def test_zero_window_stream_reset_after_send_timeout(server: Gunicorn, pid: int) -> None:
    """A client can hold a response forever by never opening its window;
    the stream is cancelled, and the app's generator was held back by the
    write buffer instead of being drained into memory."""
    mark = log_mark(server)
    with RSSSampler(pid) as sampler, H2Client(server.port, window=0) as client:
        client.handshake()
        sid = client.request("/download?mib=64")
        start = time.monotonic()
        client.wait(lambda: sid in client.resets(), TIMEOUT + 3, "RST_STREAM")
        elapsed = time.monotonic() - start
        assert client.resets()[sid] == ErrorCodes.CANCEL
        assert client.responses[sid].status == 200
        assert not client.responses[sid].body
        assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 2
        # The connection is still good once the window opens.
        client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        client.flush()
        other = client.request("/hello")
        assert bytes(client.response(other).body) == b"hello"
    assert sampler.growth < 16 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert_logged_once(server, mark, "Send timeout to ip=127.0.0.1")
    assert_serving(server, pid)


# -- a client that reads nothing -------------------------------------------------------


def test_non_reading_client_is_dropped(server: Gunicorn, pid: int) -> None:
    """With the windows wide open only the socket holds the server back; a
    client that never reads must not make it buffer the responses, and its
    connection is given up after the send timeout as one event."""
    mark = log_mark(server)
    size = 64
    with (
        RSSSampler(pid) as sampler,
        H2Client(server.port, window=2**31 - 1, rcvbuf=64 * 1024) as client,
    ):
        client.handshake()
        inode = worker_socket(server.port, client.sock.getsockname()[1])
        assert holds_socket(pid, inode)
        for _ in range(MAX_STREAMS):
            client.request(f"/download?mib={size}")
        # Never read again: the worker must close its end on its own.  (The
        # kernel may still hold what was written; that is not the worker's.)
        elapsed = wait_until(lambda: not holds_socket(pid, inode), TIMEOUT + 4)
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 3
    assert sampler.growth < 24 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert_serving(server, pid)
    # One client stalled once: one warning, not one per stream as well.
    assert_logged_once(server, mark, "Send timeout to ip=127.0.0.1")


# -- the connection preface ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"],
    ids=["http11", "garbage-preface"],
)
def test_not_http2_on_prior_knowledge_port_gets_400(
    server: Gunicorn, pid: int, data: bytes
) -> None:
    mark = log_mark(server)
    assert status_of(raw_request(server.port, data, timeout=3)) == 400
    assert_logged_once(
        server, mark, "Invalid request from ip=127.0.0.1: expected the HTTP/2 connection preface"
    )
    assert_serving(server, pid)


@pytest.mark.parametrize("settings", [False, True], ids=["preface-only", "preface-settings"])
def test_silent_http2_connection_closed_after_header_timeout(
    server: Gunicorn, pid: int, settings: bool
) -> None:
    mark = log_mark(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT + 3) as sock:
        sock.sendall(PREFACE + (SettingsFrame(0).serialize() if settings else b""))
        elapsed, data = closed_after(sock, TIMEOUT + 3)
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1.5
    frame, _ = Frame.parse_frame_header(memoryview(data[:9]))
    assert isinstance(frame, SettingsFrame)  # the server's preface came first
    assert_logged_once(server, mark, "Closing HTTP/2 connection from 127.0.0.1: no request")
    assert_serving(server, pid)


def test_partial_preface_gets_408(server: Gunicorn, pid: int) -> None:
    mark = log_mark(server)
    start = time.monotonic()
    data = raw_request(server.port, PREFACE[:10], timeout=TIMEOUT + 3)
    assert status_of(data) == 408
    assert TIMEOUT * 0.8 < time.monotonic() - start < TIMEOUT + 1.5
    assert_logged_once(server, mark, "Request head timeout from ip=127.0.0.1")
    assert_serving(server, pid)


# -- reset during a stream -------------------------------------------------------------


def test_reset_sse_stream_closes_generator(server: Gunicorn, pid: int, marks: Path) -> None:
    """A stream nobody reads any more must not keep the application's
    generator running, nor take the connection's other streams with it."""
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        sid = client.request("/sse?name=sse-reset")
        client.wait(lambda: client.responses[sid].body.count(b"\n\n") >= 3, what="events")
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        elapsed = wait_for_marks(marks, ["sse-reset"], 2.0)
        assert elapsed < 2.0
        other = client.request("/hello")
        assert bytes(client.response(other).body) == b"hello"
        assert client.goaway() is None
    # The client leaving is not an application error.
    assert not log_lines(server, mark, "[ERROR]")
    assert_serving(server, pid)


# -- flow control ----------------------------------------------------------------------


def test_data_beyond_window_is_flow_control_error(server: Gunicorn, pid: int) -> None:
    """The window is what bounds the body bytes the server buffers for a
    stream; a client that ignores it must not get them buffered anyway."""
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        sid = client.request("/echo", "POST", end_stream=False)
        # One frame larger than the whole stream window.
        client.send_frames(DataFrame(sid, data=b"x" * (WINDOW + 100)))
        client.in_sync = False
        client.wait(
            lambda: client.goaway() is not None or sid in client.resets(),
            what="FLOW_CONTROL_ERROR",
        )
        goaway = client.goaway()
        if goaway is None:
            # A stream error (RFC 9113 section 6.9.1 allows either): the
            # connection goes on.
            assert client.resets()[sid] == ErrorCodes.FLOW_CONTROL_ERROR
            assert_logged_once(server, mark, "Invalid HTTP/2 stream from ip=127.0.0.1")
            client.in_sync = True
            other = client.request("/hello")
            assert client.response(other).status == 200
        else:
            assert goaway.error_code == ErrorCodes.FLOW_CONTROL_ERROR
            client.wait_closed()
            assert_logged_once(server, mark, "Invalid HTTP/2 from ip=127.0.0.1")
    assert_serving(server, pid)


def test_stream_faults_reset_their_stream_and_are_logged_once(
    server: Gunicorn, pid: int, http2_engine: str
) -> None:
    """A stream-level fault (here a WINDOW_UPDATE of 0, RFC 9113 section
    6.9) resets only its stream; the first on a connection is logged, the
    rest only counted (each costs the client no more than a frame)."""
    if http2_engine == "h2":
        pytest.skip("h2 resets such streams itself, without telling the server")
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        first = client.request("/sse?name=fault-1")
        second = client.request("/sse?name=fault-2")
        client.wait(lambda: bool(client.responses[second].body), what="events")
        client.in_sync = False
        client.send_frames(WindowUpdateFrame(first, 0), WindowUpdateFrame(second, 0))
        client.wait(lambda: {first, second} <= set(client.resets()), what="RST_STREAM")
        assert client.resets() == {
            first: ErrorCodes.PROTOCOL_ERROR,
            second: ErrorCodes.PROTOCOL_ERROR,
        }
        assert_logged_once(server, mark, "Invalid HTTP/2 stream from ip=127.0.0.1")
        assert "WINDOW_UPDATE of 0; stream" in log_lines(server, mark, "Invalid HTTP/2")[0]
        client.in_sync = True
        other = client.request("/hello")
        assert client.response(other).status == 200
        assert client.goaway() is None
    assert_serving(server, pid)


# -- CONTINUATION flood ----------------------------------------------------------------


def test_continuation_flood_ends_connection(server: Gunicorn, pid: int, marks: Path) -> None:
    """A header block that never ends would be buffered without bound."""
    mark = log_mark(server)
    with H2Client(server.port) as client:
        client.handshake()
        # A request first, so what closes the connection cannot be the
        # timeout for the first request.
        first = client.request("/hello")
        assert client.response(first).status == 200
        sid = client.reserve_stream_id()
        head = HeadersFrame(sid, data=literal_block(get_block("/sse?name=continuation")))
        piece = literal_block([(b"x-c", b"v")])
        flood = [ContinuationFrame(sid, data=piece) for _ in range(1000)]
        start = time.monotonic()
        client.send_frames(head, *flood)
        client.in_sync = False
        client.wait_closed()
        elapsed = time.monotonic() - start
        goaway = client.goaway()
    assert goaway is not None, "closed without GOAWAY"
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert elapsed < 1.0
    assert_never_ran(marks, "continuation")
    assert_logged_once(server, mark, "Too many continuation frames")
    assert_serving(server, pid)


# -- idle connections ------------------------------------------------------------------


def _complete(client: H2Client) -> None:
    sid = client.request("/hello")
    assert client.response(sid).status == 200


def _client_reset(client: H2Client) -> None:
    sid = client.request("/sse?name=idle-reset")
    client.wait(lambda: bool(client.responses[sid].body), what="events")
    client.conn.reset_stream(sid, ErrorCodes.CANCEL)
    client.flush()


def _send_timeout(client: H2Client) -> None:
    client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.flush()
    sid = client.request("/download?mib=4")
    client.wait(lambda: sid in client.resets(), TIMEOUT + 3, "RST_STREAM")


def _body_timeout(client: H2Client) -> None:
    sid = client.request("/echo", "POST", end_stream=False)
    assert client.response(sid, TIMEOUT + 3).status == 408


@pytest.mark.parametrize(
    "last_stream",
    [_complete, _client_reset, _send_timeout, _body_timeout],
    ids=["completed", "reset-by-client", "send-timeout", "body-timeout"],
)
def test_idle_connection_closed_after_keepalive(
    server: Gunicorn, pid: int, last_stream: Callable[[H2Client], None]
) -> None:
    """Keep-alive bounds an idle HTTP/2 connection however its last stream
    ended; otherwise opening a stream and resetting it would hold a
    connection (one of worker_connections) for as long as the client likes."""
    with H2Client(server.port) as client:
        client.handshake()
        last_stream(client)
        elapsed = client.wait_closed(KEEPALIVE + 3)
        goaway = client.goaway()
    assert KEEPALIVE * 0.8 < elapsed < KEEPALIVE + 1.5
    assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR
    assert_serving(server, pid)
