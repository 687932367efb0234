"""A lean asyncio HTTP/1.1 client for concurrency tests.

httpx spends milliseconds of client CPU per connection; with a thousand
connections opened at once the client, not the server, would decide how
long a test takes.  This client writes one request per connection and
reads one response, nothing more.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


@dataclass
class Reply:
    status: int
    headers: bytes
    body: bytes


async def get(port: int, path: str, *, host: str = "127.0.0.1", timeout: float = 30.0) -> Reply:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    match = _STATUS.match(head)
    if match is None:
        raise ConnectionError(f"no HTTP response: {data[:100]!r}")
    return Reply(int(match.group(1)), head, body)


async def many(port: int, path: str, count: int, timeout: float = 30.0) -> list[Reply]:
    return await asyncio.gather(*(get(port, path, timeout=timeout) for _ in range(count)))
