"""A small asyncio HTTP/1.1 load generator for what wrk does not do well.

wrk is the load generator for the throughput scenarios; this client covers
the rest, all against 127.0.0.1 only and always bounded in time:

``load``  N keep-alive connections, each sending GET requests back to back
          (thousands of connections that each wait a second: scenario 4).
``idle``  N connections that each make one request and then stay idle and
          open; prints a ``ready`` JSON line, waits for a line on stdin (or
          ``--hold`` seconds), then reports how many the server kept open
          (scenario 9).
``sse``   N Server-Sent-Events subscribers counting the events they receive
          (scenario 8).

Each mode prints one JSON object on its last stdout line.  The client runs on
uvloop when it is installed.  Usage: ``python loadgen.py MODE --port P ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

HOST = "127.0.0.1"


@dataclass
class Stats:
    window_start: float = 0.0
    window_end: float = float("inf")
    completed: int = 0
    latencies: list[float] = field(default_factory=list)
    connect_errors: int = 0
    read_errors: int = 0
    status_errors: int = 0
    timeouts: int = 0
    reconnects: int = 0
    events: int = 0
    #: connections that got at least one response or event
    served: set[int] = field(default_factory=set)

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end

    def errors(self) -> int:
        return self.connect_errors + self.read_errors + self.status_errors + self.timeouts


class ResponseReader(asyncio.Protocol):
    """Reads HTTP/1.1 responses (Content-Length or chunked) off one connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.lost = False
        self.on_data: Any = None  # SSE mode: called with every chunk of bytes
        self._head: tuple[int, bool, int, bool] | None = None  # status, keep, length, chunked
        self._body_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection lost"))

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
            return
        self.buf += data
        self._parse()

    def expect(self) -> asyncio.Future[tuple[int, bool]]:
        self.waiter = asyncio.get_running_loop().create_future()
        if self.lost:
            self.waiter.set_exception(ConnectionResetError("connection lost"))
        else:
            self._parse()
        return self.waiter

    def _parse(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            parts = lines[0].split(b" ", 2)
            status = int(parts[1])
            keep = parts[0] == b"HTTP/1.1"
            length, chunked = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                value = value.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value:
                    chunked = True
                elif name == b"connection":
                    keep = b"close" not in value
            self._head = (status, keep, length, chunked)
        status, keep, length, chunked = self._head
        if chunked:
            while True:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(self.buf[:end]).split(b";")[0], 16)
                if size == 0:
                    trailer = self.buf.find(b"\r\n\r\n", end)
                    if trailer < 0:
                        return
                    del self.buf[: trailer + 4]
                    break
                if len(self.buf) < end + 2 + size + 2:
                    return
                del self.buf[: end + 2 + size + 2]
        else:
            if len(self.buf) < length:
                return
            del self.buf[:length]
        self._head = None
        waiter.set_result((status, keep))


def request_bytes(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


async def connect(
    port: int, stats: Stats, timeout: float, gate: asyncio.Semaphore
) -> ResponseReader | None:
    loop = asyncio.get_running_loop()
    async with gate:
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(ResponseReader, HOST, port), timeout
            )
        except (TimeoutError, OSError):
            stats.connect_errors += 1
            return None
    return proto


async def load_conn(
    ident: int,
    port: int,
    path: str,
    stats: Stats,
    stop_at: float,
    timeout: float,
    gate: asyncio.Semaphore,
) -> None:
    payload = request_bytes(path, port)
    proto: ResponseReader | None = None
    try:
        while time.monotonic() < stop_at:
            if proto is None or proto.lost:
                if proto is not None:
                    stats.reconnects += 1
                proto = await connect(port, stats, timeout, gate)
                if proto is None:
                    await asyncio.sleep(0.05)
                    continue
            assert proto.transport is not None
            sent = time.monotonic()
            proto.transport.write(payload)
            try:
                status, keep = await asyncio.wait_for(proto.expect(), timeout)
            except TimeoutError:
                stats.timeouts += 1
                proto.transport.abort()
                proto = None
                continue
            except ConnectionError:
                # A close between requests is how some servers end keep-alive;
                # only one that drops a request we sent counts as an error.
                stats.read_errors += 1
                proto = None
                continue
            done = time.monotonic()
            if stats.in_window(done):
                stats.completed += 1
                stats.latencies.append(done - sent)
                stats.served.add(ident)
                if status >= 400:
                    stats.status_errors += 1
            if not keep:
                if proto.transport is not None:
                    proto.transport.close()
                proto = None
    finally:
        if proto is not None and proto.transport is not None:
            proto.transport.abort()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def report(stats: Stats, extra: dict[str, Any]) -> dict[str, Any]:
    duration = stats.window_end - stats.window_start
    out: dict[str, Any] = {
        "requests": stats.completed,
        "duration": duration,
        "rps": stats.completed / duration if duration > 0 else 0.0,
        "p50_ms": _ms(percentile(stats.latencies, 0.50)),
        "p99_ms": _ms(percentile(stats.latencies, 0.99)),
        "errors": stats.errors(),
        "connect_errors": stats.connect_errors,
        "read_errors": stats.read_errors,
        "status_errors": stats.status_errors,
        "timeouts": stats.timeouts,
        "reconnects": stats.reconnects,
        "served_connections": len(stats.served),
    }
    out.update(extra)
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    gate = asyncio.Semaphore(args.connect_concurrency)
    start = time.monotonic()
    stats.window_start = start + args.warmup
    stats.window_end = stats.window_start + args.duration
    tasks = [
        asyncio.ensure_future(
            load_conn(i, args.port, args.path, stats, stats.window_end, args.timeout, gate)
        )
        for i in range(args.connections)
    ]
    await asyncio.sleep(max(0.0, stats.window_end - time.monotonic()))
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=5.0)
    return report(stats, {"mode": "load", "connections": args.connections})


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    gate = asyncio.Semaphore(args.connect_concurrency)
    stats.window_start = 0.0

    async def one(i: int) -> ResponseReader | None:
        proto = await connect(args.port, stats, args.timeout, gate)
        if proto is None or proto.transport is None:
            return None
        sent = time.monotonic()
        proto.transport.write(request_bytes(args.path, args.port))
        try:
            status, _keep = await asyncio.wait_for(proto.expect(), args.timeout)
        except TimeoutError:
            stats.timeouts += 1
            proto.transport.abort()
            return None
        except ConnectionError:
            stats.read_errors += 1
            return None
        stats.completed += 1
        stats.latencies.append(time.monotonic() - sent)
        if status >= 400:
            stats.status_errors += 1
        return proto

    started = time.monotonic()
    protos = await asyncio.gather(*(one(i) for i in range(args.connections)))
    ramp = time.monotonic() - started
    opened = [p for p in protos if p is not None and not p.lost]
    print(json.dumps({"ready": True, "open": len(opened), "ramp_s": ramp}), flush=True)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    still_open = sum(1 for p in opened if not p.lost)
    for p in opened:
        if p.transport is not None:
            p.transport.abort()
    stats.window_end = ramp
    return report(
        stats,
        {
            "mode": "idle",
            "connections": args.connections,
            "opened": len(opened),
            "still_open": still_open,
            "ramp_s": ramp,
        },
    )


async def run_sse(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    gate = asyncio.Semaphore(args.connect_concurrency)
    start = time.monotonic()
    stats.window_start = start + args.warmup
    stats.window_end = stats.window_start + args.duration
    gaps: list[float] = []
    protos: list[ResponseReader] = []

    async def subscribe(i: int) -> None:
        proto = await connect(args.port, stats, args.timeout, gate)
        if proto is None or proto.transport is None:
            return
        protos.append(proto)
        tail = b""
        last = [0.0]

        def on_data(data: bytes) -> None:
            nonlocal tail
            joined = tail + data
            count = joined.count(b"data:")
            tail = joined[-4:]  # a marker split across reads; too short to hold one
            if not count:
                return
            now = time.monotonic()
            if stats.in_window(now):
                stats.events += count
                stats.served.add(i)
                if last[0]:
                    gaps.append(now - last[0])
            last[0] = now

        proto.on_data = on_data
        proto.transport.write(request_bytes(args.path, args.port))

    await asyncio.gather(*(subscribe(i) for i in range(args.connections)))
    await asyncio.sleep(max(0.0, stats.window_end - time.monotonic()))
    lost = sum(1 for p in protos if p.lost)
    for p in protos:
        if p.transport is not None:
            p.transport.abort()
    stats.completed = stats.events
    stats.latencies = gaps
    stats.read_errors += lost
    out = report(stats, {"mode": "sse", "connections": args.connections})
    out["events"] = stats.events
    out["events_per_s"] = out["rps"]
    out["gap_p50_ms"] = out.pop("p50_ms")
    out["gap_p99_ms"] = out.pop("p99_ms")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("load", "idle", "sse"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/plaintext")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--connect-concurrency", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the bench venv has it
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    modes = {"load": run_load, "idle": run_idle, "sse": run_sse}
    wall, cpu = time.monotonic(), time.process_time()
    result = runner(modes[args.mode](args))
    # The client's own CPU share: near 1.0 means the client, not the server, was the limit.
    result["client_cpu_share"] = (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
