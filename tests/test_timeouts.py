"""Every wait is bounded and every buffer has a bound, against a real arbiter.

One server with one-second timeouts (``FLASK_ASYNC_WORKER_*`` environment
variables and ``--keep-alive 1``) and a fast sweep, once with each HTTP/1.1
parser; each test checks both the bound and that the rest of the worker
carries on normally meanwhile.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from .conftest import Gunicorn, closed_after, status_of
from .test_http11_e2e import assert_alive, events, read_response, start, worker_pid

TIMEOUT = 1.0  # header, body and send timeouts, and keep-alive
TICK = 0.1
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(http_parser: str) -> Iterator[Gunicorn]:
    yield from start(
        "--keep-alive",
        str(int(TIMEOUT)),
        parser=http_parser,
        env={
            "FLASK_ASYNC_WORKER_HEADER_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_BODY_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_SEND_TIMEOUT": str(TIMEOUT),
            "FLASK_ASYNC_WORKER_TICK": str(TICK),
        },
    )


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RSSSampler:
    """The peak RSS of a process while a block runs, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - start


# -- request head ------------------------------------------------------------------


def test_slowloris_cut_off_while_others_served(server):
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
    latencies = []
    with (
        socket.create_connection(("127.0.0.1", server.port)) as slow,
        httpx.Client(base_url=server.url) as client,
    ):
        slow.settimeout(0.2)
        started = time.monotonic()
        answer = None
        for byte in head:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
                break
            t = time.monotonic()
            assert client.get("/").text == "hello"
            latencies.append(time.monotonic() - t)
            try:
                answer = slow.recv(65536)
                break  # the server answered or closed
            except TimeoutError:
                pass
        elapsed = time.monotonic() - started
    assert answer is not None, "the trickling client was never cut off"
    assert answer == b"" or status_of(answer) == 408
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1.5
    assert len(latencies) >= 3
    assert max(latencies) < 0.5
    assert "Request head timeout" in server.log()
    assert_alive(server)


def test_connection_without_request_closes(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        elapsed, data = closed_after(sock, TIMEOUT + 2)
    assert data == b""  # nothing was started: no 408, just a close
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1


def test_idle_keepalive_closes(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        f = sock.makefile("rb")
        # Requests spaced under the keep-alive timeout reuse the connection.
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(f)[::2] == (200, b"hello")
            time.sleep(TIMEOUT / 2)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[::2] == (200, b"hello")
        elapsed, data = closed_after(sock, TIMEOUT + 2)
    assert data == b""
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1


# -- request body ------------------------------------------------------------------


def test_stalled_body_gets_408(server):
    before = len(events(server))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /hit?tag=stall HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100
        )
        elapsed, data = closed_after(sock, TIMEOUT + 2)
    assert status_of(data) == 408
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1
    recorded = [e for e in events(server)[before:] if e.startswith("hit stall ")]
    assert recorded == ["hit stall complete=False n=100"]
    assert "Request body timeout" in server.log()
    assert_alive(server)


def test_slow_but_steady_body_is_not_cut(server):
    """The body timeout bounds each wait, not the whole upload."""
    pieces = 6
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (pieces * 10)
        )
        for i in range(pieces):
            sock.sendall(b"%d" % i * 10)
            time.sleep(TIMEOUT / 2)
        status, _, body = read_response(sock.makefile("rb"))
    assert status == 200
    assert body == b"".join(b"%d" % i * 10 for i in range(pieces))


def test_upload_backpressure_bounds_memory(server):
    size = 20 * MB
    pid = worker_pid(server)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock,
        RSSSampler(pid) as sampler,
    ):
        sock.sendall(
            b"POST /slow-read?d=0.04 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % size
        )
        block = b"u" * MB
        started = time.monotonic()
        for _ in range(size // MB):
            sock.sendall(block)
        upload = time.monotonic() - started
        status, _, body = read_response(sock.makefile("rb"))
    assert (status, body) == (200, str(size).encode())
    # The slow reader paced the upload: without backpressure the worker
    # would have taken all 20 MB into memory at once.
    assert upload > 0.5
    assert sampler.growth < 8 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert_alive(server)


# -- response ----------------------------------------------------------------------


def test_non_reading_client_dropped_after_send_timeout(server):
    size_mb = 64
    pid = worker_pid(server)
    before = len(events(server))

    def big_events() -> list[str]:
        return [e for e in events(server)[before:] if e.startswith("big sent=")]

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", server.port))
        with RSSSampler(pid) as sampler:
            sock.sendall(b"GET /big?mb=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size_mb)
            # Never read: the app's send() must give up after send_timeout.
            elapsed = wait_until(lambda: bool(big_events()), TIMEOUT + 4)
    sent = int(big_events()[0].split("=")[1])
    assert sent < size_mb * MB / 4, f"app sent {sent} bytes to a client that read nothing"
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 2.5
    assert sampler.growth < 16 * MB, f"worker RSS grew by {sampler.growth / MB:.1f} MB"
    assert "Send timeout" in server.log()
    assert_alive(server)


def test_reading_client_gets_whole_big_response(server):
    """The send timeout applies to a client that stalls, not a slow transfer."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        total = 0
        with client.stream("GET", "/big?mb=8") as r:
            for chunk in r.iter_bytes():
                total += len(chunk)
    assert total == 8 * MB
