#!/usr/bin/env python3
"""Benchmark flask_async_worker against the other ways of serving Flask.

    python3 bench/run.py            # every scenario, every row (~17 minutes)
    python3 bench/run.py --quick    # shorter runs (~10 minutes)
    python3 bench/run.py --only 3,4,gthread,granian
    make bench

The first call creates ``bench/.venv`` with the alternatives (see
``bench/requirements.txt``) and the project itself (``pip install -e``),
installs Debian's ``wrk``, ``nghttp2-client`` (h2load) and ``openssl`` when
missing, and then runs itself again inside that venv.

One server at a time, one worker process each, pinned to CPU 0 with
``taskset``; the load generator (wrk, h2load for HTTP/2, or
``bench/loadgen.py`` for thousands of connections, idle connections, SSE and
WebSockets) and this harness are pinned to CPU 1.  Every scenario reports
req/s, p50/p99 latency, errors, the server's CPU time per request
(utime+stime of the server's processes over the measured window, from /proc)
and the worker's peak RSS, and every row's ratio to ours (``UVLoopWorker``):
the machine is shared and noisy, so only ratios from one run mean anything.

Results go to ``bench/results/`` (JSON, git-ignored); a run of every row also
writes ``docs/benchmarks.rst``, ``docs/_static/benchmarks.png`` and, from a
cProfile of our worker on scenarios 1 and 2, ``bench/PROFILE.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
VBIN = VENV / "bin"
VPY = VBIN / "python"
APPS = BENCH / "apps"
RESULTS = BENCH / "results"
REQUIREMENTS = BENCH / "requirements.txt"
DOCS_RST = REPO / "docs" / "benchmarks.rst"
PNG = REPO / "docs" / "_static" / "benchmarks.png"
PROFILE_MD = BENCH / "PROFILE.md"
SERVER_CPU = 0
CLIENT_CPU = 1
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
OURS = "ours-uvloop"
TIMES = "\u00d7"
DASH = "\u2013"
NO_H2 = "no HTTP/2 answer"  # a Result status: the server took the load but spoke no HTTP/2
WS_PATH = "/ws/echo"  # scenario 10's route, in every app that serves it
WS_ECHO_CONNS = 64
WS_IDLE_CONNS = 2000


# -- bootstrap: the bench venv and the Debian tools --------------------------------------


def _venv_fingerprint() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    for name in ("setup.cfg", "setup.py", "pyproject.toml"):
        path = REPO / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    stamp = VENV / ".installed"
    want = _venv_fingerprint()
    if stamp.exists() and stamp.read_text().strip() == want and VPY.exists():
        return
    print(f"bench: creating {VENV} (one-time, a few minutes)", flush=True)
    if not VPY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VPY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "-e", str(REPO)], check=True)
    # Optional: a sampling profiler for PROFILE.md; the harness works without it.
    subprocess.run([*pip, "py-spy"], check=False)
    stamp.write_text(want + "\n")


def ensure_tools() -> None:
    missing = [
        pkg
        for tool, pkg in (("wrk", "wrk"), ("h2load", "nghttp2-client"), ("openssl", "openssl"))
        if not shutil.which(tool)
    ]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"bench: apt-get install {' '.join(missing)}", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True)


def in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# -- processes: the server tree, CPU and RSS from /proc ------------------------------------


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _rss_kib(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Sample:
    t: float
    cpu_ticks: int
    rss_kib: int


class Server:
    """One server process tree, started pinned to the server CPU."""

    def __init__(
        self,
        row: Row,
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        transport: str = "",
        tls: ssl.SSLContext | None = None,
    ):
        self.row = row
        self.port = port
        self.log_path = log_path
        self.env = dict(env or {})
        self.transport = transport  # "" (HTTP/1.1), "h2c" or "tls": how scenario 7 connects
        self.tls = tls  # the client side of the server's certificate, for the probe
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, str] = {}  # every pid of the tree we saw, with its cmdline
        self.worker_pids: list[int] = []
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._log: IO[bytes] | None = None
        self.worker_changes = 0

    def start(self, ready_timeout: float = 40.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(BENCH)])
        env["PATH"] = f"{VBIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.env)
        self._log = self.log_path.open("wb")
        argv = ["taskset", "-c", str(SERVER_CPU), *self.row.command(self.port)]
        self._log.write((" ".join(argv) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            argv,
            cwd=APPS,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            if self.answers():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server not ready after {ready_timeout:.0f}s: {self.log_tail()}"
                )
            time.sleep(0.1)
        self._refresh_workers()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether a worker is up and free to answer an HTTP/1.1 probe.

        A gunicorn worker with prior-knowledge h2c refuses HTTP/1.1 from a
        trusted peer with 400: that refusal still proves the worker is
        accepting, which is all the probe is for.
        """
        status = http_status(self.port, "/plaintext", timeout, tls=self.tls)
        if self.transport == "h2c":
            return status is not None
        return status == 200

    def _refresh_workers(self) -> None:
        assert self.proc is not None
        tree = descendants(self.proc.pid)
        self._remember(tree)
        workers = [p for p in tree if "resource_tracker" not in _cmdline(p)]
        # A server whose worker processes have children (none here) would
        # need a finer rule; the leaves are the workers.
        parents = {p for p in workers if any((_read_stat(c) or (0, 0))[0] == p for c in workers)}
        workers = [p for p in workers if p not in parents] or [self.proc.pid]
        if self.worker_pids and sorted(workers) != sorted(self.worker_pids):
            self.worker_changes += 1
        self.worker_pids = workers

    def _remember(self, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid not in self.seen:
                self.seen[pid] = _cmdline(pid)

    def cpu_ticks(self) -> int:
        assert self.proc is not None
        total = 0
        for pid in {self.proc.pid, *self.worker_pids}:
            stat = _read_stat(pid)
            if stat is not None:
                total += stat[1]
        return total

    def rss_kib(self) -> int:
        return sum(_rss_kib(p) for p in self.worker_pids)

    def _sample_loop(self) -> None:
        last_refresh = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_refresh > 1.0:
                self._refresh_workers()
                last_refresh = now
            sample = Sample(now, self.cpu_ticks(), self.rss_kib())
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(0.1)

    def window(self, t0: float, t1: float) -> tuple[float | None, int | None]:
        """CPU seconds used and peak RSS (KiB) between two monotonic times."""
        with self._lock:
            samples = list(self.samples)
        inside = [s for s in samples if t0 <= s.t <= t1]
        if len(inside) < 2:
            return None, None
        cpu = (inside[-1].cpu_ticks - inside[0].cpu_ticks) / CLK_TCK
        span = inside[-1].t - inside[0].t
        if span > 0:
            cpu *= (t1 - t0) / span  # the samples cover slightly less than the window
        return cpu, max(s.rss_kib for s in inside)

    def rss_median(self, t0: float, t1: float) -> int | None:
        with self._lock:
            values = [s.rss_kib for s in self.samples if t0 <= s.t <= t1]
        return int(statistics.median(values)) if values else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 6.0) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(2.0)
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(Exception):
            self._remember(descendants(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid, cmdline in self.seen.items():  # stragglers we started (workers), by PID
            if _read_stat(pid) is not None and _cmdline(pid) == cmdline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


def http_status(
    port: int, path: str, timeout: float = 2.0, *, tls: ssl.SSLContext | None = None
) -> int | None:
    conn = (
        http.client.HTTPConnection(HOST, port, timeout=timeout)
        if tls is None
        else http.client.HTTPSConnection(HOST, port, timeout=timeout, context=tls)
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# -- TLS for scenario 7 -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate (the readiness probe)."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_tls(directory: Path = RESULTS / "tls") -> TlsFiles:
    """A fresh self-signed certificate for 127.0.0.1 and localhost.

    Made on every run, so it never expires between runs and no key is ever
    committed. ECDSA P-256: the cheapest common handshake, so the TLS rows
    measure the servers rather than RSA. openssl writes the key as PKCS#8,
    the only form Granian reads.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "7",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
        ],
        check=True,
        capture_output=True,
    )
    return files


# -- the rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    command: Callable[[int], list[str]]
    app: str = "flask"
    sse_path: str = "/sse"
    skips: Mapping[str, str] = field(default_factory=dict)
    ours: bool = False
    notes: str = ""
    # Extra arguments that turn HTTP/2 on, per transport ("h2c" or "tls");
    # None for a server with no HTTP/2 (its skips then say why).
    h2: Callable[[str, TlsFiles], list[str]] | None = None
    # Another app for one group's server ("module:variable"): the WSGI rows
    # serve scenario 10 from the same Flask app with flask-sock's route.
    group_apps: Mapping[str, str] = field(default_factory=dict)

    def with_args(self, extra: Sequence[str]) -> Row:
        """The same row with more options, placed before the app (every command ends with it)."""
        command = self.command

        def extended(port: int) -> list[str]:
            argv = command(port)
            return [*argv[:-1], *extra, argv[-1]]

        return replace(self, command=extended)

    def with_app(self, app: str) -> Row:
        """The same row serving another app (the last argument of every command)."""
        command = self.command

        def swapped(port: int) -> list[str]:
            return [*command(port)[:-1], app]

        return replace(self, command=swapped)


def gunicorn(*worker_args: str, app: str = "flask_app:app") -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            str(VBIN / "gunicorn"),
            "--workers=1",
            f"--bind={HOST}:{port}",
            f"--chdir={APPS}",
            "--keep-alive=75",
            "--worker-connections=10000",
            "--backlog=2048",
            "--timeout=120",
            "--graceful-timeout=3",
            "--log-level=warning",
            *worker_args,
            app,
        ]

    return command


def granian(port: int) -> list[str]:
    return [
        str(VBIN / "granian"),
        "--interface=wsgi",
        "--workers=1",
        f"--host={HOST}",
        f"--port={port}",
        "--log-level=warning",
        "--no-ws",
        "flask_app:app",
    ]


def hypercorn(port: int) -> list[str]:
    return [
        str(VBIN / "hypercorn"),
        "--config",
        f"file:{BENCH / 'hypercorn_conf.py'}",
        f"--bind={HOST}:{port}",
        "quart_app:app",
    ]


def gunicorn_h2(transport: str, tls: TlsFiles) -> list[str]:
    """Gunicorn's own HTTP/2 settings; our workers read the same ones, so they get them too.

    Cleartext HTTP/2 is off in gunicorn by default and, when on, served only to
    peers in ``forwarded_allow_ips`` (loopback by default): h2load connects
    from 127.0.0.1 with the prior-knowledge preface.
    """
    if transport == "tls":
        return ["--http-protocols=h2,h1", f"--certfile={tls.cert}", f"--keyfile={tls.key}"]
    return ["--http-protocols=h2,h1", "--http2-cleartext=prior-knowledge"]


def granian_h2(transport: str, tls: TlsFiles) -> list[str]:
    """Granian's default ``--http auto`` already takes h2c prior knowledge and ALPN h2."""
    if transport == "tls":
        return [f"--ssl-certificate={tls.cert}", f"--ssl-keyfile={tls.key}"]
    return []


def hypercorn_h2(transport: str, tls: TlsFiles) -> list[str]:
    """Hypercorn serves h2c prior knowledge by default and offers h2 over ALPN."""
    if transport == "tls":
        return [f"--certfile={tls.cert}", f"--keyfile={tls.key}"]
    return []


NO_H2_SYNC = (
    "gunicorn's sync worker has no HTTP/2: with h2 in --http-protocols it warns "
    "and serves HTTP/1.1 only"
)
NO_H2_UVICORN = "uvicorn speaks HTTP/1.1 only (no HTTP/2 implementation)"
NO_WS_SYNC = (
    "one request at a time: an open WebSocket (flask-sock) would hold the sync worker's "
    "only thread and leave every other connection waiting"
)
NO_WS_WSGI = "WSGI has no WebSocket: {} serves only HTTP requests to the Flask app"
NO_WS_GRANIAN = (
    "Granian's WSGI interface has no WebSocket (WebSockets are for its ASGI and RSGI "
    "interfaces; the row runs with --no-ws)"
)
FLASK_SOCK = {"10": "flask_sock_app:app"}
NO_KEEPALIVE = "closes every connection after one response (no keep-alive)"

ROWS: list[Row] = [
    Row(
        "sync",
        "gunicorn sync",
        gunicorn("--worker-class=sync"),
        skips={"7": NO_H2_SYNC, "9": NO_KEEPALIVE, "10": NO_WS_SYNC},
    ),
    Row(
        "gthread",
        "gunicorn gthread (32 threads)",
        gunicorn("--worker-class=gthread", "--threads=32"),
        h2=gunicorn_h2,
        group_apps=FLASK_SOCK,
    ),
    Row(
        "gevent",
        "gunicorn gevent",
        gunicorn("--worker-class=gevent"),
        h2=gunicorn_h2,
        group_apps=FLASK_SOCK,
    ),
    Row(
        "asgi-wsgitoasgi",
        "gunicorn -k asgi + WsgiToAsgi",
        gunicorn("--worker-class=asgi", app="wrapped:wsgitoasgi"),
        skips={"10": NO_WS_WSGI.format("asgiref's WsgiToAsgi")},
        h2=gunicorn_h2,
    ),
    Row(
        "uvicorn-a2wsgi",
        "uvicorn worker + a2wsgi",
        gunicorn("--worker-class=uvicorn_worker.UvicornWorker", app="wrapped:a2wsgi"),
        skips={"7": NO_H2_UVICORN, "10": NO_WS_WSGI.format("a2wsgi's WSGIMiddleware")},
    ),
    Row(
        "granian",
        "Granian (WSGI)",
        granian,
        notes="defaults: 512 blocking threads, backpressure 1024",
        skips={"10": NO_WS_GRANIAN},
        h2=granian_h2,
    ),
    Row("hypercorn-quart", "Hypercorn + Quart", hypercorn, app="quart", h2=hypercorn_h2),
    Row(
        "uvicorn-quart",
        "uvicorn worker + Quart",
        gunicorn("--worker-class=uvicorn_worker.UvicornWorker", app="quart_app:app"),
        app="quart",
        skips={"7": NO_H2_UVICORN},
    ),
    Row(
        OURS,
        "ours: UVLoopWorker",
        gunicorn("--worker-class=flask_async_worker.UVLoopWorker"),
        sse_path="/sse-async",
        ours=True,
        h2=gunicorn_h2,
    ),
    Row(
        "ours-asyncio",
        "ours: AsyncioWorker",
        gunicorn("--worker-class=flask_async_worker.AsyncioWorker"),
        sse_path="/sse-async",
        ours=True,
        h2=gunicorn_h2,
    ),
]
# The gunicorn rows scenario 7's target is measured against.
GUNICORN_H2_ROWS = ("gthread", "gevent", "asgi-wsgitoasgi")


# -- the scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    group: str  # scenarios of one group share one server start
    metric: str  # unit of the headline number the ratio is taken of
    higher_is_better: bool = True
    ideal: float | None = None
    skip_all: str = ""
    transport: str = ""  # scenario 7: "h2c" or "tls", which the group's server is started for


SCENARIOS: list[Scenario] = [
    Scenario("1-plaintext", "1. sync view, plaintext, 64 connections (wrk)", "light", "req/s"),
    Scenario("1-json", "1. sync view, JSON, 64 connections (wrk)", "light", "req/s"),
    Scenario("2", "2. async def view, plaintext, 64 connections (wrk)", "light", "req/s"),
    Scenario(
        "3",
        "3. async view awaiting 50 ms, 256 connections (wrk)",
        "light",
        "req/s",
        ideal=256 / 0.05,
    ),
    Scenario(
        "4",
        "4. async view awaiting 1 s, 5,000 connections (asyncio client)",
        "4",
        "req/s",
        ideal=5000.0,
    ),
    Scenario(
        "5",
        "5. fan-out: three concurrent 100 ms awaits, 256 connections (wrk)",
        "light",
        "req/s",
        ideal=256 / 0.1,
    ),
    Scenario("6-upload", "6. 10 MiB upload, 4 connections (wrk)", "6-upload", "MiB/s"),
    Scenario(
        "6-download", "6. 100 MiB streamed download, 4 connections (wrk)", "6-download", "MiB/s"
    ),
    Scenario(
        "7-h2c",
        "7. HTTP/2 cleartext (h2c), sync view, plaintext (h2load -c 8 -m 16)",
        "7-h2c",
        "req/s",
        transport="h2c",
    ),
    Scenario(
        "7-h2c-async",
        "7. HTTP/2 cleartext (h2c), async def view, plaintext (h2load -c 8 -m 16)",
        "7-h2c",
        "req/s",
        transport="h2c",
    ),
    Scenario(
        "7-tls",
        "7. HTTP/2 TLS (ALPN h2), sync view, plaintext (h2load -c 8 -m 16)",
        "7-tls",
        "req/s",
        transport="tls",
    ),
    Scenario(
        "7-tls-async",
        "7. HTTP/2 TLS (ALPN h2), async def view, plaintext (h2load -c 8 -m 16)",
        "7-tls",
        "req/s",
        transport="tls",
    ),
    Scenario(
        "8",
        "8. SSE: 2,000 subscribers, one event a second (asyncio client)",
        "8",
        "events/s",
        ideal=2000.0,
    ),
    Scenario(
        "9",
        "9. RSS with 2,000 idle kept-alive connections (asyncio client)",
        "9",
        "KiB/conn",
        higher_is_better=False,
    ),
    Scenario(
        "10-echo",
        "10. WebSocket echo, 32-byte text messages, 64 connections (asyncio client)",
        "10",
        "msg/s",
    ),
    Scenario(
        "10-idle",
        "10. RSS with 2,000 idle WebSockets (asyncio client)",
        "10",
        "KiB/conn",
        higher_is_better=False,
    ),
]
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}


@dataclass
class Timing:
    warmup: float
    duration: float
    big_warmup: float  # ramp for thousands of connections
    big_duration: float
    transfer_duration: float
    # Scenarios 3 and 5: no request can complete in a run's first await, and a
    # connection completes a whole number of them, so a run of D seconds
    # measures at most ~(D - await)/D of the ideal whatever the server; at
    # 5 s that is a 1-2% bias, at 10 s half as much.
    await_duration: float
    # Scenario 7 has four lines on each of seven servers: short runs keep it to ~2 minutes.
    h2_warmup: float
    h2_duration: float


FULL = Timing(
    warmup=1.0,
    duration=5.0,
    big_warmup=3.0,
    big_duration=5.0,
    transfer_duration=4.0,
    await_duration=10.0,
    h2_warmup=0.5,
    h2_duration=2.0,
)
QUICK = Timing(
    warmup=1.0,
    duration=2.0,
    big_warmup=2.5,
    big_duration=3.0,
    transfer_duration=2.0,
    await_duration=4.0,
    h2_warmup=0.5,
    h2_duration=1.0,
)


@dataclass
class Result:
    row: str
    scenario: str
    status: str  # ok | skipped | failed | NO_H2
    reason: str = ""
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    cpu_us: float | None = None
    rss_mib: float | None = None
    metric: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- load generators --------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WrkResult:
    requests: int
    duration: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    error_detail: dict[str, int]
    bytes_per_s: float
    t0: float
    t1: float
    raw: str


def run_wrk(
    port: int,
    path: str,
    connections: int,
    duration: float,
    *,
    script: Path | None = None,
    timeout: str = "5s",
) -> WrkResult:
    argv = [
        "taskset",
        "-c",
        str(CLIENT_CPU),
        "wrk",
        "-t",
        str(min(2, connections)),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",  # wrk takes whole seconds
        "--latency",
        "--timeout",
        timeout,
    ]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://{HOST}:{port}{path}")
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    t1 = time.monotonic()
    out = proc.stdout
    if proc.returncode != 0 or "requests in" not in out:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-400:]} {proc.stderr[-400:]}")
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    assert match is not None
    requests = int(match.group(1))
    seconds = _ms(match.group(2) + match.group(3)) / 1000.0
    lat: dict[str, float] = {}
    for pct, value in re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M):
        lat[pct] = _ms(value)
    detail: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        for name, value in zip(
            ("connect", "read", "write", "timeout"), sock.groups(), strict=True
        ):
            detail[name] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        detail["non2xx"] = int(non2xx.group(1))
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    bps = float(transfer.group(1)) * _BYTES.get(transfer.group(2), 1) if transfer else 0.0
    return WrkResult(
        requests=requests,
        duration=seconds,
        p50_ms=lat.get("50") if requests else None,
        p99_ms=lat.get("99") if requests else None,
        errors=sum(detail.values()),
        error_detail={k: v for k, v in detail.items() if v},
        bytes_per_s=bps,
        t0=t0,
        t1=t1,
        raw=out,
    )


@dataclass
class H2loadResult:
    protocol: str | None  # "h2" or "h2c" as h2load reports it, None if nothing was negotiated
    done: int
    succeeded: int  # responses with a 2xx or 3xx status
    failed: int  # everything else, stream and connection errors included
    errored: int
    timeouts: int
    status: dict[str, int]  # "2xx" .. "5xx"
    duration: float
    p50_ms: float | None
    p99_ms: float | None
    t0: float
    t1: float
    raw: str
    hung: bool = False  # h2load never exited; the figures come from its per-request log
    starved: bool = False  # some connection completed no request in the measured phase
    unanswered: int = 0  # streams sent and never closed, not among h2load's failures
    answer_span: float | None = None  # seconds from the first request to the last response


def _percentile(values: Sequence[float], pct: float) -> float:
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


def _h2load_log(log_path: Path) -> list[tuple[int, int, int]]:
    """(status, start µs since the epoch, µs to the response's end) per request.

    Only the measured phase is logged; status -1 is a failed stream.
    """
    rows: list[tuple[int, int, int]] = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text().splitlines():
            cols = line.split("\t")
            if len(cols) >= 3:
                with contextlib.suppress(ValueError):
                    rows.append((int(cols[1]), int(cols[0]), int(cols[2])))
    return rows


def run_h2load(
    port: int, path: str, *, tls: bool, warmup: float, duration: float, log_path: Path
) -> H2loadResult:
    """One timed h2load run: 8 connections with 16 concurrent streams each.

    h2load's warm-up shares the measured run's connections, so the TLS
    handshakes stay out of the measurement and no queue of abandoned requests
    is left between the two. h2load prints no percentiles; its per-request
    log (``--log-file``, main phase only) gives p50/p99.

    When the run ends, h2load waits for every connection to wind down; a
    server that left some connections unserved (gunicorn's gevent worker
    does, here) can keep it waiting for ever, and h2load's own timeouts
    (-T, -N) either do not end that wait or abort h2load. So it gets a
    deadline, and past it the figures come from its log, which it has
    already written by then.
    """
    argv = [
        "taskset",
        "-c",
        str(CLIENT_CPU),
        "h2load",
        "-c",
        "8",
        "-m",
        "16",
        f"--warm-up-time={round(warmup * 1000)}ms",
        f"--duration={round(duration * 1000)}ms",
        f"--log-file={log_path}",
    ]
    if tls:
        # ALPN h2 only: without it, h2load falls back to HTTP/1.1 when the server
        # does not pick h2, and would report HTTP/1.1 numbers as HTTP/2 ones.
        argv.append("--npn-list=h2")
    argv.append(f"{'https' if tls else 'http'}://{HOST}:{port}{path}")
    with contextlib.suppress(FileNotFoundError):
        log_path.unlink()
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=warmup + duration + 4)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    ended = time.monotonic()
    t0 = started + warmup
    t1 = min(ended, t0 + duration)
    log_path.with_suffix(".out").write_text(out + err)
    log = _h2load_log(log_path)
    latencies = sorted(us / 1000.0 for code, _, us in log if code != -1)
    span = (
        (max(start + us for _, start, us in log) - min(start for _, start, _ in log)) / 1e6
        if log
        else None
    )
    protocol_match = re.search(r"^Application protocol: (\S+)", out, re.M)
    protocol = protocol_match.group(1) if protocol_match else None
    p50 = _percentile(latencies, 50) if latencies else None
    p99 = _percentile(latencies, 99) if latencies else None
    if hung:
        status: dict[str, int] = {}
        for code, _, _ in log:
            if 200 <= code < 600:
                status[f"{code // 100}xx"] = status.get(f"{code // 100}xx", 0) + 1
        good = status.get("2xx", 0) + status.get("3xx", 0)
        return H2loadResult(
            protocol=protocol,
            done=len(log),
            succeeded=good,
            failed=len(log) - good,
            errored=sum(1 for code, _, _ in log if code == -1),
            timeouts=0,
            status=status,
            duration=duration,
            p50_ms=p50,
            p99_ms=p99,
            t0=t0,
            t1=t1,
            raw=out,
            hung=True,
            answer_span=span,
        )
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if proc.returncode != 0 or counts is None:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {out[-400:]} {err[-400:]}")
    per_client = re.search(r"^req/s\s*:\s*([\d.]+)", out, re.M)
    codes = re.search(r"^status codes: (.*)$", out, re.M)
    status = {
        k: int(v) for v, k in re.findall(r"(\d+) ([2-5]xx)", codes.group(1) if codes else "")
    }
    return H2loadResult(
        protocol=protocol,
        done=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)),
        errored=int(counts.group(6)),
        timeouts=int(counts.group(7)),
        status=status,
        duration=duration,
        p50_ms=p50,
        p99_ms=p99,
        t0=t0,
        t1=t1,
        raw=out,
        starved=per_client is not None and float(per_client.group(1)) == 0.0,
        unanswered=int(counts.group(2)) - int(counts.group(3)),
        answer_span=span,
    )


def loadgen_argv(mode: str, port: int, path: str, connections: int, **options: float) -> list[str]:
    argv = [
        "taskset",
        "-c",
        str(CLIENT_CPU),
        str(VPY),
        str(BENCH / "loadgen.py"),
        mode,
        f"--port={port}",
        f"--path={path}",
        f"--connections={connections}",
    ]
    argv += [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    return argv


def run_loadgen(argv: list[str], limit: float) -> dict[str, Any]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr[-600:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- running one row -----------------------------------------------------------------------------


class Runner:
    def __init__(self, timing: Timing, port_base: int = 18000) -> None:
        self.timing = timing
        self.port = port_base
        self.logs = RESULTS / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._tls: TlsFiles | None = None

    def tls_files(self) -> TlsFiles:
        if self._tls is None:
            self._tls = make_tls()
        return self._tls

    def next_port(self) -> int:
        # A fresh port per server start: no TIME_WAIT left by the previous one.
        while True:
            self.port += 1
            if http_status(self.port, "/", timeout=0.2) is None:
                return self.port

    def server(
        self, row: Row, group: str, env: Mapping[str, str] | None = None, transport: str = ""
    ) -> Server:
        log = self.logs / f"{row.key}-{group}.log"
        if group in row.group_apps:
            row = row.with_app(row.group_apps[group])
        tls = None
        if transport:
            files = self.tls_files()
            if row.h2 is not None:
                row = row.with_args(row.h2(transport, files))
            if transport == "tls":
                tls = files.client_context()
        return Server(row, self.next_port(), log, env, transport=transport, tls=tls)

    # each returns the results of the group's scenarios
    def run_group(self, row: Row, group: str, scenarios: Sequence[Scenario]) -> list[Result]:
        try:
            server = self.server(row, group, transport=scenarios[0].transport)
        except (OSError, subprocess.CalledProcessError) as exc:
            return [
                Result(row.key, s.key, "failed", f"no TLS certificate (openssl): {exc}")
                for s in scenarios
            ]
        try:
            server.start()
        except Exception as exc:
            server.stop()
            return [
                Result(row.key, s.key, "failed", f"server did not start: {exc}") for s in scenarios
            ]
        results: list[Result] = []
        try:
            for scenario in scenarios:
                if not server.alive():
                    results.append(
                        Result(
                            row.key, scenario.key, "failed", f"server died: {server.log_tail()}"
                        )
                    )
                    continue
                print(f"  {row.key:16} {scenario.key:12}", end=" ", flush=True)
                backlog = self.settle(server)
                try:
                    result = self.run_scenario(row, scenario, server)
                except Exception as exc:  # a row that breaks says how, the run goes on
                    result = Result(row.key, scenario.key, "failed", str(exc)[:500])
                if backlog:
                    result.reason = f"{result.reason}; {backlog}" if result.reason else backlog
                if server.worker_changes:
                    result.extra["worker_restarts"] = server.worker_changes
                    note = (
                        f"worker process replaced {server.worker_changes}x (crash or timeout kill)"
                    )
                    result.reason = f"{result.reason}; {note}" if result.reason else note
                print(describe(result, scenario), flush=True)
                results.append(result)
        finally:
            server.stop()
        return results

    def settle(self, server: Server, limit: float = 40.0) -> str:
        """Wait until the server answers a probe again.

        wrk and the asyncio client leave requests in flight when they stop.
        A server with one thread (gunicorn sync, WsgiToAsgi) keeps working
        through them after the client has gone, so the next measurement would
        start behind a queue it did not create.
        """
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if server.answers(timeout=limit):
                waited = time.monotonic() - started
                return f"waited {waited:.0f}s for the previous load to drain" if waited > 2 else ""
            time.sleep(0.2)
        return f"server still busy with the previous scenario's requests after {limit:.0f}s"

    def run_scenario(self, row: Row, scenario: Scenario, server: Server) -> Result:
        t = self.timing
        port = server.port
        if scenario.key in ("1-plaintext", "1-json", "2", "3", "5"):
            path, conns = {
                "1-plaintext": ("/plaintext", 64),
                "1-json": ("/json", 64),
                "2": ("/async-plaintext", 64),
                "3": ("/await?ms=50", 256),
                "5": ("/fanout", 256),
            }[scenario.key]
            # A warm-up with few connections: enough to load every code path,
            # too few to leave a queue of abandoned requests that a server
            # with one thread would still be working through when we measure.
            run_wrk(port, path, 4, t.warmup)
            self.settle(server)
            duration = t.await_duration if scenario.key in ("3", "5") else t.duration
            return self.wrk_result(row, scenario, server, run_wrk(port, path, conns, duration))
        if scenario.transport:
            path = "/async-plaintext" if scenario.key.endswith("-async") else "/plaintext"
            h2 = run_h2load(
                port,
                path,
                tls=scenario.transport == "tls",
                warmup=t.h2_warmup,
                duration=t.h2_duration,
                log_path=self.logs / f"{row.key}-{scenario.key}.h2load.tsv",
            )
            return self.h2load_result(row, scenario, server, h2)
        if scenario.key == "6-upload":
            script = BENCH / "upload.lua"
            run_wrk(port, "/upload", 1, t.warmup, script=script, timeout="20s")
            wrk = run_wrk(port, "/upload", 4, t.transfer_duration, script=script, timeout="20s")
            result = self.wrk_result(row, scenario, server, wrk)
            result.metric = wrk.requests * 10 / wrk.duration
            return result
        if scenario.key == "6-download":
            run_wrk(port, "/download?mb=10", 1, t.warmup, timeout="30s")
            wrk = run_wrk(port, "/download?mb=100", 4, t.transfer_duration, timeout="30s")
            result = self.wrk_result(row, scenario, server, wrk)
            result.metric = wrk.bytes_per_s / 2**20
            return result
        if scenario.key == "4":
            return self.loadgen_result(
                row,
                scenario,
                server,
                loadgen_argv(
                    "load",
                    port,
                    "/await?ms=1000",
                    5000,
                    duration=t.big_duration,
                    warmup=t.big_warmup,
                    timeout=5.0,
                    connect_concurrency=1000,
                ),
                t.big_warmup + t.big_duration,
            )
        if scenario.key == "8":
            return self.loadgen_result(
                row,
                scenario,
                server,
                loadgen_argv(
                    "sse",
                    port,
                    f"{row.sse_path}?interval=1&n=60",
                    2000,
                    duration=t.big_duration,
                    warmup=t.big_warmup,
                    timeout=5.0,
                    connect_concurrency=500,
                ),
                t.big_warmup + t.big_duration,
            )
        if scenario.key == "9":
            return self.idle_result(row, scenario, server)
        if scenario.key == "10-echo":
            return self.loadgen_result(
                row,
                scenario,
                server,
                loadgen_argv(
                    "ws-echo",
                    port,
                    WS_PATH,
                    WS_ECHO_CONNS,
                    duration=t.duration,
                    warmup=t.warmup,
                    timeout=5.0,
                    size=32,
                ),
                t.warmup + t.duration,
            )
        if scenario.key == "10-idle":
            return self.idle_result(row, scenario, server, websocket=True)
        raise ValueError(scenario.key)

    def wrk_result(self, row: Row, scenario: Scenario, server: Server, wrk: WrkResult) -> Result:
        cpu, rss = server.window(wrk.t0, wrk.t1)
        # The headline counts good responses only: a server that answers 500
        # fast must not look fast.
        good = max(0, wrk.requests - wrk.error_detail.get("non2xx", 0))
        rps = good / wrk.duration if wrk.duration else 0.0
        result = Result(
            row.key,
            scenario.key,
            "ok",
            rps=rps,
            p50_ms=wrk.p50_ms,
            p99_ms=wrk.p99_ms,
            errors=wrk.errors,
            cpu_us=cpu * 1e6 / wrk.requests if cpu is not None and wrk.requests else None,
            rss_mib=rss / 1024 if rss else None,
            metric=rps,
            extra={
                "requests": wrk.requests,
                **({"error_detail": wrk.error_detail} if wrk.error_detail else {}),
            },
        )
        if scenario.ideal:
            result.extra["share_of_ideal"] = rps / scenario.ideal
        return result

    def h2load_result(
        self, row: Row, scenario: Scenario, server: Server, h2: H2loadResult
    ) -> Result:
        answered = sum(h2.status.values())
        if not answered:
            # Not a crash of the harness nor of the server: it accepted the
            # connections and spoke no HTTP/2 on them.
            if scenario.transport == "tls" and h2.protocol != "h2":
                why = "the TLS handshake did not select h2 over ALPN"
            else:
                why = "no response to any request sent after the HTTP/2 connection preface"
            return Result(
                row.key,
                scenario.key,
                NO_H2,
                f"{why} ({h2.failed} requests failed)" if h2.failed else why,
                extra={"protocol": h2.protocol},
            )
        cpu, rss = server.window(h2.t0, h2.t1)
        rps = h2.succeeded / h2.duration
        reason = ""
        if h2.hung:
            reason = (
                "h2load did not exit after the run (connections the server left unserved); "
                "figures from its per-request log"
            )
        elif h2.starved and h2.succeeded:
            reason = "at least one of the 8 connections got no response in the measured run"
        if h2.answer_span is not None and h2.answer_span < h2.duration / 2:
            # A server that stops answering mid-run shows only a low figure and
            # perhaps no errors at all; the note tells a stall from slowness.
            stall = (
                f"responses stopped {h2.answer_span * 1000:.0f} ms into the "
                f"{h2.duration:.1f} s run"
            )
            reason = f"{reason}; {stall}" if reason else stall
        detail = {
            "errored": h2.errored,
            "timeout": h2.timeouts,
            "unanswered": h2.unanswered,
            **{k: v for k, v in h2.status.items() if k[0] in "45"},
        }
        return Result(
            row.key,
            scenario.key,
            "ok",
            reason=reason,
            rps=rps,
            p50_ms=h2.p50_ms,
            p99_ms=h2.p99_ms,
            errors=h2.failed + h2.unanswered,
            cpu_us=cpu * 1e6 / h2.done if cpu is not None and h2.done else None,
            rss_mib=rss / 1024 if rss else None,
            metric=rps,
            extra={
                "requests": h2.done,
                "protocol": h2.protocol,
                **(
                    {"error_detail": {k: v for k, v in detail.items() if v}}
                    if any(detail.values())
                    else {}
                ),
            },
        )

    def loadgen_result(
        self, row: Row, scenario: Scenario, server: Server, argv: list[str], span: float
    ) -> Result:
        started = time.monotonic()
        data = run_loadgen(argv, limit=span + 90)
        window_start = started + (argv_value(argv, "warmup") or 0.0)
        window_end = window_start + (argv_value(argv, "duration") or 0.0)
        # loadgen's window starts when its process does; ours is a little
        # earlier, which only makes the CPU window a little wider.
        cpu, rss = server.window(window_start, window_end)
        requests = int(data.get("requests", 0))
        duration = float(data.get("duration", 0.0)) or 1.0
        if data.get("mode") == "ws-echo":
            # Round trips; status errors are refused handshakes, not messages.
            if not requests:
                raise RuntimeError(ws_failure(data))
            rps = max(0, requests - int(data.get("mismatches", 0))) / duration
        else:
            rps = max(0, requests - int(data.get("status_errors", 0))) / duration
        result = Result(
            row.key,
            scenario.key,
            "ok",
            rps=rps,
            p50_ms=data.get("p50_ms", data.get("gap_p50_ms")),
            p99_ms=data.get("p99_ms", data.get("gap_p99_ms")),
            errors=int(data.get("errors", 0)),
            cpu_us=cpu * 1e6 / requests if cpu is not None and requests else None,
            rss_mib=rss / 1024 if rss else None,
            metric=rps,
            extra={
                k: data[k]
                for k in (
                    "requests",
                    "connect_errors",
                    "read_errors",
                    "status_errors",
                    "timeouts",
                    "reconnects",
                    "served_connections",
                    "client_cpu_share",
                    "mismatches",
                    "protocol_errors",
                    "closed_by_server",
                    "closes_unanswered",
                    "refused",
                )
                if k in data
            },
        )
        if float(data.get("client_cpu_share", 0.0)) > 0.85:
            result.reason = "the load generator was CPU-bound: a lower bound for this row"
        served = int(data.get("served_connections", 0))
        if data.get("mode") == "ws-echo" and served < int(data.get("connections", 0)):
            unserved = (
                f"only {served} of {data['connections']} connections served "
                f"(the others' handshakes waited for the server)"
            )
            result.reason = f"{result.reason}; {unserved}" if result.reason else unserved

        if scenario.ideal:
            result.extra["share_of_ideal"] = rps / scenario.ideal
        return result

    def idle_result(
        self, row: Row, scenario: Scenario, server: Server, *, websocket: bool = False
    ) -> Result:
        """Worker RSS per idle connection: 2,000 kept-alive HTTP/1.1 connections
        that each made one request (scenario 9), or 2,000 WebSockets that each
        completed the handshake and one echo (scenario 10-idle)."""
        run_wrk(server.port, "/plaintext", 16, self.timing.warmup)
        time.sleep(1.0)
        base_t = time.monotonic()
        time.sleep(0.6)
        base = server.rss_median(base_t, time.monotonic())
        timeout = 5.0 if websocket else 10.0
        argv = loadgen_argv(
            "ws-idle" if websocket else "idle",
            server.port,
            WS_PATH if websocket else "/plaintext",
            WS_IDLE_CONNS if websocket else 2000,
            timeout=timeout,
            hold=60.0,
            connect_concurrency=500,
        )
        err_path = self.logs / f"{row.key}-loadgen-{'ws-' if websocket else ''}idle.err"
        with err_path.open("w") as err_file:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file, text=True
            )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready_line = proc.stdout.readline()
            if not ready_line.startswith("{"):
                raise RuntimeError(f"loadgen idle: {ready_line!r} {err_path.read_text()[-400:]}")
            time.sleep(1.0)
            hold_t = time.monotonic()
            time.sleep(1.0)
            held = server.rss_median(hold_t, time.monotonic())
            proc.stdin.write("done\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"loadgen idle failed: {err_path.read_text()[-400:]}")
        data = json.loads(lines[-1])
        opened = int(data.get("opened", 0))
        still = int(data.get("still_open", 0))
        if websocket and not opened:
            raise RuntimeError(ws_failure(data))
        if base is None or held is None or not opened:
            raise RuntimeError(f"no measurement (opened {opened}, base {base}, held {held})")
        per_conn = (held - base) / opened
        notes = []
        if still < opened:
            notes.append(
                f"{opened - still} of {opened} idle WebSockets did not echo after the hold"
                if websocket
                else f"server closed {opened - still} of {opened} idle connections during the hold"
            )
        if opened < 2000:
            if websocket:
                note = f"only {opened} of 2,000 WebSockets opened and echoed"
                if data.get("timeouts"):
                    note += f" ({data['timeouts']} waited over {timeout:.0f} s)"
            else:
                note = f"only {opened} of 2,000 connections opened and answered"
            notes.append(note)
        reason = "; ".join(notes)
        return Result(
            row.key,
            scenario.key,
            "ok",
            reason=reason,
            p50_ms=data.get("p50_ms"),
            p99_ms=data.get("p99_ms"),
            errors=int(data.get("errors", 0)),
            rss_mib=held / 1024,
            metric=per_conn,
            extra={
                "opened": opened,
                "still_open": still,
                "rss_base_mib": base / 1024,
                "ramp_s": data.get("ramp_s"),
            },
        )


def ws_failure(data: Mapping[str, Any]) -> str:
    """Why a WebSocket run got no message through, from loadgen's report."""
    if data.get("refused"):
        return f"WebSocket handshake refused: {data['refused']}"
    counts = {
        k.replace("_", " "): data[k]
        for k in ("connect_errors", "read_errors", "timeouts", "protocol_errors")
        if data.get(k)
    }
    return "no WebSocket echo: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "-")


def argv_value(argv: Sequence[str], name: str) -> float | None:
    for item in argv:
        if item.startswith(f"--{name}="):
            return float(item.split("=", 1)[1])
    return None


def describe(result: Result, scenario: Scenario) -> str:
    if result.status != "ok":
        return f"{result.status}: {result.reason[:160]}"
    parts = [f"{result.metric:,.1f} {scenario.metric}" if result.metric is not None else "-"]
    if result.p50_ms is not None:
        parts.append(f"p50 {result.p50_ms:.1f}ms p99 {(result.p99_ms or 0):.1f}ms")
    parts.append(f"err {result.errors}")
    if result.cpu_us is not None:
        per = "msg" if scenario.metric == "msg/s" else "req"
        parts.append(f"{result.cpu_us:.0f}us/{per}")
    if result.rss_mib is not None:
        parts.append(f"rss {result.rss_mib:.0f}MiB")
    if "share_of_ideal" in result.extra:
        parts.append(f"{result.extra['share_of_ideal']:.1%} of ideal")
    if result.reason:
        parts.append(f"({result.reason})")
    return "  ".join(parts)


# -- profiling our worker ------------------------------------------------------------


@dataclass
class ProfileRun:
    scenario: str
    path: str
    rps_profiled: float
    pstats_file: str
    pyspy_file: str | None
    rps_pyspy: float | None


def profile_ours(runner: Runner, timing: Timing) -> list[ProfileRun]:
    row = next(r for r in ROWS if r.key == OURS)
    prof_row = Row(
        row.key,
        row.label,
        lambda port: [
            *row.command(port)[:-1],
            f"--config={BENCH / 'profile_conf.py'}",
            row.command(port)[-1],
        ],
    )
    runs: list[ProfileRun] = []
    for key, path in (("1-plaintext", "/plaintext"), ("2", "/async-plaintext")):
        out = RESULTS / f"profile-{key}.pstats"
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        server = runner.server(prof_row, f"profile-{key}", {"BENCH_PROFILE_OUT": str(out)})
        print(f"  profile (cProfile) {key}", end=" ", flush=True)
        try:
            server.start()
            run_wrk(server.port, path, 64, timing.warmup)
            wrk = run_wrk(server.port, path, 64, timing.duration)
        finally:
            server.stop(grace=15.0)
        print(f"{wrk.requests / wrk.duration:,.0f} req/s under cProfile", flush=True)
        pyspy_file, rps_pyspy = pyspy_profile(runner, row, key, path, timing)
        runs.append(
            ProfileRun(key, path, wrk.requests / wrk.duration, str(out), pyspy_file, rps_pyspy)
        )
    return runs


def pyspy_profile(
    runner: Runner, row: Row, key: str, path: str, timing: Timing
) -> tuple[str | None, float | None]:
    pyspy = VBIN / "py-spy"
    if not pyspy.exists():
        return None, None
    out = RESULTS / f"pyspy-{key}.txt"
    server = runner.server(row, f"pyspy-{key}")
    try:
        server.start()
        run_wrk(server.port, path, 64, timing.warmup)
        worker = server.worker_pids[0]
        argv = [
            "taskset",
            "-c",
            str(CLIENT_CPU),
            str(pyspy),
            "record",
            "--pid",
            str(worker),
            "--duration",
            str(int(timing.duration)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--gil",  # only the thread holding the GIL: where Python's CPU goes
            "--function",  # aggregate by function, not by line
            "--output",
            str(out),
        ]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wrk = run_wrk(server.port, path, 64, timing.duration)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
            return None, None
        if spy.returncode != 0 or not out.exists():
            print(f"  py-spy failed: {err[-300:]}", flush=True)
            return None, None
        return str(out), wrk.requests / wrk.duration
    except Exception as exc:
        print(f"  py-spy skipped: {exc}", flush=True)
        return None, None
    finally:
        server.stop()


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(REPO) + "/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _package(filename: str) -> str:
    if filename == "~":
        return "builtins (C functions)"
    short = _short(filename)
    top = short.split("/", 1)[0]
    if top.endswith(".py"):
        top = top[:-3]
    return top or short


def _profile_tables(run: ProfileRun, top: int = 25) -> list[str]:
    stats = pstats.Stats(run.pstats_file)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0

    def name(key: tuple[str, int, str]) -> str:
        filename, line, func = key
        if filename == "~":
            return f"`{func}`"
        return f"`{_short(filename)}:{line}({func})`"

    lines = [
        f"Profiled CPU time (all threads of the worker): {total:.2f} s; "
        f"{run.rps_profiled:,.0f} req/s under cProfile.",
        "",
        f"Top {top} by cumulative time (share of all profiled CPU time):",
        "",
        "| cum % | self % | calls | function |",
        "|---:|---:|---:|---|",
    ]
    by_cum = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)
    for key, (_cc, nc, tt, ct, _callers) in by_cum[:top]:
        lines.append(f"| {100 * ct / total:.1f} | {100 * tt / total:.1f} | {nc} | {name(key)} |")
    lines += [
        "",
        f"Top {top} by self time:",
        "",
        "| self % | cum % | calls | function |",
        "|---:|---:|---:|---|",
    ]
    by_self = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    for key, (_cc, nc, tt, ct, _callers) in by_self[:top]:
        lines.append(f"| {100 * tt / total:.1f} | {100 * ct / total:.1f} | {nc} | {name(key)} |")
    packages: dict[str, float] = {}
    for key, value in raw.items():
        packages[_package(key[0])] = packages.get(_package(key[0]), 0.0) + value[2]
    lines += ["", "Self time by package:", "", "| self % | package |", "|---:|---|"]
    for pkg, tt in sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:15]:
        lines.append(f"| {100 * tt / total:.1f} | {pkg} |")
    return lines


_BORING = re.compile(
    r"gunicorn/(arbiter|app/)|<module>|threading\.py|init_process|workers/base\.py"
    r"|^(AsyncioWorker|UVLoopWorker)\.run |^_worker \(concurrent|^Thread\."
)


def _pyspy_tables(run: ProfileRun, seconds: float, top: int = 25) -> list[str]:
    assert run.pyspy_file is not None
    self_counts: dict[str, int] = {}
    cum_counts: dict[str, int] = {}
    total = 0
    for line in Path(run.pyspy_file).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            cum_counts[frame] = cum_counts.get(frame, 0) + count
    if not total:
        return ["(py-spy recorded no samples)"]
    readable = re.compile(r"[\x20-\x7e]+")
    for table in (self_counts, cum_counts):
        for frame in [f for f in table if not readable.fullmatch(f)]:
            table["(a frame py-spy could not read)"] = table.get(
                "(a frame py-spy could not read)", 0
            ) + table.pop(frame)

    def clean(frame: str) -> str:
        return f"`{_short(frame)}`"

    lines = [
        f"{total} samples of the thread holding the GIL at 250 Hz over {seconds:.0f} s: the GIL "
        f"was held in {total / (250 * seconds):.0%} of them (the rest of the time the worker's "
        "single CPU goes to system calls, thread hand-offs and waiting); "
        f"{run.rps_pyspy or 0:,.0f} req/s while sampled (py-spy barely slows the worker).",
        "",
        f"Top {top} by inclusive samples (function anywhere on the stack; start-up "
        "frames such as the arbiter and the worker's run() left out):",
        "",
        "| total % | self % | frame |",
        "|---:|---:|---|",
    ]
    # Start-up frames sit under every sample and say nothing: left out here.
    inclusive = [(f, c) for f, c in cum_counts.items() if not _BORING.search(f)]
    for frame, count in sorted(inclusive, key=lambda kv: kv[1], reverse=True)[:top]:
        lines.append(
            f"| {100 * count / total:.1f} | {100 * self_counts.get(frame, 0) / total:.1f} "
            f"| {clean(frame)} |"
        )
    lines += [
        "",
        f"Top {top} by self samples (the frame on top of the stack):",
        "",
        "| self % | frame |",
        "|---:|---|",
    ]
    for frame, count in sorted(self_counts.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        lines.append(f"| {100 * count / total:.1f} | {clean(frame)} |")
    packages: dict[str, int] = {}
    for frame, count in self_counts.items():
        match = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
        pkg = _package(match.group(1)) if match else "?"
        if not re.fullmatch(r"[\w.<> -]+", pkg, re.ASCII) or pkg.startswith("wsgi.errors"):
            pkg = "(frames py-spy could not read)"
        packages[pkg] = packages.get(pkg, 0) + count
    lines += ["", "Self samples by package:", "", "| self % | package |", "|---:|---|"]
    for pkg, count in sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:15]:
        lines.append(f"| {100 * count / total:.1f} | {pkg} |")
    return lines


def write_profile_md(
    runs: Sequence[ProfileRun],
    seconds: float,
    command: str,
    machine: Mapping[str, str],
    ours: Mapping[str, float],
) -> None:
    lines = [
        "# Where our worker spends its CPU (scenarios 1 and 2)",
        "",
        "Generated by `bench/run.py`; do not edit by hand (the next run overwrites it).",
        "",
        f"Command: `{command}` · machine: {machine['cpu']}, {machine['cores']} cores · "
        f"Python {machine['python']} · {machine['date']}",
        "",
        "One `UVLoopWorker` process (pinned to CPU 0) under `wrk -c 64` (CPU 1),",
        "profiled two ways:",
        "",
        "* **cProfile** through `bench/profile_conf.py` (a gunicorn config file:",
        "  `post_worker_init` starts a profiler in the loop thread and in every executor",
        "  thread, `worker_exit` writes the merged stats; enabled by the `BENCH_PROFILE_OUT`",
        "  environment variable). Timer: per-thread CPU time, so idle waits are excluded.",
        "  Deterministic profiling inflates call-heavy code; read shares, not times.",
        "* **py-spy** (`py-spy record --nonblocking --threads`, idle frames dropped):",
        "  sampled stacks with little distortion, the better guide to shares; cProfile",
        "  gives call counts.",
        "",
    ]
    for run in runs:
        title = SCENARIO_BY_KEY[run.scenario].title
        unprofiled = ours.get(run.scenario)
        lines += [f"## Scenario {title} — `GET {run.path}`", ""]
        if unprofiled:
            lines += [f"Unprofiled in the same run: {unprofiled:,.0f} req/s.", ""]
        if run.pyspy_file:
            lines += ["### py-spy", "", *_pyspy_tables(run, seconds), ""]
        lines += ["### cProfile", "", *_profile_tables(run), ""]
    PROFILE_MD.write_text("\n".join(lines))


# -- reports ----------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"^Model name:\s+(.*)$", out, re.M)
        cpu = match.group(1).strip() if match else cpu
    versions = {}
    from importlib import metadata

    for name in (
        "gunicorn",
        "gevent",
        "flask",
        "werkzeug",
        "asgiref",
        "a2wsgi",
        "uvicorn",
        "uvicorn-worker",
        "httptools",
        "uvloop",
        "granian",
        "hypercorn",
        "quart",
        "h11",
        "h2",
        "flask_async_worker",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    try:
        wrk = (
            subprocess.run(["wrk", "-v"], capture_output=True, text=True)
            .stdout.split("[")[0]
            .strip()
        )
    except OSError:
        wrk = "wrk"
    try:
        h2load = subprocess.run(
            ["h2load", "--version"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        h2load = "h2load"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "wrk": wrk,
        "h2load": h2load,
        "project": project_revision(),
    }


def project_revision() -> str:
    """The commit the run measured, and whether the work tree differed from it."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "flask_async_worker",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha} + uncommitted changes to flask_async_worker/" if dirty else sha


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}"


def ratio_cell(result: Result | None, ours: Result | None) -> str:
    if result is None:
        return ""
    if result.status != "ok":
        return result.status
    if ours is None or ours.metric in (None, 0) or result.metric is None:
        return DASH
    ratio = result.metric / ours.metric
    return f"{ratio:.3f}{TIMES}" if ratio < 0.1 else f"{ratio:.2f}{TIMES}"


def headline(result: Result | None, scenario: Scenario) -> str:
    if result is None:
        return ""
    if result.status != "ok":
        return result.status
    digits = 1 if scenario.metric in ("MiB/s", "KiB/conn") else 0
    text = fmt(result.metric, digits)
    if "share_of_ideal" in result.extra:
        text += f" ({result.extra['share_of_ideal']:.0%})"
    return text


def rst_table(header: Sequence[str], rows: Sequence[Sequence[str]], widths: str = "") -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        first = True
        for cell in row:
            prefix = "   * - " if first else "     - "
            lines.append(prefix + (cell.replace("\n", " ") if cell else ".."))
            first = False
    lines.append("")
    return lines


def check_floors(results: Mapping[tuple[str, str], Result]) -> list[str]:
    def metric(row: str, scenario: str) -> float | None:
        r = results.get((row, scenario))
        return r.metric if r is not None and r.status == "ok" else None

    def share(row: str, scenario: str) -> float | None:
        r = results.get((row, scenario))
        return r.extra.get("share_of_ideal") if r is not None and r.status == "ok" else None

    out: list[str] = []

    def line(
        text: str, value: float | None, floor: float, fmt_value: Callable[[float], str]
    ) -> None:
        if value is None:
            out.append(f"* {text}: not measured")
        else:
            verdict = "met" if value >= floor else "**not met**"
            out.append(f"* {text}: {fmt_value(value)} — {verdict}")

    ours1 = metric(OURS, "1-plaintext")
    gth = metric("gthread", "1-plaintext")
    gran = metric("granian", "1-plaintext")
    times = ("{:.2f}" + TIMES).format
    pct = "{:.1%}".format
    line(
        f"Scenario 1: ≥ 2.0{TIMES} gunicorn gthread",
        ours1 / gth if ours1 and gth else None,
        2.0,
        times,
    )
    line(f"Scenario 1: ≥ 1.0{TIMES} Granian", ours1 / gran if ours1 and gran else None, 1.0, times)
    ours2 = metric(OURS, "2")
    line(
        f"Scenario 2: ≥ 1.3{TIMES} Granian's scenario-1 figure",
        ours2 / gran if ours2 and gran else None,
        1.3,
        times,
    )
    line("Scenario 3: ≥ 97% of the ideal", share(OURS, "3"), 0.97, pct)
    line("Scenario 4: ≥ 90% of the ideal", share(OURS, "4"), 0.90, pct)
    for key, name in (("7-h2c", "cleartext"), ("7-tls", "TLS")):
        text = f"Scenario 7, {name}: ≥ 2{TIMES} gunicorn's best HTTP/2 row"
        measured = [(rps, g) for g in GUNICORN_H2_ROWS if (rps := metric(g, key))]
        best_rps, best_row = max(measured, default=(None, ""))
        if best_rps:
            label = next(r.label for r in ROWS if r.key == best_row)
            text += f", {label} at {best_rps:,.0f} req/s"
        ours7 = results.get((OURS, key))
        if ours7 is not None and ours7.status == NO_H2:
            out.append(f"* {text}: ours gave {NO_H2} — **not met**")
            continue
        ours_rps = metric(OURS, key)
        line(text, ours_rps / best_rps if ours_rps and best_rps else None, 2.0, times)
    r9 = results.get((OURS, "9"))
    if r9 is not None and r9.status == "ok" and r9.metric is not None:
        verdict = "met" if r9.metric <= 3.0 else "**not met**"
        out.append(f"* Scenario 9: ≤ 3 KiB per idle connection: {r9.metric:.1f} KiB — {verdict}")
    else:
        out.append("* Scenario 9: ≤ 3 KiB per idle connection: not measured")
    return out


def write_rst(
    results: Mapping[tuple[str, str], Result],
    rows: Sequence[Row],
    command: str,
    machine: Mapping[str, str],
    quick: bool,
) -> None:
    scenarios = SCENARIOS
    lines = [
        "Benchmarks",
        "==========",
        "",
        ".. This page is generated by bench/run.py; edit the harness, not the page.",
        "",
        "Every way of serving a Flask app that the project compares itself with, on the",
        "same app (``bench/apps/flask_app.py``; the Quart rows serve the same routes from",
        "``bench/apps/quart_app.py``), one worker process each, pinned to one CPU with the",
        "load generator on the other. The machine is shared and noisy: compare the",
        "**ratios to ours** within this one run, not the absolute numbers across runs.",
        "",
        "Reproduce with::",
        "",
        f"    {command}",
        "",
        "(or ``make bench``; ``python3 bench/run.py --help`` lists the options).",
        "",
        f"* Machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}"
        f"{' — quick run (short durations)' if quick else ''}",
        f"* Python {machine['python']}; run on {machine['date']}",
        f"* Load: {machine['wrk']}, {machine.get('h2load', 'h2load')} and "
        "``bench/loadgen.py`` (asyncio + uvloop)",
        f"* Versions: {machine['versions']}",
        f"* flask_async_worker at commit {machine.get('project', 'unknown')}",
        "",
        ".. image:: _static/benchmarks.png",
        "   :alt: headline metric per scenario and server, ours highlighted",
        "",
        "Ratios to ours",
        "--------------",
        "",
        "Each cell is the row's headline number divided by ours (``UVLoopWorker``) in",
        f"the same run: req/s for scenarios 1{DASH}5 and 7, MiB/s for 6, events/s for 8,",
        "WebSocket round trips per second for 10-echo (higher is better), KiB of worker",
        "RSS per idle connection for 9 and per idle WebSocket for 10-idle (lower is better).",
        "",
    ]
    ours = {s.key: results.get((OURS, s.key)) for s in scenarios}
    measured = [s for s in scenarios if not s.skip_all]
    header = ["server", *[s.key for s in measured]]
    table = [
        [row.label, *[ratio_cell(results.get((row.key, s.key)), ours[s.key]) for s in measured]]
        for row in rows
    ]
    lines += rst_table(header, table)
    lines += [
        "Headline numbers",
        "----------------",
        "",
        "Share of the ideal in parentheses where there is one (scenario 3: 256 / 0.05 s;",
        "4: 5,000 / 1 s; 5: 256 / 0.1 s; 8: 2,000 events/s).",
        "",
    ]
    header = ["server", *[f"{s.key} ({s.metric})" for s in measured]]
    table = [
        [row.label, *[headline(results.get((row.key, s.key)), s) for s in measured]]
        for row in rows
    ]
    lines += rst_table(header, table)
    lines += [
        "Targets for our worker",
        "-------------------------------",
        "",
        *check_floors(results),
        "",
    ]
    lines += ["Scenarios", "---------", ""]
    for scenario in scenarios:
        lines += [scenario.title, "~" * len(scenario.title), ""]
        if scenario.skip_all:
            reasons = [f"* {row.label}: {skip_reason(row, scenario)}" for row in rows]
            lines += [*reasons, ""]
            continue
        idle_table = scenario.key in ("9", "10-idle")
        if idle_table:
            header = [
                "server",
                "KiB/conn",
                "ratio",
                "RSS base MiB",
                "RSS held MiB",
                "open/held",
                "errors",
                "notes",
            ]
        else:
            header = [
                "server",
                scenario.metric,
                "ratio",
                "p50 ms",
                "p99 ms",
                "errors",
                "CPU µs/msg" if scenario.metric == "msg/s" else "CPU µs/req",
                "RSS MiB",
                "notes",
            ]
        table = []
        for row in rows:
            r = results.get((row.key, scenario.key))
            if r is None:
                continue
            if r.status != "ok":
                table.append([row.label, r.status, *[""] * (len(header) - 3), r.reason])
                continue
            notes = [r.reason] if r.reason else []
            if "error_detail" in r.extra:
                notes.append(", ".join(f"{k} {v}" for k, v in r.extra["error_detail"].items()))
            for k in (
                "connect_errors",
                "read_errors",
                "status_errors",
                "timeouts",
                "mismatches",
                "protocol_errors",
                "closed_by_server",
                "closes_unanswered",
            ):
                if r.extra.get(k):
                    notes.append(f"{k.replace('_', ' ')} {r.extra[k]}")
            if "served_connections" in r.extra and scenario.key in ("4", "8"):
                notes.append(f"{r.extra['served_connections']} connections served")
            if "share_of_ideal" in r.extra:
                notes.insert(0, f"{r.extra['share_of_ideal']:.1%} of ideal")
            if idle_table:
                table.append(
                    [
                        row.label,
                        fmt(r.metric, 2),
                        ratio_cell(r, ours[scenario.key]),
                        fmt(r.extra.get("rss_base_mib"), 1),
                        fmt(r.rss_mib, 1),
                        f"{r.extra.get('opened')}/{r.extra.get('still_open')}",
                        str(r.errors),
                        "; ".join(notes),
                    ]
                )
            else:
                table.append(
                    [
                        row.label,
                        fmt(r.metric, 1 if scenario.metric == "MiB/s" else 0),
                        ratio_cell(r, ours[scenario.key]),
                        fmt(r.p50_ms, 1),
                        fmt(r.p99_ms, 1),
                        str(r.errors),
                        fmt(r.cpu_us),
                        fmt(r.rss_mib, 1),
                        "; ".join(notes),
                    ]
                )
        lines += rst_table(header, table)
        if scenario.key == "8":
            lines += [
                "Latency columns here are the gaps between two events on one",
                "subscription (ideal: 1,000 ms). WSGI rows stream from a sync generator",
                "(``/sse``), which holds a thread per subscriber; our rows use the async",
                "generator route (``/sse-async``).",
                "",
            ]
        if scenario.key == "10-echo":
            lines += [
                "Every row serves ``/ws/echo`` from its own WebSocket support: ours with the",
                "worker's ``Sock`` and an ``async def`` handler; gunicorn gthread and gevent",
                "with flask-sock (simple-websocket) and a sync handler, which holds a thread",
                "(gthread: 32 in all) or a greenlet per open WebSocket; the Quart rows with",
                "``@app.websocket`` (uvicorn on the ``websockets`` library's sans-I/O",
                "protocol, Hypercorn on wsproto). Latency is one round trip; a connection",
                "whose handshake waits for a free thread shows as a connection not served.",
                "",
            ]
    lines += [
        "How it is measured",
        "------------------",
        "",
        "* Rows: gunicorn ``sync``, ``gthread --threads 32``, ``gevent``; gunicorn",
        "  ``-k asgi`` serving ``asgiref.wsgi.WsgiToAsgi(app)``;",
        "  ``uvicorn_worker.UvicornWorker`` serving ``a2wsgi.WSGIMiddleware(app)``",
        "  (10 threads) and Quart; Granian ``--interface wsgi`` (its defaults: 512",
        "  blocking threads); Hypercorn (uvloop) + Quart; ours, ``UVLoopWorker`` and",
        "  ``AsyncioWorker`` (32 executor threads).",
        "  The gunicorn rows share ``--keep-alive 75 --worker-connections 10000 --backlog 2048``;",
        "  Hypercorn gets the same backlog and keep-alive (``bench/hypercorn_conf.py``).",
        "* One worker process per server, pinned to CPU 0 (``taskset``); wrk (``-t 2``), the",
        "  asyncio client and the harness run on CPU 1. A warm-up run precedes every measurement.",
        f"* Measured wrk runs last {FULL.duration:.0f} s, those of scenarios 3 and 5"
        f" {FULL.await_duration:.0f} s: no",
        "  request can complete within a run's first await and a connection completes a whole",
        "  number of them, so a run measures at most about (duration - await) / duration of the",
        "  ideal whatever the server; the longer run halves that bias (quick runs are shorter).",
        "* CPU µs/req: utime+stime of the server's processes (/proc/<pid>/stat) over the measured",
        "  window, divided by the requests completed in it. RSS: the worker's peak in the window.",
        "* Errors: wrk's socket errors (connect, read, write, timeout > 5 s) plus",
        "  non-2xx responses; for the asyncio client, failed connects, dropped requests,",
        "  timeouts (> 5 s) and non-2xx.",
        "* Scenario 7: ``h2load -c 8 -m 16`` (8 connections, 16 concurrent streams each),",
        "  a warm-up on the same connections, then the measured run; p50/p99 from h2load's",
        "  per-request log; errors are h2load's failed requests (non-2xx/3xx included) plus",
        "  streams the server never answered. Cleartext is prior-knowledge h2c. TLS uses a",
        "  self-signed ECDSA P-256 certificate made by ``openssl`` at run time, and h2load",
        "  offers only ``h2`` over ALPN, so a server that does not select h2 shows as such",
        "  instead of being measured on HTTP/1.1. The gunicorn rows and ours get the same",
        "  flags: ``--http-protocols h2,h1`` plus ``--http2-cleartext prior-knowledge``",
        "  (cleartext) or ``--certfile``/``--keyfile`` (TLS); Granian keeps its default",
        "  ``--http auto`` and gets ``--ssl-certificate``/``--ssl-keyfile``; Hypercorn",
        "  ``--certfile``/``--keyfile``. gunicorn's sync worker and uvicorn have no HTTP/2.",
        "* Scenario 9: worker RSS held with 2,000 open connections that each made one",
        "  request, minus the RSS before they were opened, divided by the connections.",
        "* Scenario 10: ``bench/loadgen.py``'s own WebSocket client (RFC 6455 text frames,",
        "  no compression offered, each frame masked). 10-echo: 64 connections, each",
        "  sending a 32-byte text message as soon as the echo of the previous one is",
        "  read; msg/s counts round trips in the measured window, CPU µs/msg divides the",
        "  server's CPU by them; every connection ends with a close handshake. 10-idle:",
        "  2,000 WebSockets that each complete the handshake and one echo (5 s timeout",
        "  each), then idle; KiB/conn as in scenario 9; after the hold each one must echo",
        "  once more to count as still open.",
        "",
    ]
    DOCS_RST.parent.mkdir(parents=True, exist_ok=True)
    DOCS_RST.write_text("\n".join(lines))


def write_plot(
    results: Mapping[tuple[str, str], Result], rows: Sequence[Row], machine: Mapping[str, str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in SCENARIOS if not s.skip_all]
    cols = 4
    nrows = (len(scenarios) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(20, 4.2 * nrows))
    flat = list(axes.flat)
    labels = [row.label for row in rows]
    for ax, scenario in zip(flat, scenarios, strict=False):
        values: list[float] = []
        colors: list[str] = []
        texts: list[str] = []
        for row in rows:
            r = results.get((row.key, scenario.key))
            ok = r is not None and r.status == "ok" and r.metric is not None
            values.append(r.metric if ok and r is not None and r.metric is not None else 0.0)
            colors.append("#d62728" if row.ours else "#1f77b4")
            texts.append("" if ok else (r.status if r is not None else "n/a"))
            if ok and r is not None:
                texts[-1] = partial_label(r, scenario)
        positions = list(range(len(rows)))
        ax.barh(positions, values, color=colors)
        ax.set_yticks(positions)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(
            re.sub(r" \((wrk|asyncio client|h2load[^)]*)\)$", "", scenario.title), fontsize=9
        )
        better = "higher is better" if scenario.higher_is_better else "lower is better"
        ax.set_xlabel(f"{scenario.metric} ({better})", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        if scenario.ideal:
            ax.axvline(scenario.ideal, color="gray", linestyle="--", linewidth=1)
        top = max(values) if any(values) else 1.0
        for pos, (value, text) in enumerate(zip(values, texts, strict=True)):
            label = text or (f"{value:,.1f}" if value < 100 else f"{value:,.0f}")
            ax.text(value + top * 0.01, pos, label, va="center", fontsize=7)
        partial = any(t and v for t, v in zip(texts, values, strict=True))  # a long bar label
        ax.set_xlim(0, max(top, scenario.ideal or 0.0) * (1.4 if partial else 1.18))
    for ax in flat[len(scenarios) :]:
        ax.axis("off")
    fig.suptitle(
        f"flask_async_worker vs alternatives — one worker each; {machine['cpu']}, "
        f"{machine['cores']} cores, Python {machine['python']}, {machine['date']}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG, dpi=80)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------


def partial_label(result: Result, scenario: Scenario) -> str:
    """A bar's label when the row served only part of scenario 10's connections."""
    value = f"{result.metric:,.1f}" if (result.metric or 0) < 100 else f"{result.metric:,.0f}"
    if scenario.key == "10-echo":
        served = result.extra.get("served_connections", WS_ECHO_CONNS)
        if served < WS_ECHO_CONNS:
            return f"{value} ({served}/{WS_ECHO_CONNS} served)"
    if scenario.key == "10-idle":
        opened = result.extra.get("opened", WS_IDLE_CONNS)
        if opened < WS_IDLE_CONNS:
            return f"{value} ({opened:,} open)"
    return ""


def select(only: str | None) -> tuple[list[Row], list[Scenario]]:
    if not only:
        return list(ROWS), list(SCENARIOS)
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    row_keys = {r.key for r in ROWS}
    rows = [r for r in ROWS if r.key in tokens]
    scenarios = [s for s in SCENARIOS if s.key in tokens or s.key.split("-")[0] in tokens]
    unknown = [
        t
        for t in tokens
        if t not in row_keys and not any(t in (s.key, s.key.split("-")[0]) for s in SCENARIOS)
    ]
    if unknown:
        raise SystemExit(
            f"--only: unknown {unknown}; rows: {sorted(row_keys)}; "
            f"scenarios: {[s.key for s in SCENARIOS]}"
        )
    rows = rows or list(ROWS)
    if not any(r.key == OURS for r in rows):
        rows.append(next(r for r in ROWS if r.key == OURS))  # every ratio needs our row
    return [r for r in ROWS if r in rows], scenarios or list(SCENARIOS)


def skip_reason(row: Row, scenario: Scenario) -> str:
    """Why a row sits a scenario out; a skip keyed "7" covers every 7-* line."""
    return (
        row.skips.get(scenario.key)
        or row.skips.get(scenario.key.split("-")[0])
        or scenario.skip_all
    )


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    for target in ((max(hard, want), max(hard, want)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, OSError):
            continue
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 12000:
        print(f"bench: warning: open-file limit {soft}; scenario 4 needs ~10,000", flush=True)


def run(args: argparse.Namespace) -> int:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {CLIENT_CPU})
    raise_fd_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, scenarios = select(args.only)
    timing = QUICK if args.quick else FULL
    runner = Runner(timing)
    machine = machine_info()
    command = (
        "python3 bench/run.py"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
    )
    started = time.monotonic()
    results: dict[tuple[str, str], Result] = {}
    groups: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        groups.setdefault(scenario.group, []).append(scenario)
    for row in rows:
        print(f"{row.label}", flush=True)
        for group, members in groups.items():
            runnable = []
            for scenario in members:
                reason = skip_reason(row, scenario)
                if reason:
                    results[(row.key, scenario.key)] = Result(
                        row.key, scenario.key, "skipped", reason
                    )
                else:
                    runnable.append(scenario)
            if runnable:
                for result in runner.run_group(row, group, runnable):
                    results[(row.key, result.scenario)] = result
        save(results, machine, command, args.quick, args.json)
    print(f"rows done in {time.monotonic() - started:.0f}s", flush=True)
    profile_runs: list[ProfileRun] = []
    if not args.no_profile and any(s.key in ("1-plaintext", "2") for s in scenarios):
        try:
            profile_runs = profile_ours(runner, timing)
        except Exception as exc:
            print(f"profiling failed: {exc}", flush=True)
    full = not args.only
    if full or args.write_docs:
        write_rst(results, rows, command, machine, args.quick)
        write_plot(results, rows, machine)
        print(f"wrote {DOCS_RST.relative_to(REPO)} and {PNG.relative_to(REPO)}", flush=True)
    if profile_runs:
        (RESULTS / "profile.json").write_text(
            json.dumps(
                {
                    "runs": [asdict(r) for r in profile_runs],
                    "seconds": float(int(timing.duration)),
                    "command": command,
                    "machine": machine,
                }
            )
        )
        ours_rps = {k: r.metric for (row, k), r in results.items() if row == OURS and r.metric}
        write_profile_md(profile_runs, float(int(timing.duration)), command, machine, ours_rps)
        print(f"wrote {PROFILE_MD.relative_to(REPO)}", flush=True)
    print_ratio_table(results, rows, scenarios)
    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    return 0


def save(
    results: Mapping[tuple[str, str], Result],
    machine: Mapping[str, str],
    command: str,
    quick: bool,
    path: Path,
) -> None:
    payload = {
        "machine": machine,
        "command": command,
        "quick": quick,
        "results": [asdict(r) for r in results.values()],
    }
    text = json.dumps(payload, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def print_ratio_table(
    results: Mapping[tuple[str, str], Result], rows: Sequence[Row], scenarios: Sequence[Scenario]
) -> None:
    shown = [s for s in scenarios if not s.skip_all]
    print()
    print(f"{'ratio to ours':32}" + "".join(f"{s.key:>14}" for s in shown))
    for row in rows:
        cells = [
            ratio_cell(results.get((row.key, s.key)), results.get((OURS, s.key))) for s in shown
        ]
        print(f"{row.label:32}" + "".join(f"{c:>14}" for c in cells))
    print(
        f"{'ours (absolute)':32}"
        + "".join(f"{headline(results.get((OURS, s.key)), s):>14}" for s in shown)
    )


def report_only(args: argparse.Namespace) -> int:
    """Rewrite the docs and plot from bench/results/latest.json (or ``--json``)."""
    payload = json.loads(args.json.read_text())
    results = {(r["row"], r["scenario"]): Result(**r) for r in payload["results"]}
    present = {row for row, _ in results}
    rows = [r for r in ROWS if r.key in present]
    write_rst(results, rows, payload["command"], payload["machine"], payload["quick"])
    write_plot(results, rows, payload["machine"])
    profile = RESULTS / "profile.json"
    if profile.exists():
        saved = json.loads(profile.read_text())
        ours_rps = {k: r.metric for (row, k), r in results.items() if row == OURS and r.metric}
        runs = [ProfileRun(**r) for r in saved["runs"]]
        write_profile_md(runs, saved["seconds"], saved["command"], saved["machine"], ours_rps)
    print_ratio_table(results, rows, SCENARIOS)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark flask_async_worker against the alternatives."
    )
    parser.add_argument("--quick", action="store_true", help="short durations (~10 minutes)")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help="comma-separated scenario keys (1, 1-json, 3, 6-upload, ...) and/or row keys "
        "(sync, gthread, gevent, asgi-wsgitoasgi, uvicorn-a2wsgi, granian, hypercorn-quart, "
        "uvicorn-quart, ours-uvloop, ours-asyncio); ours-uvloop is always included",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile/py-spy runs")
    parser.add_argument("--write-docs", action="store_true", help="write docs/ even with --only")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "latest.json",
        metavar="PATH",
        help="where the results go (--report-only reads them from there); "
        "default bench/results/latest.json",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite docs/ from the last results"
    )
    parser.add_argument(
        "--setup-only", action="store_true", help="create bench/.venv, install tools, exit"
    )
    args = parser.parse_args(argv)
    if not in_bench_venv():
        ensure_tools()
        ensure_venv()
        if args.setup_only:
            return 0
        os.execv(
            str(VPY),
            [
                str(VPY),
                str(Path(__file__).resolve()),
                *(argv if argv is not None else sys.argv[1:]),
            ],
        )
    if args.setup_only:
        return 0
    if args.report_only:
        return report_only(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
