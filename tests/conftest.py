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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hyperframe.frame import Frame

from flask_async_worker.protocols.http2 import H2Driver
from flask_async_worker.protocols.http2_h2lib import H2LibDriver

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


HTTP2_ENGINES = ["native", "h2"]


@pytest.fixture(scope="module", params=HTTP2_ENGINES)
def http2_engine(request: pytest.FixtureRequest) -> str:
    """An HTTP/2 driver (``FLASK_ASYNC_WORKER_HTTP2_ENGINE``): the HTTP/2
    tests that take this run against a worker using each one in turn."""
    return str(request.param)


def engine_env(engine: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return {**(env or {}), "FLASK_ASYNC_WORKER_HTTP2_ENGINE": engine}


H2DriverClass = type[H2Driver] | type[H2LibDriver]
H2_DRIVER_CLASSES: dict[str, H2DriverClass] = {"native": H2Driver, "h2": H2LibDriver}


def h2_frames(data: bytes) -> list[Frame]:
    """The HTTP/2 frames in ``data``, parsed by hyperframe (independently
    of the driver that wrote them)."""
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def driver_engine_fixture(module: str) -> Any:
    """An autouse fixture, named ``engine``, that runs each test of the
    sans-IO module ``module`` once per HTTP/2 engine, with the module's
    ``Driver`` global set to that engine's driver class."""

    @pytest.fixture(autouse=True, params=list(H2_DRIVER_CLASSES))
    def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setattr(sys.modules[module], "Driver", H2_DRIVER_CLASSES[request.param])
        return str(request.param)

    return engine


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


@contextmanager
def serving(started: dict[str, Gunicorn]) -> Iterator[dict[str, Gunicorn]]:
    """Servers started with ``wait=False`` (so they boot in parallel), ready
    inside the block and stopped after it."""
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.close()


@dataclass(frozen=True)
class TLSFiles:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""

    ca: Path
    cert: Path
    key: Path
    authority: Any  # trustme.CA, to issue more (client certificates)


def tls_files(path: Path) -> TLSFiles:
    import trustme

    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(path / "ca.pem", path / "server.pem", path / "server.key", authority)
    authority.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.key))
    with open(files.cert, "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    return files


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: For browser tests: skipped, with the way to fix it, where Chromium is missing.
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing and was not installed (`make system-deps` installs "
    "the Debian chromium package)",
)


def launch_chromium(playwright: Any) -> Any:
    """Headless Chromium from Debian's package, through playwright."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
    )


class SocketClient:
    """A hand-driven protocol client on a blocking socket to 127.0.0.1:
    subclasses parse what :meth:`read` receives (``_feed``) and describe
    their state for failure messages (``summary``)."""

    #: Most bytes one read takes.
    read_size = 65536
    #: How long :meth:`wait` waits unless told.
    wait_timeout = 3.0

    def __init__(self, port: int, *, rcvbuf: int | None = None, timeout: float = 3.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.closed = False  # the server closed (or reset) the connection
        self.peer_reset = False

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # The server already gave up on the connection; what it said
            # before is still readable, or the reads report the close.
            pass

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def summary(self) -> list[str]:
        return []

    def read(self, timeout: float) -> None:
        if self.closed:
            return
        self.sock.settimeout(max(timeout, 0.01))
        try:
            data = self.sock.recv(self.read_size)
        except TimeoutError:
            return
        except ConnectionResetError:
            self.peer_reset = True
            data = b""
        if not data:
            self.closed = True
            return
        self._feed(data)

    def wait(
        self, predicate: Callable[[], bool], timeout: float | None = None, what: str = ""
    ) -> float:
        """Read until ``predicate()`` holds (``wait_timeout`` seconds unless
        told); the seconds it took."""
        timeout = self.wait_timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                state = "closed" if self.closed else "open"
                raise AssertionError(
                    f"{what or 'condition'} not met in {timeout}s (connection {state}); "
                    f"seen: {self.summary()}"
                )
            self.read(min(left, 0.5))
        return time.monotonic() - start

    def wait_closed(self, timeout: float = 3.0) -> float:
        """Seconds until the server closed the connection."""
        start = time.monotonic()
        deadline = start + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not closed within {timeout}s; seen: {self.summary()}")
            self.read(left)
        return time.monotonic() - start
