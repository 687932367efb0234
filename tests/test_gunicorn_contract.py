"""The gunicorn worker contract, each item against a real arbiter.

Every gunicorn setting, signal and hook a deployment relies on is exercised
here through ``python -m gunicorn -k flask_async_worker.UVLoopWorker``: a
worker that silently ignores one of them is a worker users cannot trust.
The list follows ``shared/reference/landscape.md`` section 3.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import APPS, Gunicorn, raw_request, status_of

HOOKS = str(APPS / "contract_hooks.py")


# -- helpers ------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_hooks(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hook_events(path: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in read_hooks(path) if r["event"] == event]


def requests_seen(path: Path, pid: int, url_path: str) -> list[dict[str, Any]]:
    """The pre_request records of worker ``pid`` for ``url_path``."""
    return [
        r for r in hook_events(path, "pre_request") if r["pid"] == pid and r["path"] == url_path
    ]


def process_gone(pid: int) -> bool:
    """True once ``pid`` exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def start_all(
    gunicorn: type[Gunicorn], *configs: tuple[Any, ...], **kwargs: Any
) -> list[Gunicorn]:
    """Start several arbiters at once (they boot in parallel), then wait for each."""
    servers = [gunicorn(*config, wait=False, **kwargs) for config in configs]
    for server in servers:
        server.wait_ready()
    return servers


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def async_get(port: int, target: bytes, timeout: float = 10.0) -> bytes:
    """One HTTP/1.1 GET with ``Connection: close``; the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length framed response from a kept-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a body")
        body += chunk
    return status_of(head), headers, body


def keepalive_get(sock: socket.socket, target: str) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_response(sock)


def get_pid(server: Gunicorn) -> int:
    return int(httpx.get(server.url + "/pid", timeout=5).text)


# -- must-show 1: concurrency ------------------------------------------------------


async def test_thousand_concurrent_sleeping_requests_on_one_worker(gunicorn):
    """One worker, 1,000 requests each awaiting 1 s: all done in under 4 s."""
    raise_fd_limit(4096)
    server = gunicorn(
        "asgi_app:app",
        "--workers",
        "1",
        "--threads",
        "4",
        "--worker-connections",
        "2000",
        "--backlog",
        "2048",
    )
    started = time.monotonic()
    answers = await asyncio.gather(
        *(async_get(server.port, b"/sleep?s=1", timeout=10) for _ in range(1000)),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - started
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert not errors, f"{len(errors)} failed, e.g. {errors[:3]!r}"
    assert all(isinstance(a, bytes) and status_of(a) == 200 for a in answers)
    assert all(isinstance(a, bytes) and a.endswith(b"slept") for a in answers)
    assert elapsed < 4.0, f"1000 concurrent 1 s requests took {elapsed:.2f}s"
    assert len(server.worker_pids()) == 1  # the same single worker served them all


# -- must-show 2: graceful stop ----------------------------------------------------


async def test_sigterm_lets_inflight_requests_finish(gunicorn, tmp_path):
    """SIGTERM to the arbiter with 200 slow requests in flight: all complete."""
    hooks = tmp_path / "hooks.jsonl"
    server = gunicorn(
        "asgi_app:app",
        "-c",
        HOOKS,
        "--graceful-timeout",
        "10",
        "--keep-alive",
        "30",
        env={"CONTRACT_HOOKS_FILE": str(hooks)},
    )
    loop = asyncio.get_running_loop()
    done_at: list[float] = []
    # Idle kept-alive connections must not hold the stop up.
    idle = []
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        idle.append((reader, writer))

    async def slow() -> bytes:
        answer = await async_get(server.port, b"/sleep?s=2", timeout=15)
        done_at.append(time.monotonic())
        return answer

    requests = [asyncio.ensure_future(slow()) for _ in range(200)]
    # Every request reached the application (pre_request ran) before the stop.
    deadline = time.monotonic() + 5
    while len(hook_events(hooks, "pre_request")) < 200:
        assert time.monotonic() < deadline, "the 200 requests did not all start"
        await asyncio.sleep(0.05)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    answers = await asyncio.gather(*requests, return_exceptions=True)
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert not errors, f"{len(errors)} failed, e.g. {errors[:3]!r}"
    assert all(isinstance(a, bytes) and status_of(a) == 200 for a in answers)
    for reader, writer in idle:
        assert await asyncio.wait_for(reader.read(), 1) == b""  # closed by the server
        writer.close()
    returncode = await loop.run_in_executor(None, server.proc.wait, 15)
    exited = time.monotonic()
    assert returncode == 0
    # The worker exits as soon as the last request is done, not at the
    # graceful timeout (10 s).
    assert exited - max(done_at) < 1.5
    assert exited - signalled < 5.0
    log = server.log()
    assert "Graceful timeout" not in log
    assert "Worker exiting" in log
    assert len(hook_events(hooks, "worker_exit")) == 1


# -- must-show 3: max_requests -----------------------------------------------------


def test_max_requests_replaces_worker_without_failing_requests(gunicorn):
    server = gunicorn("asgi_app:app", "--max-requests", "50", "--max-requests-jitter", "10")
    stop_at = time.monotonic() + 10
    failures: list[str] = []
    pids: set[int] = set()
    count = [0]
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while time.monotonic() < stop_at:
                try:
                    r = client.get("/pid")
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    count[0] += 1
                    if r.status_code != 200:
                        failures.append(f"status {r.status_code}")
                    else:
                        pids.add(int(r.text))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, f"{len(failures)} of {count[0]} failed: {failures[:5]}"
    assert count[0] > 200
    assert len(pids) >= 3, f"{count[0]} requests served by only {pids}"
    assert len(server.worker_pids()) >= 3
    # No worker served more than max_requests + jitter.
    assert count[0] / len(pids) <= 60 + 1
    assert "Autorestarting worker after current request." in server.log()


# -- must-show 4: timeout / heartbeat ----------------------------------------------


def test_timeout_aborts_a_blocked_worker(gunicorn, tmp_path):
    hooks = tmp_path / "hooks.jsonl"
    server = gunicorn(
        "asgi_app:app",
        "-c",
        HOOKS,
        "--timeout",
        "2",
        env={"CONTRACT_HOOKS_FILE": str(hooks)},
    )
    first = get_pid(server)
    started = time.monotonic()
    try:
        r = httpx.get(server.url + "/block?s=10", timeout=9)
        # The worker may get a 500 out before it dies; never the app's 200.
        assert r.status_code == 500
    except httpx.HTTPError:
        pass
    assert time.monotonic() - started < 8  # killed long before the 10 s block ended
    server.wait_for_log(rf"WORKER TIMEOUT \(pid:{first}\)", timeout=5)
    aborts = wait_until(lambda: hook_events(hooks, "worker_abort"), 5, "worker_abort hook")
    assert aborts[0]["pid"] == first
    wait_until(lambda: hook_events(hooks, "worker_exit"), 5, "worker_exit hook")
    server.wait_for_log(r"Booting worker with pid", count=2)
    second = wait_until(lambda: _try_pid(server), 10, "a new worker")
    assert second != first
    log = server.log()
    # SIGABRT was handled (worker_abort ran): it did not have to be SIGKILLed.
    assert f"Worker (pid:{first}) was sent SIGKILL" not in log
    assert f"Worker (pid:{first}) exited with code 1" in log
    assert "Exception in ASGI lifespan" not in log


def _try_pid(server: Gunicorn) -> int | None:
    try:
        return get_pid(server)
    except httpx.HTTPError:
        return None


# -- signals and hooks -------------------------------------------------------------


def test_sigquit_and_sigint_exit_quickly_and_call_worker_int(gunicorn, tmp_path):
    hooks = tmp_path / "hooks.jsonl"
    server = gunicorn(
        "asgi_app:app",
        "-c",
        HOOKS,
        "--graceful-timeout",
        "20",
        env={"CONTRACT_HOOKS_FILE": str(hooks)},
    )
    for n, sig in enumerate((signal.SIGQUIT, signal.SIGINT), start=1):
        pid = wait_until(lambda: _try_pid(server), 10, "the worker")
        # A slow request in flight: a quick exit does not wait for it.
        pending = ThreadPoolExecutor(1).submit(
            lambda: httpx.get(server.url + "/sleep?s=10", timeout=15)
        )
        wait_until(partial(requests_seen, hooks, pid, "/sleep"), 5, "the slow request to start")
        signalled = time.monotonic()
        os.kill(pid, sig)
        wait_until(partial(process_gone, pid), 3, f"worker exit on {sig!r}")
        assert time.monotonic() - signalled < 2.0
        ints = [r for r in hook_events(hooks, "worker_int") if r["pid"] == pid]
        assert len(ints) == 1, f"worker_int not called once on {sig!r}"
        exits = [r for r in hook_events(hooks, "worker_exit") if r["pid"] == pid]
        assert len(exits) == 1
        try:
            outcome: Any = pending.result(15).status_code
        except httpx.HTTPError as exc:
            outcome = exc
        assert outcome != 200, "the slow request was not cut short"
        server.wait_for_log(r"Booting worker with pid", count=n + 1)
    assert wait_until(lambda: _try_pid(server), 10, "a replacement worker")
    log = server.log()
    # Skipping the lifespan shutdown is not an application error.
    assert "Exception in ASGI lifespan" not in log
    assert "Event loop is closed" not in log


def test_stop_does_not_wait_for_abandoned_sync_views(gunicorn, tmp_path):
    """A sync view still running in the executor does not keep the process
    alive after a quick exit or an expired graceful timeout (Python joins
    pool threads at exit); worker_exit still runs."""
    quick_hooks, slow_hooks = tmp_path / "quick.jsonl", tmp_path / "slow.jsonl"
    quick, slow = (
        gunicorn(
            "contract_wsgi_app:app",
            "-c",
            HOOKS,
            "--graceful-timeout",
            "2",
            env={"CONTRACT_HOOKS_FILE": str(path)},
            wait=False,
        )
        for path in (quick_hooks, slow_hooks)
    )
    pool = ThreadPoolExecutor(2)
    for server, hooks in ((quick, quick_hooks), (slow, slow_hooks)):
        server.wait_ready()
        pool.submit(httpx.get, server.url + "/?s=10", timeout=15)
        wait_until(partial(hook_events, hooks, "pre_request"), 5, "the sync view to start")
    pid, slow_pid = quick.worker_pids()[0], slow.worker_pids()[0]
    signalled = time.monotonic()
    os.kill(pid, signal.SIGQUIT)
    slow.signal(signal.SIGTERM)
    wait_until(partial(process_gone, pid), 3, "the quick exit")
    assert time.monotonic() - signalled < 1.0
    assert [r["worker_pid"] for r in hook_events(quick_hooks, "worker_exit")] == [pid]
    # The graceful stop gives up before graceful_timeout (2 s), so the
    # arbiter never has to SIGKILL the worker.
    wait_until(partial(process_gone, slow_pid), 3, "the graceful stop")
    assert time.monotonic() - signalled < 2.0
    assert slow.proc.wait(5) == 0
    assert [r["worker_pid"] for r in hook_events(slow_hooks, "worker_exit")] == [slow_pid]
    assert "Exiting with 1 sync call(s) still running" in slow.log()
    pool.shutdown(wait=False, cancel_futures=True)


def test_sigusr1_reopens_log_files(gunicorn, tmp_path):
    access = tmp_path / "access.log"
    server = gunicorn("asgi_app:app", "--access-logfile", str(access))
    httpx.get(server.url + "/?before=1")
    wait_until(lambda: access.exists() and "before=1" in access.read_text(), 5, "access line")
    rotated_access = tmp_path / "access.log.1"
    rotated_error = server.log_path.with_suffix(".rotated")
    access.rename(rotated_access)
    server.log_path.rename(rotated_error)
    try:
        server.signal(signal.SIGUSR1)

        def rotated() -> bool:
            httpx.get(server.url + "/?after=1")
            return access.exists() and "after=1" in access.read_text()

        wait_until(rotated, 5, "the worker to write the access log at its original path")
        # The worker's error log was reopened too: a worker-side error goes there.
        assert httpx.get(server.url + "/error").status_code == 500
        wait_until(
            lambda: server.log_path.exists() and "Error handling request" in server.log(),
            5,
            "the worker's error log line in the new file",
        )
        assert "Handling signal: usr1" in rotated_error.read_text()
        assert "after=1" not in rotated_access.read_text()
        assert "Error handling request" not in rotated_error.read_text()
    finally:
        rotated_error.unlink(missing_ok=True)


def test_worker_hooks_are_called(gunicorn, tmp_path):
    hooks = tmp_path / "hooks.jsonl"
    server = gunicorn("asgi_app:app", "-c", HOOKS, env={"CONTRACT_HOOKS_FILE": str(hooks)})
    pid = get_pid(server)
    inits = hook_events(hooks, "post_worker_init")
    assert [r["pid"] for r in inits] == [pid]
    assert inits[0]["has_app"] is True
    r = httpx.get(server.url + "/scope?x=1&y=2", headers={"X-Contract": "yes"})
    assert r.status_code == 200
    pre = wait_until(
        lambda: [r for r in hook_events(hooks, "pre_request") if r["path"] == "/scope"],
        5,
        "pre_request",
    )[0]
    assert pre["method"] == "GET"
    assert pre["uri"] == "/scope?x=1&y=2"
    assert pre["query"] == "x=1&y=2"
    assert ["X-CONTRACT", "yes"] in pre["headers"]
    post = wait_until(
        lambda: [r for r in hook_events(hooks, "post_request") if r["path"] == "/scope"],
        5,
        "post_request",
    )[0]
    assert post["status"].split()[0] == "200"
    assert post["method"] == "GET"
    assert post["uri"] == "/scope?x=1&y=2"
    assert post["environ_method"] == "GET"
    assert post["environ_path"] == "/scope"
    assert ["x-pid", str(pid)] in [[n.lower(), v] for n, v in post["response_headers"]]
    # post_request runs for an application error too.
    assert httpx.get(server.url + "/error").status_code == 500
    errors = wait_until(
        lambda: [r for r in hook_events(hooks, "post_request") if r["path"] == "/error"],
        5,
        "post_request after an error",
    )
    assert errors[0]["status"].split()[0] == "500"
    assert server.stop() == 0
    exits = hook_events(hooks, "worker_exit")
    assert [r["worker_pid"] for r in exits] == [pid]
    assert not hook_events(hooks, "worker_int")  # SIGTERM is not an interrupt


def test_default_pre_request_logs_requests_at_debug_level(gunicorn):
    """gunicorn's default pre_request hook logs "GET /path" at debug level."""
    server = gunicorn("asgi_app:app")
    assert httpx.get(server.url + "/scope?q=1").status_code == 200
    server.wait_for_log(r"\[DEBUG\] GET /scope\n", timeout=5)


def test_graceful_timeout_bounds_the_stop(gunicorn, tmp_path):
    """Requests outliving graceful_timeout are cut and an app shutdown that
    hangs is given up on: either way the worker exits by itself (worker_exit
    runs) before the arbiter would SIGKILL it.  A SIGQUIT to the arbiter
    during a graceful stop turns it into a quick one."""
    hooks = {name: tmp_path / f"{name}.jsonl" for name in ("slow", "hang", "escalate")}
    configs = {
        "slow": ("asgi_app:app", "--graceful-timeout", "2"),
        "hang": ("contract_slow_shutdown_app:app", "--graceful-timeout", "2"),
        "escalate": ("asgi_app:app", "--graceful-timeout", "20"),
    }
    servers = {
        name: gunicorn(
            *configs[name][:1],
            "-c",
            HOOKS,
            *configs[name][1:],
            env={"CONTRACT_HOOKS_FILE": str(hooks[name])},
            wait=False,
        )
        for name in configs
    }
    pool = ThreadPoolExecutor(2)
    pending = []
    for name, server in servers.items():
        server.wait_ready()
        if name != "hang":
            pending.append(pool.submit(httpx.get, server.url + "/sleep?s=20", timeout=15))
            wait_until(partial(hook_events, hooks[name], "pre_request"), 5, "the slow request")
    pids = {name: server.worker_pids()[0] for name, server in servers.items()}
    signalled = time.monotonic()
    for server in servers.values():
        server.signal(signal.SIGTERM)
    time.sleep(0.3)
    servers["escalate"].signal(signal.SIGQUIT)
    # When each worker process ended (the arbiter SIGKILLs at 2 s).
    gone: dict[str, float] = {}
    while len(gone) < len(pids) and time.monotonic() - signalled < 5:
        for name, pid in pids.items():
            if name not in gone and process_gone(pid):
                gone[name] = time.monotonic() - signalled
        time.sleep(0.01)
    # Each left by itself: a worker the arbiter had to SIGKILL ends after 2 s.
    assert gone["escalate"] < 1.0, gone
    assert gone["slow"] < 2.0, gone
    assert gone["hang"] < 2.0, gone
    for server in servers.values():
        assert server.proc.wait(5) == 0
    for future in pending:
        with pytest.raises(httpx.HTTPError):
            future.result(10)
    for name, server in servers.items():
        log = server.log()
        assert "SIGKILL" not in log
        assert [r["worker_pid"] for r in hook_events(hooks[name], "worker_exit")] == [
            pids[name]
        ], name
    assert "Graceful timeout: closing 1 connection(s)" in servers["slow"].log()
    assert "ASGI lifespan shutdown timed out" in servers["hang"].log()
    assert "Quick shutdown requested" in servers["escalate"].log()
    pool.shutdown(wait=False, cancel_futures=True)


def test_boot_failures_halt_the_arbiter(gunicorn):
    missing, failing = (
        gunicorn("contract_no_such_module:app", wait=False),
        gunicorn("contract_failing_app:app", wait=False),
    )
    # gunicorn's exit codes: 3 = worker failed to boot, 4 = app failed to load.
    assert missing.proc.wait(15) in (3, 4)
    assert failing.proc.wait(15) == 3
    assert "Worker failed to boot" in failing.log()
    assert "no database" in failing.log()


def test_sighup_replaces_the_worker_gracefully(gunicorn):
    server = gunicorn("asgi_app:app")
    old = get_pid(server)
    pending = ThreadPoolExecutor(1).submit(
        lambda: httpx.get(server.url + "/sleep?s=1.5", timeout=10)
    )
    time.sleep(0.3)
    server.signal(signal.SIGHUP)
    r = pending.result(10)
    assert r.status_code == 200
    assert r.text == "slept"
    wait_until(lambda: process_gone(old), 5, "the old worker to exit")
    new = wait_until(lambda: _try_pid(server), 5, "the new worker")
    assert new != old
    assert server.proc.poll() is None


def test_worker_exits_when_the_arbiter_dies(gunicorn):
    server = gunicorn("asgi_app:app")
    pid = get_pid(server)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    wait_until(lambda: process_gone(pid), 5, "the orphaned worker to exit")


def test_sigwinch_is_ignored_by_the_worker(gunicorn):
    server = gunicorn("asgi_app:app")
    pid = get_pid(server)
    os.kill(pid, signal.SIGWINCH)
    server.wait_for_log(r"SIGWINCH ignored", timeout=5)
    assert get_pid(server) == pid


def test_request_limits(gunicorn):
    server = gunicorn(
        "asgi_app:app",
        "--limit-request-line",
        "100",
        "--limit-request-fields",
        "5",
        "--limit-request-field_size",
        "60",
    )
    pid = get_pid(server)

    def ask(target: str = "/", headers: str = "") -> int:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        return status_of(raw_request(server.port, request.encode()))

    assert ask("/?" + "a" * 50) == 200
    assert ask("/?" + "a" * 200) == 414
    assert ask(headers="".join(f"X-H{i}: v\r\n" for i in range(3))) == 200
    assert ask(headers="".join(f"X-H{i}: v\r\n" for i in range(10))) == 431
    assert ask(headers="X-Big: " + "b" * 40 + "\r\n") == 200
    assert ask(headers="X-Big: " + "b" * 200 + "\r\n") == 431
    assert get_pid(server) == pid


def test_unix_socket_bind(gunicorn, tmp_path):
    path = tmp_path / "g.sock"
    server = gunicorn("asgi_app:app", "-b", f"unix:{path}")
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://local") as client:
        r = client.get("/scope", headers={"X-Forwarded-Proto": "https"})
        assert r.status_code == 200
        scope = r.json()
        # A UNIX socket peer is trusted for scheme headers, as in gunicorn.
        assert scope["scheme"] == "https"
        assert client.get("/sleep?s=0.01").text == "slept"
    assert httpx.get(server.url + "/").text == "hello"


# -- keepalive and worker_connections ----------------------------------------------


def test_keepalive_closes_idle_connections(gunicorn):
    server, off = start_all(
        gunicorn, ("asgi_app:app", "--keep-alive", "1"), ("asgi_app:app", "--keep-alive", "0")
    )
    # --keep-alive 0 turns keep-alive off: every response closes.
    with socket.create_connection(("127.0.0.1", off.port), timeout=5) as sock:
        status, headers, _ = keepalive_get(sock, "/")
        assert status == 200
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        assert keepalive_get(sock, "/")[0] == 200
        time.sleep(0.6)
        # Still open within the keep-alive time, and each request restarts it.
        assert keepalive_get(sock, "/")[0] == 200
        idle_from = time.monotonic()
        assert sock.recv(1) == b""
        idle = time.monotonic() - idle_from
    assert 0.8 < idle < 2.0, f"idle connection closed after {idle:.2f}s, keep-alive is 1 s"


def test_worker_connections_caps_simultaneous_clients(gunicorn):
    server = gunicorn("asgi_app:app", "--worker-connections", "5", "--keep-alive", "30")
    pid = get_pid(server)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
    try:
        for sock in held:
            assert keepalive_get(sock, "/pid")[0] == 200
        waiting = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            waiting.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            waiting.settimeout(1.0)
            with pytest.raises(TimeoutError):
                waiting.recv(1)  # queued in the backlog, not served
            held.pop(0).close()
            waiting.settimeout(5.0)
            status, _, body = read_response(waiting)
            assert status == 200
            assert int(body) == pid  # the same worker, which never crashed
        finally:
            waiting.close()
        # The other held connections are still served.
        for sock in held:
            assert keepalive_get(sock, "/")[0] == 200
    finally:
        for sock in held:
            sock.close()
    assert len(server.worker_pids()) == 1


# -- threads: the executor size ----------------------------------------------------


async def test_threads_sizes_the_sync_executor(gunicorn):
    server = gunicorn("contract_wsgi_app:app", "--threads", "2")
    await async_get(server.port, b"/")  # warm up
    started = time.monotonic()
    answers = await asyncio.gather(*(async_get(server.port, b"/?s=0.5") for _ in range(8)))
    elapsed = time.monotonic() - started
    assert all(status_of(a) == 200 for a in answers)
    names = {a.partition(b"\r\n\r\n")[2] for a in answers}
    assert len(names) <= 2, names
    assert all(n.startswith(b"flask-async-worker") for n in names)
    # 8 requests of 0.5 s on 2 threads: four rounds.
    assert 1.9 < elapsed < 3.0, f"8 x 0.5 s on 2 threads took {elapsed:.2f}s"


# -- access log and statsd ---------------------------------------------------------

ATOMS = (
    "h=%(h)s|l=%(l)s|u=%(u)s|t=%(t)s|r=%(r)s|s=%(s)s|m=%(m)s|U=%(U)s|q=%(q)s|H=%(H)s"
    "|b=%(b)s|B=%(B)s|f=%(f)s|a=%(a)s|T=%(T)s|D=%(D)s|M=%(M)s|L=%(L)s|p=%(p)s"
    "|i=%({x-contract}i)s|o=%({content-type}o)s|e=%({REMOTE_PORT}e)s|ee=%({HTTP_X_CONTRACT}e)s"
)


def parse_access_line(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split("|"))


def test_access_log_renders_every_atom(gunicorn, tmp_path):
    access = tmp_path / "access.log"
    server = gunicorn("asgi_app:app", "--access-logfile", str(access), "--access-logformat", ATOMS)
    pid = get_pid(server)
    auth = base64.b64encode(b"alice:secret").decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(
            b"GET /?q=1 HTTP/1.1\r\nHost: x\r\nReferer: http://ref.example/page\r\n"
            b"User-Agent: contract-agent/1.0\r\nAuthorization: Basic "
            + auth.encode()
            + b"\r\nX-Contract: hello\r\n\r\n"
        )
        assert read_response(sock)[0] == 200
        before = time.time()
        sock.sendall(b"GET /sleep?s=1.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
    wait_until(lambda: "U=/sleep" in access.read_text(), 5, "the second access line")
    lines = [ln for ln in access.read_text().splitlines() if "m=GET" in ln]
    first = parse_access_line(next(ln for ln in lines if "U=/|" in ln))
    assert first["h"] == "127.0.0.1"
    assert first["l"] == "-"
    assert first["u"] == "alice"
    assert re.fullmatch(r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]", first["t"])
    assert first["r"] == "GET /?q=1 HTTP/1.1"
    assert first["s"] == "200"
    assert first["m"] == "GET"
    assert first["U"] == "/"
    assert first["q"] == "q=1"
    assert first["H"] == "HTTP/1.1"
    assert first["b"] == "5"  # "hello"
    assert first["B"] == "5"
    assert first["f"] == "http://ref.example/page"
    assert first["a"] == "contract-agent/1.0"
    assert first["T"] == "0"
    assert 0 < int(first["D"]) < 1_000_000
    assert 0 <= int(first["M"]) < 1000
    assert re.fullmatch(r"0\.\d{6}", first["L"])
    assert first["p"] == f"<{pid}>"
    assert first["i"] == "hello"
    assert first["o"] == "text/plain"
    assert first["e"] == str(client_port)
    assert first["ee"] == "hello"
    slow = parse_access_line(next(ln for ln in lines if "U=/sleep" in ln))
    assert slow["r"] == "GET /sleep?s=1.1 HTTP/1.1"
    assert slow["q"] == "s=1.1"
    assert slow["u"] == "-"
    assert slow["f"] == "-"
    assert slow["i"] == "-"
    assert slow["T"] == "1"
    # uvloop's timers run on a millisecond clock cached per loop iteration:
    # the 1.1 s sleep may end a little before 1.1 s of monotonic time.
    assert 1_090_000 <= int(slow["D"]) < 3_000_000
    assert 1090 <= int(slow["M"]) < 3000
    assert re.fullmatch(r"1\.\d{6}", slow["L"])
    assert time.time() - before >= 1.1


def test_statsd_receives_request_metrics(gunicorn):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.5)
        port = udp.getsockname()[1]
        server = gunicorn("asgi_app:app", "--statsd-host", f"127.0.0.1:{port}")
        assert httpx.get(server.url + "/").status_code == 200
        assert httpx.get(server.url + "/missing").status_code == 404
        wanted = {
            "gunicorn.requests:1|c",
            "gunicorn.request.status.200:1|c",
            "gunicorn.request.status.404:1|c",
            "gunicorn.request.duration:",
        }
        seen: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                seen.extend(udp.recv(65536).decode().splitlines())
            except TimeoutError:
                pass
            if all(any(m.startswith(w) for m in seen) for w in wanted):
                break
        for w in wanted:
            assert any(m.startswith(w) for m in seen), f"{w} not in {seen}"
        assert sum(m.startswith("gunicorn.requests:1|c") for m in seen) >= 2


# -- forwarded headers and header policy ---------------------------------------------


def scope_of(server: Gunicorn, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = httpx.get(server.url + "/scope", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_forwarded_allow_ips_and_secure_scheme_headers(gunicorn):
    default, untrusting, refusing, dangerous = start_all(
        gunicorn,
        ("asgi_app:app",),
        ("asgi_app:app", "--forwarded-allow-ips", "10.0.0.1"),
        ("asgi_app:app", "--header-map", "refuse"),
        ("asgi_app:app", "--header-map", "dangerous"),
    )
    https = {"X-Forwarded-Proto": "https"}
    # 127.0.0.1 is trusted by default.
    assert scope_of(default, https)["scheme"] == "https"
    assert scope_of(default, {"X-Forwarded-Ssl": "on"})["scheme"] == "https"
    assert scope_of(default)["scheme"] == "http"
    # Not from a listed front end: the claim is ignored.
    assert scope_of(untrusting, https)["scheme"] == "http"
    # Contradictory scheme headers.
    r = httpx.get(default.url + "/scope", headers={**https, "X-Forwarded-Ssl": "off"})
    assert r.status_code == 400
    # A trusted forwarder may set the mount point with SCRIPT_NAME.
    assert scope_of(default, {"SCRIPT_NAME": "/mounted"})["root_path"] == "/mounted"
    assert scope_of(untrusting, {"SCRIPT_NAME": "/mounted"})["root_path"] == ""
    # header_map: underscores are dropped by default, refused or passed on request.
    names = [n for n, _ in scope_of(default, {"X_Under": "1", "X-Dash": "2"})["headers"]]
    assert "x-dash" in names
    assert "x_under" not in names
    r = httpx.get(refusing.url + "/scope", headers={"X_Under": "1"})
    assert r.status_code == 400
    assert scope_of(refusing, {"X-Dash": "2"})["scheme"] == "http"
    names = [n for n, _ in scope_of(dangerous, {"X_Under": "1"})["headers"]]
    assert "x_under" in names
    # Each worker survived every refusal.
    for server in (default, untrusting, refusing, dangerous):
        assert len(server.worker_pids()) == 1


# -- root_path ------------------------------------------------------------------------


def test_root_path_reaches_asgi_scope_and_flask_url_for(gunicorn):
    asgi, flask = start_all(
        gunicorn,
        ("asgi_app:app", "--root-path", "/api"),
        ("contract_flask_app:app", "--root-path", "/api"),
    )
    assert scope_of(asgi)["root_path"] == "/api"
    for path in ("/hello", "/api/hello"):
        r = httpx.get(flask.url + path)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["url"] == "/api/hello"
        assert data["external"] == f"http://127.0.0.1:{flask.port}/api/hello"
        assert data["script_root"] == "/api"
        assert data["path"] == "/hello"
    r = httpx.get(flask.url + "/async-hello")
    assert r.status_code == 200, r.text
    assert r.json() == {"url": "/api/async-hello", "script_root": "/api"}


# -- reload and preload ----------------------------------------------------------------

RELOAD_APP = """
import os

VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("%s %d" % (VERSION, os.getpid())).encode()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})
"""


def test_reload_restarts_the_worker_on_change(gunicorn, tmp_path):
    module = tmp_path / "reload_app.py"
    module.write_text(RELOAD_APP.format(version="v1"))
    server = gunicorn("reload_app:app", "--reload", cwd=tmp_path)
    version, pid = httpx.get(server.url).text.split()
    assert version == "v1"
    failures: list[str] = []
    stop = threading.Event()

    def keep_requesting() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.get("/")
                    if r.status_code != 200:
                        failures.append(f"status {r.status_code}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                time.sleep(0.01)

    background = threading.Thread(target=keep_requesting)
    background.start()
    try:
        time.sleep(0.3)
        module.write_text(RELOAD_APP.format(version="v2"))
        later = time.time() + 2
        os.utime(module, (later, later))

        def reloaded() -> list[str] | None:
            words = httpx.get(server.url, timeout=5).text.split()
            return words if words[0] == "v2" else None

        version, new_pid = wait_until(reloaded, 10, "the reloaded app")
        time.sleep(0.3)
    finally:
        stop.set()
        background.join(15)
    assert new_pid != pid
    assert "Worker reloading" in server.log()
    assert not failures, failures[:5]


def test_preload_imports_the_app_in_the_arbiter(gunicorn):
    server = gunicorn("contract_app:app", "--preload")
    import_pid, worker_pid = map(int, httpx.get(server.url + "/import-pid").text.split())
    assert import_pid == server.pid
    assert worker_pid != server.pid
    assert httpx.get(server.url + "/sleep?s=0.01").text == "slept"
    assert httpx.get(server.url + "/loop").text.startswith("uvloop")


# -- the asyncio worker ----------------------------------------------------------------


def test_asyncio_worker_serves_the_same_requests(gunicorn):
    server = gunicorn("contract_app:app", worker="flask_async_worker.AsyncioWorker")
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/loop").text == "asyncio.unix_events"
        r = client.get("/")
        assert r.status_code == 200
        assert r.text == "hello"
        r = client.post("/echo", content=b"y" * 100_000)
        assert r.content == b"y" * 100_000
        assert client.get("/scope?a=b").json()["query_string"] == "a=b"
        assert client.get("/sleep?s=0.05").text == "slept"
        assert client.get("/nope").status_code == 404
        assert client.get("/error").status_code == 500
    data = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200
    assert server.stop() == 0
    assert "Worker exiting" in server.log()
