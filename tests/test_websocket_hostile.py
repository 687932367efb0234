"""WebSocket clients that misbehave on purpose, against a real arbiter.

The client is a plain socket to 127.0.0.1 speaking hand-built frames
(``frame()`` from the driver tests), so anything a hostile peer could send
can be sent.  Two workers serve ``ws_hostile_app`` for the whole module: one
with pings off and one-second send and close timeouts (the HTTP/1.1 parser
``auto``, that is httptools), one that pings every half second and drops a
peer whose pong does not come within half a second (the h11 parser).

Each case checks what the client got (the HTTP status of a refused
handshake, the close frame's code, the TCP connection ending), what the
application heard (``/events``: a refused handshake never reaches it; the
close code it was told), that the worker logged the fault once, and that
the same worker still serves a plain request and a WebSocket afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import time
import zlib
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from .conftest import Gunicorn, SocketClient, raw_request, status_of
from .test_http2_hostile import (
    assert_logged_once,
    holds_socket,
    log_lines,
    log_mark,
    tcp_row,
    worker_socket,
)
from .test_timeouts import RSSSampler, wait_until
from .test_websocket_driver import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG_OP,
    TEXT,
    Frame,
    close_payload,
    deflate,
    frame,
    split_frames,
    zeros_bomb,
)

TIMEOUT = 1.0  # send and close timeouts
PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
TICK = 0.1
LIMIT = 1024 * 1024  # ws_max_message_size
MB = 1024 * 1024
KEY = base64.b64encode(b"hostile-ws-key!!").decode()


# -- the servers -----------------------------------------------------------------------


def make_server(env: dict[str, str]) -> Gunicorn:
    server = Gunicorn(
        "ws_hostile_app:app",
        env={
            "FLASK_ASYNC_WORKER_TICK": str(TICK),
            "FLASK_ASYNC_WORKER_WS_MAX_MESSAGE_SIZE": str(LIMIT),
            "FLASK_ASYNC_WORKER_SEND_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_WS_CLOSE_TIMEOUT": str(TIMEOUT),
            **env,
        },
        wait=False,
    )
    try:
        server.wait_ready()
    except BaseException:
        server.close()
        raise
    return server


def start(env: dict[str, str]) -> Iterator[Gunicorn]:
    server = make_server(env)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Gunicorn]:
    """Pings off: nothing but the case under test closes a connection."""
    yield from start({"FLASK_ASYNC_WORKER_WS_PING_INTERVAL": "0"})


@pytest.fixture(scope="module")
def pinging() -> Iterator[Gunicorn]:
    yield from start(
        {
            "FLASK_ASYNC_WORKER_WS_PING_INTERVAL": str(PING_INTERVAL),
            "FLASK_ASYNC_WORKER_WS_PING_TIMEOUT": str(PING_TIMEOUT),
            "FLASK_ASYNC_WORKER_HTTP_PARSER": "h11",
        }
    )


def pid_of(server: Gunicorn) -> int:
    pids = server.worker_pids()
    assert len(pids) == 1, pids
    return pids[0]


@pytest.fixture(scope="module")
def pid(server: Gunicorn) -> int:
    return pid_of(server)


@pytest.fixture(scope="module")
def pinging_pid(pinging: Gunicorn) -> int:
    return pid_of(pinging)


# -- a client that can misbehave -------------------------------------------------------


def handshake_request(
    path: str, *, extra: list[str] | None = None, fields: list[str] | None = None
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(
            fields
            if fields is not None
            else [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {KEY}",
                "Sec-WebSocket-Version: 13",
            ]
        ),
        *(extra or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class WSClient(SocketClient):
    """One WebSocket over a blocking socket: the handshake, then raw frames
    out and every frame the server sends parsed as it comes."""

    read_size = 256 * 1024

    def __init__(
        self,
        port: int,
        path: str,
        *,
        extra: list[str] | None = None,
        pipelined: bytes = b"",
        rcvbuf: int | None = None,
        timeout: float = 3.0,
    ) -> None:
        super().__init__(port, rcvbuf=rcvbuf, timeout=timeout)
        sock = self.sock
        self.buf = b""
        self.frames: list[Frame] = []
        sock.sendall(handshake_request(path, extra=extra) + pipelined)
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(65536)
            assert chunk, f"closed during the handshake: {self.buf!r}"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = status_of(head)
        self.headers: dict[str, str] = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode()] = value.strip().decode()
        assert self.status == 101, head
        self._parse()  # frames that came with the 101

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.send_raw(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: bool) -> None:
        self.send(frame(opcode, payload, **kwargs))

    def _parse(self) -> None:
        frames, self.buf = split_frames(self.buf)
        self.frames.extend(frames)

    def _feed(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def summary(self) -> list[str]:
        return [repr(f) for f in self.frames[-10:]]

    def next_frame(self, timeout: float = 3.0, *, answer_pings: bool = False) -> Frame:
        """The next data or close frame (pings answered when asked to)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.frames:
                f = self.frames.pop(0)
                if f.opcode == PING:
                    if answer_pings:
                        self.send_frame(PONG_OP, f.payload)
                    continue
                return f
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                state = "closed" if self.closed else "open"
                raise AssertionError(f"no frame in {timeout}s (connection {state})")
            self.read(left)

    def message(self, timeout: float = 3.0) -> bytes:
        f = self.next_frame(timeout)
        assert f.opcode in (TEXT, BINARY) and f.fin, f
        return f.payload

    def close_frame(self, timeout: float = 3.0) -> Frame:
        """The server's close frame; what came before it is dropped."""
        deadline = time.monotonic() + timeout
        while True:
            closes = [f for f in self.frames if f.opcode == CLOSE]
            if closes:
                return closes[0]
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                state = "reset" if self.peer_reset else "closed" if self.closed else "open"
                raise AssertionError(f"no close frame in {timeout}s (connection {state})")
            self.read(left)


# -- checks ----------------------------------------------------------------------------


def get(server: Gunicorn, path: str, timeout: float = 3.0) -> bytes:
    data = raw_request(
        server.port,
        b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode(),
        timeout=timeout,
    )
    assert status_of(data) == 200, data
    return data.partition(b"\r\n\r\n")[2]


def events(server: Gunicorn) -> list[str]:
    return get(server, "/events").decode().splitlines()


def wait_event(server: Gunicorn, prefix: str, timeout: float = 3.0) -> str:
    """The application's one event line that starts with ``prefix`` and
    goes on (``disconnect <tag>`` finds ``disconnect <tag> <code>``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in events(server) if e.startswith(prefix + " ")]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no {prefix!r} event: {events(server)}"
        time.sleep(0.05)


def assert_serving(server: Gunicorn, pid: int) -> None:
    """The worker that booted with the module answers a plain request and
    a WebSocket (through a real client: the websockets library)."""
    assert server.worker_pids() == [pid], f"the worker was replaced:\n{server.log()}"
    assert get(server, "/hello") == b"hello"
    uri = f"ws://127.0.0.1:{server.port}/echo?tag=serving"
    with connect(uri, open_timeout=3, close_timeout=3, proxy=None) as ws:
        ws.send("ping?")
        assert ws.recv(timeout=3) == "ping?"
        ws.send(b"\x00" * 100_000)
        assert ws.recv(timeout=3) == b"\x00" * 100_000


# -- baseline: the client and the server agree -----------------------------------------


def test_well_behaved_client(server: Gunicorn, pid: int) -> None:
    """The hostile cases below mean something only if the client is right."""
    with WSClient(server.port, "/echo?tag=baseline", extra=["Sec-WebSocket-Protocol: chat"]) as c:
        assert c.headers["sec-websocket-protocol"] == "chat"
        digest = hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        assert c.headers["sec-websocket-accept"] == base64.b64encode(digest).decode()
        c.send_frame(TEXT, "héllo".encode())
        assert c.message() == "héllo".encode()
        c.send_frame(BINARY, b"ab", fin=False)
        c.send_frame(PING, b"in between")
        c.send_frame(CONT, b"cd")
        pong = c.next_frame()
        assert (pong.opcode, pong.payload) == (PONG_OP, b"in between")
        assert c.message() == b"abcd"
        big = os.urandom(LIMIT)  # exactly the limit
        c.send_frame(BINARY, big)
        assert c.message(timeout=5) == big
        c.send_frame(CLOSE, close_payload(1000, "done"))
        reply = c.close_frame()
        assert reply.close_code == 1000
        assert c.wait_closed(2.0) < 1.0
    assert wait_event(server, "disconnect baseline") == "disconnect baseline 1000"
    assert_serving(server, pid)


# -- broken handshakes -----------------------------------------------------------------

GOOD = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
]


def without(name: str) -> list[str]:
    return [f for f in GOOD if not f.lower().startswith(name.lower() + ":")]


# id: (request line, fields, body, status, logged detail)
BAD_HANDSHAKES: dict[str, tuple[str, list[str], bytes, int, str]] = {
    "version-8": (
        "GET",
        [*without("Sec-WebSocket-Version"), "Sec-WebSocket-Version: 8"],
        b"",
        426,
        "unsupported Sec-WebSocket-Version",
    ),
    "missing-key": ("GET", without("Sec-WebSocket-Key"), b"", 400, "without Sec-WebSocket-Key"),
    "duplicate-key": (
        "GET",
        [*GOOD, f"Sec-WebSocket-Key: {KEY}"],
        b"",
        400,
        "more than one Sec-WebSocket-Key",
    ),
    "short-key": (
        "GET",
        [*without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: c2hvcnQ="],
        b"",
        400,
        "invalid Sec-WebSocket-Key",
    ),
    "post": ("POST", GOOD, b"", 400, "must be a GET request"),
    "http10": ("GET-1.0", GOOD, b"", 400, "needs HTTP/1.1"),
    "body": ("GET", [*GOOD, "Content-Length: 5"], b"hello", 400, "with a request body"),
}


@pytest.mark.parametrize("case", sorted(BAD_HANDSHAKES))
def test_broken_handshake_refused_before_the_app(server: Gunicorn, pid: int, case: str) -> None:
    method, fields, body, status, detail = BAD_HANDSHAKES[case]
    tag = f"bad-{case}"
    version = "HTTP/1.0" if method == "GET-1.0" else "HTTP/1.1"
    line = f"{method.split('-')[0]} /echo?tag={tag} {version}"
    data = ("\r\n".join([line, "Host: 127.0.0.1", *fields]) + "\r\n\r\n").encode() + body
    mark = log_mark(server)
    start = time.monotonic()
    answer = raw_request(server.port, data, timeout=3)
    assert time.monotonic() - start < 2, "the server did not close the connection"
    assert status_of(answer) == status, answer
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close" in head
    if status == 426:
        assert b"\r\nsec-websocket-version: 13" in head
    assert b"sec-websocket-accept" not in head
    assert_logged_once(server, mark, "Invalid request from ip=127.0.0.1")
    assert detail in log_lines(server, mark, "Invalid request from ip=127.0.0.1")[0]
    assert f"connect {tag}" not in events(server), "the application saw the handshake"
    assert_serving(server, pid)


def test_upgrade_without_connection_upgrade_is_plain_http(server: Gunicorn, pid: int) -> None:
    """Upgrade not listed in Connection is ignored (RFC 9110 section 7.8):
    the request is an ordinary GET, never a WebSocket."""
    fields = [*without("Connection"), "Connection: keep-alive"]
    data = handshake_request("/echo?tag=no-conn-upgrade", fields=fields)
    answer = raw_request(server.port, data, timeout=1, read_until_close=False)
    assert status_of(answer) == 404
    assert "connect no-conn-upgrade" not in events(server)
    assert_serving(server, pid)


# -- protocol violations ---------------------------------------------------------------


def _oversized() -> bytes:
    return frame(BINARY, bytes(LIMIT + 1))


def _oversized_fragments() -> bytes:
    piece = bytes(64 * 1024)
    n = LIMIT // len(piece)
    return (
        frame(BINARY, piece, fin=False)
        + b"".join(frame(CONT, piece, fin=False) for _ in range(n - 1))
        + frame(CONT, b"x", fin=True)
    )


VIOLATIONS: dict[str, tuple[bytes, int]] = {
    "unmasked": (frame(TEXT, b"hi", masked=False), 1002),
    "invalid-utf8": (frame(TEXT, b"caf\xc3("), 1007),
    "fragmented-ping": (frame(PING, b"x", fin=False), 1002),
    "reserved-opcode": (frame(0x3, b"x"), 1002),
    "oversized": (_oversized(), 1009),
    "oversized-fragments": (_oversized_fragments(), 1009),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_protocol_violation_closes_with_its_code(server: Gunicorn, pid: int, case: str) -> None:
    data, code = VIOLATIONS[case]
    tag = f"violation-{case}"
    mark = log_mark(server)
    with WSClient(server.port, f"/echo?tag={tag}") as c:
        c.send_frame(TEXT, b"first")
        assert c.message() == b"first"  # the app is running
        c.send(data)
        close = c.close_frame()
        assert close.close_code == code, close
        elapsed = c.wait_closed(2.0)
    assert elapsed < 1.0
    assert wait_event(server, f"disconnect {tag}") == f"disconnect {tag} {code}"
    assert_logged_once(server, mark, "WebSocket protocol error from ip=127.0.0.1")
    assert f"(close {code})" in log_lines(server, mark, "WebSocket protocol error")[0]
    assert_serving(server, pid)


def test_oversized_message_still_streaming_gets_its_close_frame(
    server: Gunicorn, pid: int
) -> None:
    """The client is still sending when the limit is passed: the 1009 must
    reach it, not be lost to a reset caused by the bytes left unread."""
    tag = "oversized-streaming"
    with WSClient(server.port, f"/echo?tag={tag}") as c:
        c.send(frame(BINARY, bytes(4 * LIMIT)))
        close = c.close_frame()
        assert close.close_code == 1009
        c.wait_closed(2.0)
    assert wait_event(server, f"disconnect {tag}") == f"disconnect {tag} 1009"
    assert_serving(server, pid)


# -- deflate bomb ----------------------------------------------------------------------


def test_deflate_bomb_closed_with_1009_and_memory_bounded(server: Gunicorn, pid: int) -> None:
    """50 MiB of zeros in one 50 KiB frame: inflation stops at the limit."""
    tag = "bomb"
    bomb = zeros_bomb(50 * MB)
    mark = log_mark(server)
    extension = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    with (
        RSSSampler(pid) as sampler,
        WSClient(server.port, f"/echo?tag={tag}", extra=[extension]) as c,
    ):
        assert c.headers["sec-websocket-extensions"].startswith("permessage-deflate")
        # Compression works for honest messages first.
        c.send_frame(TEXT, deflate(b"squeeze " * 100), rsv1=True)
        echoed = c.next_frame()
        assert echoed.rsv1
        assert zlib.decompressobj(-15).decompress(echoed.payload + b"\x00\x00\xff\xff") == (
            b"squeeze " * 100
        )
        c.send_frame(BINARY, bomb, rsv1=True)
        assert c.close_frame().close_code == 1009
        c.wait_closed(2.0)
    assert sampler.growth < 16 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert wait_event(server, f"disconnect {tag}") == f"disconnect {tag} 1009"
    assert_logged_once(server, mark, "WebSocket protocol error from ip=127.0.0.1")
    assert_serving(server, pid)


# -- clients that do not read ----------------------------------------------------------


def test_client_that_never_reads_is_dropped_after_send_timeout(server: Gunicorn, pid: int) -> None:
    """The app pushes 256 KiB messages to a client that reads nothing: the
    send waits (no buffering without bound) and the connection is dropped
    after the send timeout."""
    tag = "no-reader"
    mark = log_mark(server)
    with RSSSampler(pid) as sampler, WSClient(server.port, f"/push?tag={tag}", rcvbuf=16384) as c:
        inode = worker_socket(server.port, c.port)
        assert holds_socket(pid, inode)
        c.send_frame(TEXT, str(256 * 1024).encode())
        # Never read again: the worker must close its end on its own.
        elapsed = wait_until(lambda: not holds_socket(pid, inode), TIMEOUT + 4)
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 3
    assert sampler.growth < 24 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert wait_event(server, f"push-end {tag}") == f"push-end {tag} ClientDisconnected"
    assert_logged_once(server, mark, "Send timeout to ip=127.0.0.1")
    assert_serving(server, pid)


def flood_pings(c: WSClient, seconds: float) -> tuple[int, float]:
    """Send pings without reading the pongs until the server stops reading
    (a send blocks for half a second) or ``seconds`` pass: (bytes sent,
    seconds until sending stalled)."""
    ping = frame(PING, b"p" * 125)
    burst = ping * 64
    sent = 0
    start = time.monotonic()
    c.sock.settimeout(0.5)
    while time.monotonic() - start < seconds:
        try:
            sent += c.sock.send(burst)
        except TimeoutError:
            return sent, time.monotonic() - start
        except (BrokenPipeError, ConnectionResetError):
            c.closed = True
            return sent, time.monotonic() - start
    raise AssertionError(f"the server read {sent} bytes of pings and never stopped")


def server_rx_queue(server_port: int, client_port: int) -> int:
    """Bytes the kernel holds for the worker's end of one loopback
    connection that the worker has not read."""
    return int(tcp_row(server_port, client_port)[4].split(":")[1], 16)


def test_ping_flood_without_reading_stops_being_read(server: Gunicorn, pid: int) -> None:
    """Every ping makes the server owe a pong; a client that never reads
    them stops being read, so the pongs cannot pile up in the worker, and
    is dropped after the send timeout, as a client that reads no response
    is; the worker serves everyone else meanwhile."""
    mark = len(server.log())
    with (
        RSSSampler(pid) as sampler,
        WSClient(server.port, "/echo?tag=ping-flood", rcvbuf=8192) as c,
    ):
        inode = worker_socket(server.port, c.port)
        sent, _ = flood_pings(c, 10.0)
        assert sent > 0
        start = time.monotonic()
        assert get(server, "/hello") == b"hello"
        assert time.monotonic() - start < 0.5
        # Pings off on this server: the send deadline is what ends it.
        assert_logged_once(server, mark, "Send timeout to ip=127.0.0.1", timeout=TIMEOUT + 2)
        wait_until(lambda: not holds_socket(pid, inode), 2.0)
    assert sampler.growth < 16 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert_serving(server, pid)


def test_messages_the_app_does_not_read_stop_being_read(server: Gunicorn, pid: int) -> None:
    """Messages queue ahead of an app that does not receive them only up to
    the body buffer; then the socket is not read until the app catches up,
    and nothing is lost when it does."""
    tag = "held"
    message = frame(BINARY, bytes(4096))
    burst = message * 16
    with RSSSampler(pid) as sampler, WSClient(server.port, f"/hold?tag={tag}") as c:
        c.sock.settimeout(0.5)
        sent = 0
        start = time.monotonic()
        while True:
            assert time.monotonic() - start < 10, f"still read after {sent} bytes"
            try:
                sent += c.sock.send(burst)
            except TimeoutError:
                break
        queued = server_rx_queue(server.port, c.port)
        time.sleep(0.3)
        assert queued > 0 and server_rx_queue(server.port, c.port) == queued
        assert get(server, f"/release?tag={tag}") == b"released"
        # Finish the frame the stalled send left half-sent, then close.
        c.sock.settimeout(5)
        c.sock.sendall(message[sent % len(message) :] if sent % len(message) else b"")
        count = -(-sent // len(message))
        c.send_frame(CLOSE, close_payload(1000))
        assert c.close_frame(5).close_code == 1000
        c.wait_closed(2.0)
    assert sampler.growth < 16 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert wait_event(server, f"held {tag}") == f"held {tag} {count}"
    assert_serving(server, pid)


def test_ping_flood_dropped_by_ping_timeout(pinging: Gunicorn, pinging_pid: int) -> None:
    """With pings on, the flooder cannot read the server's ping either."""
    pid = pinging_pid
    mark = log_mark(pinging)
    with WSClient(pinging.port, "/echo?tag=ping-flood-pinged", rcvbuf=8192) as c:
        inode = worker_socket(pinging.port, c.port)
        flood_pings(c, 10.0)
        wait_until(lambda: not holds_socket(pid, inode), PING_INTERVAL + PING_TIMEOUT + 3)
    assert_logged_once(pinging, mark, "WebSocket ping timeout from ip=127.0.0.1")
    assert_serving(pinging, pid)


# -- keepalive pings -------------------------------------------------------------------


@pytest.mark.parametrize("half_frame", [False, True], ids=["silent", "half-frame"])
def test_peer_that_never_answers_pings_is_closed(
    pinging: Gunicorn, pinging_pid: int, half_frame: bool
) -> None:
    tag = f"no-pong-{'half' if half_frame else 'silent'}"
    mark = log_mark(pinging)
    with WSClient(pinging.port, f"/echo?tag={tag}") as c:
        start = time.monotonic()
        if half_frame:
            # A frame announcing 1000 bytes, 10 of them sent: then silence.
            c.send(frame(BINARY, bytes(1000))[:16])
        ping = c.frames.pop(0) if c.frames else None
        while ping is None:
            c.read(PING_INTERVAL + 2)
            assert not c.closed, "closed before a ping"
            ping = c.frames.pop(0) if c.frames else None
        assert (ping.opcode, ping.payload) == (PING, b"flask_async_worker")
        assert time.monotonic() - start < PING_INTERVAL + 0.5
        c.wait_closed(PING_TIMEOUT + 2)
        elapsed = time.monotonic() - start
    assert 0.8 * (PING_INTERVAL + PING_TIMEOUT) < elapsed < PING_INTERVAL + PING_TIMEOUT + 1.5
    assert wait_event(pinging, f"disconnect {tag}") == f"disconnect {tag} 1006"
    assert_logged_once(pinging, mark, "WebSocket ping timeout from ip=127.0.0.1")
    assert_serving(pinging, pinging_pid)


def test_peers_that_answer_pings_stay_open(pinging: Gunicorn, pinging_pid: int) -> None:
    """Several ping intervals pass with no message either way: a raw client
    that answers each ping, and the websockets library (which answers on
    its own, with its own pings off), are both kept."""
    uri = f"ws://127.0.0.1:{pinging.port}/echo?tag=answers-lib"
    with (
        connect(uri, ping_interval=None, open_timeout=3, close_timeout=3, proxy=None) as lib,
        WSClient(pinging.port, "/echo?tag=answers-raw") as raw,
    ):
        pings = 0
        start = time.monotonic()
        while time.monotonic() - start < 4 * (PING_INTERVAL + PING_TIMEOUT):
            raw.read(0.1)
            assert not raw.closed, "a peer that answers pings was closed"
            while raw.frames:
                f = raw.frames.pop(0)
                assert f.opcode == PING, f
                pings += 1
                raw.send_frame(PONG_OP, f.payload)
        assert pings >= 3
        raw.send_frame(TEXT, b"still here")
        assert raw.message() == b"still here"
        lib.send("still here")
        assert lib.recv(timeout=3) == "still here"
    assert_serving(pinging, pinging_pid)


# -- the closing handshake -------------------------------------------------------------


@pytest.mark.parametrize("reply", [True, False], ids=["client-replies", "client-silent"])
def test_server_close_waits_for_the_reply_at_most_close_timeout(
    server: Gunicorn, pid: int, reply: bool
) -> None:
    tag = f"app-closes-{'reply' if reply else 'silent'}"
    mark = log_mark(server)
    with WSClient(server.port, f"/close?tag={tag}") as c:
        close = c.close_frame()
        assert (close.close_code, close.close_reason) == (4000, "bye")
        start = time.monotonic()
        if reply:
            c.send_frame(CLOSE, close_payload(4000))
        c.wait_closed(TIMEOUT + 3)
        elapsed = time.monotonic() - start
    if reply:
        assert elapsed < 0.5
    else:
        assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1
        assert_logged_once(server, mark, "WebSocket close timeout from ip=127.0.0.1")
    wait_event(server, f"disconnect {tag}")
    assert not log_lines(server, mark, "WebSocket protocol error")
    assert_serving(server, pid)


def test_client_closes_and_never_reads_the_reply(server: Gunicorn, pid: int) -> None:
    """The server closes TCP after echoing the close frame (RFC 6455
    section 7.1.1), whatever the client does next."""
    tag = "client-closes"
    with WSClient(server.port, f"/echo?tag={tag}") as c:
        c.send_frame(CLOSE, close_payload(1001, "leaving"))
        assert c.close_frame().close_code == 1001
        assert c.wait_closed(2.0) < 1.0
    assert wait_event(server, f"disconnect {tag}") == f"disconnect {tag} 1001"
    assert_serving(server, pid)


def test_client_half_close_without_close_frame(server: Gunicorn, pid: int) -> None:
    """A client that shuts its side without a close frame has left: the app
    hears 1006 (abnormal closure) and the server closes its side."""
    tag = "half-close"
    with WSClient(server.port, f"/echo?tag={tag}") as c:
        c.send_frame(TEXT, b"bye?")
        assert c.message() == b"bye?"
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(2.0) < 1.0
    assert wait_event(server, f"disconnect {tag}") == f"disconnect {tag} 1006"
    assert_serving(server, pid)


@pytest.mark.parametrize("reply", [True, False], ids=["client-replies", "client-silent"])
def test_graceful_stop_closes_websockets_with_1001(reply: bool) -> None:
    """SIGTERM: each open WebSocket is told 1001; a client that never answers
    holds the stop up for the close timeout, not for graceful_timeout."""
    srv = make_server({"FLASK_ASYNC_WORKER_WS_PING_INTERVAL": "0"})
    try:
        with WSClient(srv.port, "/echo?tag=stop") as c:
            c.send_frame(TEXT, b"up")
            assert c.message() == b"up"
            start_time = time.monotonic()
            srv.signal(signal.SIGTERM)
            close = c.close_frame(5.0)
            assert close.close_code == 1001
            if reply:
                c.send_frame(CLOSE, close_payload(1001))
            c.wait_closed(TIMEOUT + 5)
            closed = time.monotonic() - start_time
            assert srv.proc.wait(10) == 0
            stopped = time.monotonic() - start_time
    finally:
        srv.close()
    if reply:
        assert closed < 1.0
    else:
        assert TIMEOUT * 0.8 < closed < TIMEOUT + 2.5
    assert stopped < TIMEOUT + 5  # gunicorn's graceful_timeout is 30 s


# -- bytes before the 101 --------------------------------------------------------------


@pytest.fixture(params=["httptools", "h11"])
def any_server(request: pytest.FixtureRequest) -> tuple[Gunicorn, int]:
    """Each worker, that is each HTTP/1.1 parser, which holds what follows
    the handshake until the WebSocket takes it."""
    name = "server" if request.param == "httptools" else "pinging"
    srv: Gunicorn = request.getfixturevalue(name)
    return srv, pid_of(srv)


def test_frames_pipelined_after_the_handshake_are_read(any_server: tuple[Gunicorn, int]) -> None:
    """A client may send frames right behind its handshake, before the 101
    (RFC 6455 section 4.1 lets it once the 101 arrives; a hasty one does it
    earlier): they are the WebSocket's first frames, not HTTP."""
    srv, srv_pid = any_server
    tag = "pipelined"
    # More than the pipelining read-ahead (64 KiB), so reading pauses too.
    payloads = [b"m%03d" % i + os.urandom(4096) for i in range(50)]
    early = (
        frame(TEXT, b"first")
        + frame(PING, b"early")
        + b"".join(frame(BINARY, p) for p in payloads)
    )
    with WSClient(srv.port, f"/echo?tag={tag}", pipelined=early) as c:
        got: list[bytes] = []
        pongs: list[bytes] = []
        while len(got) < 1 + len(payloads):
            f = c.next_frame(answer_pings=True)
            if f.opcode == PONG_OP:
                pongs.append(f.payload)
            else:
                assert f.opcode in (TEXT, BINARY), f
                got.append(f.payload)
        assert got == [b"first", *payloads]
        assert pongs == [b"early"]
        c.send_frame(CLOSE, close_payload(1000))
        assert c.close_frame().close_code == 1000
        c.wait_closed(2.0)
    assert_serving(srv, srv_pid)


def test_violation_pipelined_after_the_handshake(server: Gunicorn, pid: int) -> None:
    tag = "pipelined-violation"
    mark = log_mark(server)
    with WSClient(server.port, f"/echo?tag={tag}", pipelined=frame(TEXT, b"x", masked=False)) as c:
        assert c.close_frame().close_code == 1002
        c.wait_closed(2.0)
    assert_logged_once(server, mark, "WebSocket protocol error from ip=127.0.0.1")
    assert_serving(server, pid)


def test_many_connections_and_violations_leave_no_trace(server: Gunicorn, pid: int) -> None:
    """Open and break WebSockets in a burst: every one is answered, the
    worker ends each connection, and none is left behind."""
    clients = []
    try:
        for i in range(20):
            c = WSClient(server.port, f"/echo?tag=burst-{i}")
            clients.append(c)
            c.send(VIOLATIONS[sorted(VIOLATIONS)[i % len(VIOLATIONS)]][0])
        for c in clients:
            c.close_frame()
            c.wait_closed(3.0)
    finally:
        for c in clients:
            c.sock.close()
    deadline = time.monotonic() + 3
    while sum(1 for e in events(server) if e.startswith("disconnect burst-")) < 20:
        assert time.monotonic() < deadline, events(server)
        time.sleep(0.05)
    assert_serving(server, pid)
