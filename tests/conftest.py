"""Shared fixtures: a real gunicorn process running the worker.

Every end-to-end test starts ``python -m gunicorn`` with the worker on an
ephemeral loopback port (``-b 127.0.0.1:0``), reads the port back from the
arbiter's log, and stops the arbiter by PID when the test ends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
EXAMPLES = ROOT / "examples"
WORKER = "flask_async_worker.UVLoopWorker"


class Gunicorn:
    """One gunicorn arbiter with our worker, logging to a file."""

    def __init__(
        self,
        app: str,
        *args: str,
        worker: str = WORKER,
        env: dict[str, str] | None = None,
        cwd: Path = APPS,
        bind: str = "127.0.0.1:0",
        wait: bool = True,
    ) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
        self.cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "--no-control-socket",
            "-k",
            worker,
            "-b",
            bind,
            "--error-logfile",
            str(self.log_path),
            "--log-level",
            "debug",
            *args,
            app,
        ]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), str(EXAMPLES)])
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = 0
        if wait:
            self.wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        """What the processes printed (the access log when ``--access-logfile -``)."""
        if self.proc.poll() is None:
            raise RuntimeError("stdout is readable once the arbiter stopped")
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")

    def worker_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log())]

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.log()))
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not logged within {timeout}s; log:\n{self.log()}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        match = self.wait_for_log(r"Listening at: \S+?:(\d+)", timeout)
        self.port = int(match.group(1))
        self.wait_for_log(r"Booting worker with pid", timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            # The arbiter's socket accepts before the worker serves; a worker
            # that booted logs nothing more, so give it its first tick.
            time.sleep(0.2)
            return
        raise AssertionError(f"gunicorn did not come up:\n{self.log()}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def close(self) -> None:
        """Stop the arbiter (SIGTERM, then SIGKILL) and remove its log."""
        self.stop()
        self.kill()
        self.log_path.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


HTTP_PARSERS = ["httptools", "h11"]


@pytest.fixture(scope="module", params=HTTP_PARSERS)
def http_parser(request: pytest.FixtureRequest) -> str:
    """An HTTP/1.1 driver (``FLASK_ASYNC_WORKER_HTTP_PARSER``): the protocol
    tests that take this run against a worker using each one in turn."""
    return str(request.param)


def parser_env(parser: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return {**(env or {}), "FLASK_ASYNC_WORKER_HTTP_PARSER": parser}


@pytest.fixture
def gunicorn() -> Iterator[type[Gunicorn]]:
    """Start servers with ``gunicorn("module:app", *flags)``; all stop at teardown."""
    started: list[Gunicorn] = []

    class Started(Gunicorn):
        def __init__(self, *args: object, **kwargs: object) -> None:
            started.append(self)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    yield Started
    for server in started:
        server.close()


def raw_request(
    port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True
) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Block until the server closes ``sock``: (seconds, bytes it sent)."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"not closed within {limit}s; got {data!r}") from None
    return time.monotonic() - start, data


def status_of(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    assert match, f"not an HTTP response: {response[:200]!r}"
    return int(match.group(1))
