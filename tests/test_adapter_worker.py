"""The Flask adapter under the real worker: bodies, streams, disconnects, hooks."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import time

import httpx
import pytest

from . import loadclient
from .conftest import EXAMPLES


def worker_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def events(url: str) -> list[str]:
    return list(httpx.get(f"{url}/events").json()["events"])


def wait_for_event(url: str, prefix: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if any(e.startswith(prefix) for e in events(url)):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{prefix!r} not seen in {timeout}s: {events(url)}")


@pytest.fixture(scope="module")
def stream_server():
    from .conftest import Gunicorn

    server = Gunicorn("flask_stream_app:app", "--threads", "4")
    yield server
    server.stop()
    server.kill()


def test_thousand_concurrent_async_views_hold_no_threads(gunicorn):
    """Must-show 1: 1,000 x sleep(1), one worker, --threads 4: < 4 s, < 20 threads."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    server = gunicorn(
        "flask_stream_app:app",
        "--threads",
        "4",
        "--worker-connections",
        "2000",
        "--backlog",
        "2048",
    )
    pid = server.worker_pids()[-1]
    peak = 0

    async def run() -> list[loadclient.Reply]:
        nonlocal peak
        task = asyncio.ensure_future(loadclient.many(server.port, "/sleep?s=1", 1000))
        while not task.done():
            peak = max(peak, worker_status(pid, "Threads"))
            await asyncio.sleep(0.05)
        return task.result()

    started = time.monotonic()
    replies = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert [r.status for r in replies] == [200] * 1000
    assert all(b'"same_loop":true' in r.body for r in replies)
    assert elapsed < 4.0, elapsed
    assert peak < 20, peak


def test_sse_generator_closed_when_client_leaves(stream_server):
    """Must-show 3: the async generator's finally runs within 2 s."""
    url = stream_server.url
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("GET", "/sse?interval=0.2&tag=a1") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert got[0] == "data: 0"
    elapsed = wait_for_event(url, "sse-closed a1", timeout=2.0)
    assert elapsed < 2.0
    assert "sse-open a1 path=/sse" in events(url)


def test_sync_generator_closed_when_client_leaves(stream_server):
    url = stream_server.url
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("GET", "/sync-stream?tag=s1") as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == "data: 0"
    wait_for_event(url, "sync-closed s1", timeout=2.0)
    assert "sync-open s1 path=/sync-stream" in events(url)


def test_async_view_returning_sync_generator_keeps_context(stream_server):
    r = httpx.get(f"{stream_server.url}/async-sync-stream?v=zz")
    assert r.status_code == 200
    assert r.text == "zz:0;zz:1;zz:2;"


def test_async_view_finds_body_read_and_spooled(stream_server):
    url = stream_server.url
    small = httpx.post(f"{url}/upload", data={"a": "1", "b": "two"})
    assert small.json() == {"size": 9, "spooled": "BytesIO", "form": {"a": "1", "b": "two"}}
    big = httpx.post(f"{url}/upload", content=b"x" * (1024 * 1024))
    assert big.json()["size"] == 1024 * 1024
    assert big.json()["spooled"] == "SpooledTemporaryFile"

    def chunks():
        for _ in range(4):
            yield b"y" * 100_000

    chunked = httpx.post(f"{url}/upload", content=chunks())
    assert chunked.json()["size"] == 400_000


def test_async_view_body_over_limit_is_413(stream_server):
    url = stream_server.url
    r = httpx.post(f"{url}/upload", content=b"x" * (5 * 1024 * 1024))
    assert r.status_code == 413

    def chunks():
        for _ in range(50):
            yield b"y" * 100_000

    r = httpx.post(f"{url}/upload", content=chunks())
    assert r.status_code == 413
    assert httpx.get(f"{url}/pid").status_code == 200


def test_sync_view_streams_upload_with_backpressure(gunicorn):
    server = gunicorn("flask_stream_app:app", "--threads", "4", env={"MAX_CONTENT_LENGTH": "0"})
    pid = server.worker_pids()[-1]
    httpx.get(f"{server.url}/pid")
    before = worker_status(pid, "VmRSS")
    size = 40 * 1024 * 1024

    def chunks():
        block = b"z" * 65536
        for _ in range(size // 65536):
            yield block

    r = httpx.post(f"{server.url}/upload-sync?delay=0.0005", content=chunks(), timeout=60)
    assert r.json() == {"size": size}
    grown_kib = worker_status(pid, "VmRSS") - before
    assert grown_kib < 16 * 1024, f"worker RSS grew by {grown_kib} KiB for a {size} byte upload"


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_sync_view_upload_with_expect_continue(stream_server):
    """``Expect: 100-continue`` to a sync view: answered when the view
    reads, then the whole body arrives through wsgi.input."""
    size = 300_000
    with _raw(stream_server.url) as sock:
        sock.sendall(
            b"POST /upload-sync HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % size
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"u" * size)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b'{"size":300000}\n')


def test_sync_view_never_sees_a_cut_upload_as_complete(stream_server):
    """The client leaves after 200 KB of a declared 1 MB: the view's read
    raises (werkzeug's ClientDisconnected) instead of ending the body."""
    url = stream_server.url
    with _raw(url) as sock:
        sock.sendall(
            b"POST /upload-sync?tag=cut HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"c" * 200_000
        )
        time.sleep(0.3)
    time.sleep(1.0)
    assert not [e for e in events(url) if e.startswith("upload-sync-complete cut")]
    # and the worker goes on serving uploads
    r = httpx.post(f"{url}/upload-sync?tag=whole", content=b"w" * 500_000, timeout=10)
    assert r.json() == {"size": 500_000}
    assert "upload-sync-complete whole 500000" in events(url)


def test_sync_stream_waits_for_a_client_that_does_not_read(stream_server):
    """Download backpressure on the thread path: a generator runs only a
    bounded distance ahead of a client that reads nothing, and is closed
    once that client leaves."""
    url = stream_server.url
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect((host, int(port)))
    sock.sendall(b"GET /sync-download?mb=256&tag=stall HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        deadline = time.monotonic() + 5
        produced = -1
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = httpx.get(f"{url}/produced?tag=stall").json()["produced"]
            if now == produced:
                break  # it stopped: the generator waits for the client
            produced = now
        assert 0 < produced < 24 * 1024 * 1024, produced
        time.sleep(0.5)
        assert httpx.get(f"{url}/produced?tag=stall").json()["produced"] == produced
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert wait_for_event(url, "sync-download-closed stall", 5) < 5


def test_sync_stream_throughput_reaches_the_client_whole(stream_server):
    total = 0
    with httpx.stream(
        "GET", f"{stream_server.url}/sync-download?mb=32&tag=whole", timeout=30
    ) as r:
        for chunk in r.iter_bytes():
            total += len(chunk)
    assert total == 32 * 1024 * 1024
    assert wait_for_event(stream_server.url, "sync-download-closed whole", 5) < 5


def test_send_file_streams_without_loading_file(stream_server):
    url = stream_server.url
    pid = int(httpx.get(f"{url}/pid").text)
    httpx.get(f"{url}/file?mb=1")
    before = worker_status(pid, "VmRSS")
    total = 0
    with httpx.stream("GET", f"{url}/file?mb=64", timeout=30) as response:
        assert response.headers["content-length"] == str(64 * 1024 * 1024)
        for chunk in response.iter_bytes():
            total += len(chunk)
    assert total == 64 * 1024 * 1024
    grown_kib = worker_status(pid, "VmRSS") - before
    assert grown_kib < 16 * 1024, grown_kib


@pytest.mark.parametrize("cancel", [True, False])
def test_disconnect_during_async_view(gunicorn, cancel):
    server = gunicorn(
        "flask_stream_app:app", "--threads", "4", env={"CANCEL": "1" if cancel else "0"}
    )
    tag = f"c{int(cancel)}"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"GET /slow-view?tag={tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.2)
    time.sleep(1.3)
    seen = events(server.url)
    if cancel:
        assert f"view-cancelled {tag}" in seen, seen
        assert f"view-finished {tag}" not in seen
    else:
        assert f"view-finished {tag}" in seen, seen
        assert f"view-cancelled {tag}" not in seen


def test_run_sync_carries_context_off_the_loop(stream_server):
    r = httpx.get(f"{stream_server.url}/run-sync?m=abc")
    assert r.json() == {"marker": "abc", "arg": "abc", "off_loop": True}


def test_serving_hooks_run_once_on_the_worker_loop(gunicorn, tmp_path):
    marker = tmp_path / "marker"
    server = gunicorn(
        "flask_stream_app:app", "--threads", "4", env={"SERVING_MARKER": str(marker)}
    )
    seen = events(server.url)
    assert len([e for e in seen if e.startswith("before_serving")]) == 1
    assert httpx.get(f"{server.url}/sleep?s=0").json()["same_loop"] is True
    pid = server.worker_pids()[-1]
    server.signal(signal.SIGTERM)
    server.proc.wait(10)
    assert marker.read_text() == f"after_serving {pid} same_loop=True\n"


def test_fanout_example_runs_backends_concurrently(gunicorn):
    server = gunicorn("fanout:app", "--threads", "4", cwd=EXAMPLES)
    httpx.get(f"{server.url}/dashboard", timeout=10)  # warm the client's pool
    started = time.monotonic()
    r = httpx.get(f"{server.url}/dashboard", timeout=10)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    data = r.json()
    assert set(data) == {"users", "orders", "recommendations", "elapsed"}
    assert data["users"]["items"] == ["users-0", "users-1", "users-2"]
    # Three 200 ms services: concurrent is ~0.2 s; sequential would be 0.6 s.
    assert elapsed < 0.45, elapsed


def test_sse_example_stops_streams_of_clients_that_left(gunicorn):
    server = gunicorn("sse:app", cwd=EXAMPLES)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for _ in range(3):
            with client.stream("GET", "/events?interval=0.05") as response:
                lines = response.iter_lines()
                assert next(lines).startswith("id: ")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            stats = client.get("/stats").json()
            if stats["closed"] == 3:
                break
            time.sleep(0.05)
        assert stats["opened"] == 3 and stats["closed"] == 3, stats


def test_hello_example(gunicorn):
    server = gunicorn("hello:app", "--threads", "4", cwd=EXAMPLES)
    sync = httpx.get(f"{server.url}/sync").json()
    async_ = httpx.get(f"{server.url}/async?delay=0.01").json()
    assert sync["view"] == "sync" and sync["thread"].startswith("flask-async-worker")
    assert async_["view"] == "async" and async_["thread"] == "MainThread"


os.environ.setdefault("NO_PROXY", "127.0.0.1")


def test_watchdog_names_code_blocking_the_loop(stream_server):
    r = httpx.get(f"{stream_server.url}/block-in-async?s=0.8")
    assert r.status_code == 200
    match = stream_server.wait_for_log(
        r"Event loop blocked for (\d+) ms by sync code:\n((?:.*\n){1,20})"
    )
    assert int(match.group(1)) >= 700
    assert "block_in_async" in match.group(2)
    assert "time.sleep" in match.group(2)
