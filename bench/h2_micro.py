#!/usr/bin/env python3
"""Per-request cost of the HTTP/2 drivers, in process, side by side.

    .venv/bin/python bench/h2_micro.py            # ~20 s
    .venv/bin/python bench/h2_micro.py --quick    # ~5 s

What h2load does to a worker in scenario 7, without sockets: a client
(h2's, prepared ahead so its cost is not counted) sends batches of 16
small GET requests on one connection and grants window as the answers
arrive; the driver takes each batch in with ``receive_data`` and answers
every request with ``send_headers`` + ``send_data`` (the headers the server
sends) and one ``data_to_send``, exactly as ``server_h2.py`` drives it.
Reported as microseconds per request, receiving and answering, for both
engines: the worker's own frame layer (``native``) and the h2-based one
(``h2``).  The best of several rounds is reported: on a shared machine the
minimum is the least noisy estimate of the cost itself.

No event loop and no application: this isolates what the engine choice
changes; bench/run.py measures the worker as a whole.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_async_worker.protocols.http2 import H2Driver, H2Limits, StreamRequest
from flask_async_worker.protocols.http2_h2lib import H2LibDriver
from flask_async_worker.protocols.http11_rules import Limits

Driver = H2Driver | H2LibDriver
DRIVERS: dict[str, Callable[[H2Limits, Limits], Driver]] = {
    "h2": H2LibDriver,
    "native": H2Driver,
}
STREAMS = 16  # h2load -m 16
REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/plaintext"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8000"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
BODY = memoryview(b"Hello, World!")
HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"%d" % len(BODY)),
    (b"date", b"Fri, 27 Nov 2026 10:00:00 GMT"),
]


class Client:
    """h2's client, whose batches are built before the clock starts."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()

    def batch(self) -> bytes:
        for _ in range(STREAMS):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, REQUEST, end_stream=True)
        return self.conn.data_to_send()

    def take(self, data: bytes) -> int:
        """The answers: window handed back, responses counted."""
        done = 0
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                done += 1
        return done


def measure(make: Callable[[H2Limits, Limits], Driver], n: int, rounds: int) -> tuple[float, ...]:
    """Best-of-rounds microseconds per request: receive, answer, total."""
    best: tuple[float, ...] = (float("inf"),) * 3
    clock = time.perf_counter_ns
    for _ in range(rounds):
        client = Client()
        driver = make(H2Limits(), Limits())
        driver.initiate()
        # The handshake: the client's preface and SETTINGS, the server's.
        driver.receive_data(client.conn.data_to_send(), 0.0)
        client.take(driver.data_to_send())
        receive_ns = send_ns = 0
        for _ in range(n // STREAMS):
            data = client.batch()
            t0 = clock()
            events = driver.receive_data(data, 0.0)
            t1 = clock()
            for event in events:
                if type(event) is StreamRequest:
                    driver.send_headers(event.stream_id, 200, HEADERS, end_stream=False)
                    driver.send_data(event.stream_id, BODY, end_stream=True)
            out = driver.data_to_send()
            t2 = clock()
            if client.take(out) != STREAMS:
                raise AssertionError("not every request was answered")
            receive_ns += t1 - t0
            send_ns += t2 - t1
        count = n // STREAMS * STREAMS
        receive, send = receive_ns / count / 1000, send_ns / count / 1000
        best = tuple(min(a, b) for a, b in zip(best, (receive, send, receive + send), strict=True))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n, rounds = (8_000, 3) if args.quick else (32_000, 5)
    print(f"Python {platform.python_version()} on {platform.processor() or platform.machine()}")
    print(f"{n} requests per round in batches of {STREAMS}, best of {rounds} rounds, µs/request\n")
    print("{:<8} {:>8} {:>8} {:>8} {:>7}".format("engine", "receive", "answer", "total", "ratio"))
    results = {name: measure(make, n, rounds) for name, make in DRIVERS.items()}
    reference = results["h2"][2]
    for name, (receive, send, total) in results.items():
        print(f"{name:<8} {receive:>8.2f} {send:>8.2f} {total:>8.2f} {reference / total:>6.1f}x")


if __name__ == "__main__":
    main()
