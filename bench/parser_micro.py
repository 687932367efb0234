#!/usr/bin/env python3
"""Per-request cost of the HTTP/1.1 drivers, in process, side by side.

    .venv/bin/python bench/parser_micro.py            # ~20 s
    .venv/bin/python bench/parser_micro.py --quick    # ~5 s

One keep-alive exchange, driven through the drivers' public surface exactly
as ``server.py`` drives it: ``receive_data`` with the request bytes,
``next_event`` until ``EndOfBody``, then ``send_response`` + ``send_body`` +
``send_end`` for a small response (headers as the server sends them:
content-type, content-length, date) and ``start_next_cycle``.  Reported as
microseconds per request, for the parse half, the serialize half and the
whole, for a minimal GET (what wrk sends) and a browser-like GET (eight
fields).  The best of several rounds is reported: on a shared machine the
minimum is the least noisy estimate of the cost itself.

No sockets, no event loop, no application: this isolates what the parser
choice changes; bench/run.py measures the worker as a whole.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_async_worker.protocols.events import EndOfBody, Headers
from flask_async_worker.protocols.http11 import H11Driver, Limits
from flask_async_worker.protocols.http11_rules import HTTP11Driver
from flask_async_worker.protocols.httptools_driver import HttptoolsDriver

REQUESTS = {
    "minimal GET": b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    "browser GET": (
        b"GET /articles/42?page=2&sort=new HTTP/1.1\r\n"
        b"Host: www.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\n"
        b"Referer: https://www.example.com/articles\r\n"
        b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n"
        b"Connection: keep-alive\r\n\r\n"
    ),
}
BODY = b"Hello, World!"
DATE = b"Thu, 27 Nov 2026 10:00:00 GMT"
DRIVERS: dict[str, Callable[[Limits], HTTP11Driver]] = {
    "h11": H11Driver,
    "httptools": HttptoolsDriver,
}


def response_headers() -> Headers:
    return [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(BODY)),
        (b"date", DATE),
    ]


def parse(driver: HTTP11Driver, data: bytes) -> None:
    driver.receive_data(data)
    while type(driver.next_event()) is not EndOfBody:
        pass


def serialize(driver: HTTP11Driver) -> None:
    out = driver.send_response(200, response_headers(), b"OK")
    out += driver.send_body(BODY)
    out += driver.send_end()
    if not driver.start_next_cycle():
        raise AssertionError("keep-alive expected")


def measure(
    make: Callable[[Limits], HTTP11Driver], data: bytes, n: int, rounds: int
) -> tuple[float, float, float]:
    """Best-of-rounds microseconds per request: parse, serialize, total."""
    best_parse = best_serialize = best_total = float("inf")
    for _ in range(rounds):
        driver = make(Limits())
        parse_ns = serialize_ns = 0
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            parse(driver, data)
            t1 = clock()
            serialize(driver)
            t2 = clock()
            parse_ns += t1 - t0
            serialize_ns += t2 - t1
        best_parse = min(best_parse, parse_ns / n / 1000)
        best_serialize = min(best_serialize, serialize_ns / n / 1000)
        best_total = min(best_total, (parse_ns + serialize_ns) / n / 1000)
    return best_parse, best_serialize, best_total


def check_same_output(data: bytes) -> None:
    """The drivers being compared must do the same job."""
    outputs = set()
    for make in DRIVERS.values():
        driver = make(Limits())
        parse(driver, data)
        out = driver.send_response(200, response_headers(), b"OK")
        outputs.add(out.lower() + driver.send_body(BODY) + driver.send_end())
    if len(outputs) != 1:
        raise AssertionError(f"the drivers answer differently: {outputs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n, rounds = (5_000, 3) if args.quick else (20_000, 5)
    print(f"Python {platform.python_version()} on {platform.processor() or platform.machine()}")
    print(f"{n} requests per round, best of {rounds} rounds, microseconds per request\n")
    columns = ("request", "driver", "parse", "serialize", "total", "ratio")
    print("{:<14} {:<10} {:>8} {:>10} {:>8} {:>7}".format(*columns))
    for label, data in REQUESTS.items():
        check_same_output(data)
        results = {name: measure(make, data, n, rounds) for name, make in DRIVERS.items()}
        reference = results["h11"][2]
        for name, (p, s, t) in results.items():
            print(f"{label:<14} {name:<10} {p:>8.2f} {s:>10.2f} {t:>8.2f} {reference / t:>6.1f}x")


if __name__ == "__main__":
    main()
