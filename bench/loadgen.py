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
``ws-echo``  N WebSockets, each sending a small text message and waiting for
          its echo, back to back (scenario 10): round trips per second.
``ws-idle``  N WebSockets that each complete the handshake and one echo, then
          stay idle; the same ready/stdin/report protocol as ``idle``
          (scenario 10).

The WebSocket client is hand-written (RFC 6455, text frames, no extensions)
and callback-driven: an echo is answered in ``data_received`` with the next
pre-masked frame, without a coroutine or a future per message, so that a
single client process keeps up with the servers it measures.

Each mode prints one JSON object on its last stdout line.  The client runs on
uvloop when it is installed.  Usage: ``python loadgen.py MODE --port P ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable
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
    closed_by_server: int = 0  # WebSockets the server closed with a close frame
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


# -- WebSocket ---------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_KEY = base64.b64encode(b"bench-loadgen-ws")  # any 16 bytes; the same for every handshake
WS_ACCEPT = base64.b64encode(hashlib.sha1(WS_KEY + WS_GUID).digest())
# One fixed masking key for every frame: RFC 6455 asks clients for a fresh one
# per frame (against cache poisoning through proxies); a server cannot tell.
WS_MASK = b"\x37\xfa\x21\x3d"
OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


def ws_frame(opcode: int, payload: bytes, mask: bytes = WS_MASK) -> bytes:
    """One final client-to-server frame, masked as RFC 6455 requires of a client."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if not n:
        return head + mask
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def ws_server_frame(opcode: int, payload: bytes) -> bytes:
    """The unmasked frame a server sends for a short payload: the echo's exact bytes."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, len(payload))) + payload


def ws_handshake(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class WsClient(asyncio.Protocol):
    """One client WebSocket: the opening handshake, then whole messages.

    Every complete text or binary message goes to ``on_message`` when one is
    set, else resolves ``waiter``.  Pings are answered, fragmented messages
    reassembled, a server's close frame answered and the socket closed.
    ``fast`` is the exact frame the server is expected to send back: a read
    that is just that frame skips the parser.
    """

    def __init__(
        self,
        request: bytes,
        on_message: Callable[[WsClient, bytes], None] | None = None,
        fast: bytes = b"",
    ) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.on_message = on_message
        self.fast = fast
        self.fast_payload = fast[2:]
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        # The handshake's outcome: "" once open, else why not (never an exception,
        # so a handshake given up on leaves no unretrieved one behind).
        self.handshake: asyncio.Future[str] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.waiter: asyncio.Future[bytes] | None = None
        self.open = False  # handshake done and no close frame sent or received
        self.lost = False
        self.closing = False  # we sent a close frame
        self.close_code: int | None = None  # from the server's close frame
        self.refused = ""  # the status line of a handshake the server did not accept
        self.protocol_errors = 0
        self.timed_out = False
        self.sent_at = 0.0  # when the message now awaiting its echo was sent; 0: none
        self.ident = -1
        self._fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.open = False
        if not self.handshake.done():
            self.handshake.set_result("connection lost during the handshake")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection lost"))
        if not self.ended.done():
            self.ended.set_result(None)

    def abort(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (the server's close frame ends it)."""
        if self.open and not self.closing:
            self.closing = True
            self.open = False
            self.send(ws_frame(OP_CLOSE, code.to_bytes(2, "big")))

    def data_received(self, data: bytes) -> None:
        if data == self.fast and self.open and not self.buf and self.on_message is not None:
            self.on_message(self, self.fast_payload)
            return
        self.buf += data
        if not self.handshake.done() and not self._handshake():
            return
        self._frames()

    def _handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._refuse("response head over 64 KiB")
            return False
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        accept = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                accept = value.strip()
        status = lines[0].decode("latin-1", "replace")
        if status.split(" ")[1:2] != ["101"]:
            self._refuse(status)
            return False
        if accept != WS_ACCEPT:
            self._refuse(f"{status} with a wrong Sec-WebSocket-Accept")
            return False
        self.open = True
        self.handshake.set_result("")
        return True

    def _refuse(self, why: str) -> None:
        self.refused = why
        self.handshake.set_result(why)
        self.abort()

    def _frames(self) -> None:
        buf = self.buf
        size = len(buf)
        pos = 0
        while size - pos >= 2 and not self.lost:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                head = 4
                if size - pos < head:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif n == 127:
                head = 10
                if size - pos < head:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if b1 & 0x80:  # a server must not mask its frames
                self.protocol_errors += 1
                self.abort()
                return
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._frame(b0, payload)
        del buf[:pos]

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode == OP_PING:
            self.send(ws_frame(OP_PONG, payload))
            return
        if opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closing:
                self.send(ws_frame(OP_CLOSE, payload[:2]))
            self.open = False
            assert self.transport is not None
            self.transport.close()
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CONT or not b0 & 0x80:
            self._fragments.append(payload)
            if not b0 & 0x80:
                return
            payload = b"".join(self._fragments)
            self._fragments.clear()
        if self.on_message is not None:
            self.on_message(self, payload)
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(payload)


@dataclass
class WsStats(Stats):
    mismatches: int = 0  # echoes that were not the message sent
    protocol_errors: int = 0
    refused: str = ""  # the first refused handshake's status line

    def errors(self) -> int:
        return super().errors() + self.mismatches + self.protocol_errors


async def ws_connect(
    args: argparse.Namespace,
    stats: WsStats,
    gate: asyncio.Semaphore,
    on_message: Callable[[WsClient, bytes], None] | None = None,
    fast: bytes = b"",
) -> WsClient | None:
    """Connect and complete the opening handshake; None (counted) if either fails.

    Only the TCP connect waits for the gate: a server that accepts
    connections and leaves their handshakes unanswered (one thread per
    WebSocket, all busy) costs one timeout in all, not one per batch.
    """
    loop = asyncio.get_running_loop()
    request = ws_handshake(args.path, args.port)
    async with gate:
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: WsClient(request, on_message, fast), HOST, args.port
                ),
                args.timeout,
            )
        except (TimeoutError, OSError):
            stats.connect_errors += 1
            return None
    try:
        failure = await asyncio.wait_for(asyncio.shield(conn.handshake), args.timeout)
    except TimeoutError:
        stats.timeouts += 1
        conn.abort()
        return None
    if conn.refused:
        stats.status_errors += 1
        stats.refused = stats.refused or conn.refused
        return None
    if failure:
        stats.read_errors += 1
        return None
    return conn


def ws_payload(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def ws_report(stats: WsStats, conns: list[WsClient], extra: dict[str, Any]) -> dict[str, Any]:
    stats.protocol_errors = sum(c.protocol_errors for c in conns)
    out = report(stats, extra)
    out.update(
        {
            "errors": stats.errors(),
            "mismatches": stats.mismatches,
            "protocol_errors": stats.protocol_errors,
            **({"refused": stats.refused} if stats.refused else {}),
        }
    )
    return out


async def run_ws_echo(args: argparse.Namespace) -> dict[str, Any]:
    """N WebSockets each echoing one small text message after another.

    A round trip's latency runs from the write of a message to the read of
    its echo; the next message goes out from the callback that read the
    echo.  At the end each connection sends a close frame after its last
    echo; closes the server leaves unanswered for 2 s are reported.
    """
    stats = WsStats()
    gate = asyncio.Semaphore(args.connect_concurrency)
    start = time.monotonic()
    stats.window_start = start + args.warmup
    stats.window_end = stop_at = stats.window_start + args.duration
    payload = ws_payload(args.size)
    frame = ws_frame(OP_TEXT, payload)
    conns: list[WsClient] = []
    latencies = stats.latencies
    served = stats.served

    def on_message(conn: WsClient, data: bytes) -> None:
        now = time.monotonic()
        if data != payload:
            stats.mismatches += 1
        if stats.window_start <= now < stop_at:
            stats.completed += 1
            latencies.append(now - conn.sent_at)
            served.add(conn.ident)
        if now < stop_at:
            conn.sent_at = now
            conn.send(frame)
        else:
            conn.sent_at = 0.0
            conn.close()

    async def one(i: int) -> None:
        while time.monotonic() < stop_at:
            conn = await ws_connect(
                args, stats, gate, on_message, ws_server_frame(OP_TEXT, payload)
            )
            if conn is None:
                await asyncio.sleep(0.05)
                continue
            conn.ident = i
            conns.append(conn)
            conn.sent_at = time.monotonic()
            conn.send(frame)
            await conn.ended
            if conn.closing:
                return
            if conn.timed_out:
                stats.timeouts += 1
            else:  # the server closed or dropped it mid-run
                stats.read_errors += 1
            if conn.close_code is not None:
                stats.closed_by_server += 1
            stats.reconnects += 1

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for conn in conns:
                if conn.sent_at and not conn.lost and now - conn.sent_at > args.timeout:
                    conn.timed_out = True
                    conn.abort()

    dog = asyncio.ensure_future(watchdog())
    tasks = [asyncio.ensure_future(one(i)) for i in range(args.connections)]
    await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()) + 2.0)
    dog.cancel()
    unanswered = sum(1 for c in conns if c.closing and not c.lost)
    for task in tasks:
        task.cancel()
    for conn in conns:
        if not conn.lost:
            conn.abort()
    await asyncio.wait(tasks, timeout=2.0)
    return ws_report(
        stats,
        conns,
        {
            "mode": "ws-echo",
            "connections": args.connections,
            "size": args.size,
            "closes_unanswered": unanswered,
            "clean_closes": sum(1 for c in conns if c.closing and c.close_code is not None),
            "closed_by_server": stats.closed_by_server,
        },
    )


async def run_ws_idle(args: argparse.Namespace) -> dict[str, Any]:
    """N WebSockets: handshake and one echo each, then idle until told (or ``--hold``).

    After the hold every connection that was open echoes one more message:
    ``still_open`` counts those that did, within ``--timeout``.
    """
    stats = WsStats()
    gate = asyncio.Semaphore(args.connect_concurrency)
    loop = asyncio.get_running_loop()
    payload = ws_payload(args.size)
    frame = ws_frame(OP_TEXT, payload)

    async def echo(conn: WsClient) -> bool:
        conn.waiter = loop.create_future()
        conn.send(frame)
        try:
            data = await asyncio.wait_for(conn.waiter, args.timeout)
        except TimeoutError:
            stats.timeouts += 1
            conn.abort()
            return False
        except ConnectionError:
            stats.read_errors += 1
            return False
        if data != payload:
            stats.mismatches += 1
        return True

    async def one(i: int) -> WsClient | None:
        began = time.monotonic()
        conn = await ws_connect(args, stats, gate)
        if conn is None or not await echo(conn):
            return None
        stats.completed += 1
        stats.latencies.append(time.monotonic() - began)
        return conn

    started = time.monotonic()
    conns = await asyncio.gather(*(one(i) for i in range(args.connections)))
    ramp = time.monotonic() - started
    opened = [c for c in conns if c is not None and c.open]
    print(json.dumps({"ready": True, "open": len(opened), "ramp_s": ramp}), flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    silently_lost = sum(1 for c in opened if not c.open)
    answered = await asyncio.gather(*(echo(c) for c in opened if c.open))
    for c in opened:
        c.abort()
    stats.window_end = ramp
    return ws_report(
        stats,
        opened,
        {
            "mode": "ws-idle",
            "connections": args.connections,
            "opened": len(opened),
            "still_open": sum(answered),
            "closed_during_hold": silently_lost,
            "closed_by_server": sum(1 for c in opened if c.close_code is not None),
            "ramp_s": ramp,
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("load", "idle", "sse", "ws-echo", "ws-idle"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/plaintext")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--connect-concurrency", type=int, default=500)
    parser.add_argument("--size", type=int, default=32, help="WebSocket message bytes")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the bench venv has it
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    modes = {
        "load": run_load,
        "idle": run_idle,
        "sse": run_sse,
        "ws-echo": run_ws_echo,
        "ws-idle": run_ws_idle,
    }
    wall, cpu = time.monotonic(), time.process_time()
    result = runner(modes[args.mode](args))
    # The client's own CPU share: near 1.0 means the client, not the server, was the limit.
    result["client_cpu_share"] = (time.process_time() - cpu) / max(1e-9, time.monotonic() - wall)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
