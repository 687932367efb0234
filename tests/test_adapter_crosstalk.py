"""No request ever sees another's ``request``, ``g`` or ``session``.

1,000 concurrent requests under the real worker (one worker, ``--threads
4``), half to an async view that awaits between its reads, half to a sync
view that sleeps between them.  Fifty clients, each with its own cookie jar
and so its own session; every request has its own query value and its own
``X-Tag`` header (copied to ``g`` by ``before_request``).  Every read of
every response must be the request's own triple.

Why this would catch cross-talk: the three values are unique per request
(``q``, tag) or per client (session), each response carries every read it
made (before and after each await), and the sleeps are long enough that
~hundreds of requests are interleaved on the loop at once.  A context that
leaked between tasks, a ``g`` or session shared by two requests, or a
request served with another's environ would make some read differ.  The
checker itself is shown to catch such a leak, deterministically, by a
positive control: ``/leaky`` keeps ``q`` in shared state across a barrier
of five concurrent requests, so exactly four of them echo another's value.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

CLIENTS = 50
PER_CLIENT = 20  # 1,000 requests


@dataclass(frozen=True)
class Sent:
    path: str
    q: str
    tag: str
    sid: str


def plan() -> list[list[Sent]]:
    return [
        [
            Sent(
                path="/async" if (c + k) % 2 == 0 else "/sync",
                q=f"q-{c}-{k}",
                tag=f"tag-{k}-{c}",
                sid=f"sid-{c}",
            )
            for k in range(PER_CLIENT)
        ]
        for c in range(CLIENTS)
    ]


def crosstalk_errors(results: list[tuple[Sent, int, Any]]) -> list[str]:
    """Every read a response reports that is not its own request's values."""
    errors = []
    for sent, status, body in results:
        want = [sent.q, sent.tag, sent.sid]
        if status != 200 or not isinstance(body, dict) or not body.get("reads"):
            errors.append(f"{sent}: status {status}, body {body!r}")
            continue
        for i, got in enumerate(body["reads"]):
            if got != want:
                errors.append(f"{sent.path} read {i}: saw {got}, sent {want}")
    return errors


async def raw_get(
    port: int, target: str, headers: dict[str, str], timeout: float = 30.0
) -> tuple[int, Any]:
    """One GET on its own connection: httpx costs milliseconds of client CPU
    per connection, and with a thousand at once the client would be the
    bottleneck (and the server would see far fewer requests in flight)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


async def run_clients(
    url: str, port: int, requests: list[list[Sent]]
) -> list[tuple[Sent, int, Any]]:
    # Each client logs in with its own cookie jar (its own session) ...
    async def login(sid: str) -> str:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            r = await client.post("/login", params={"sid": sid})
            assert r.status_code == 200
            return "; ".join(f"{k}={v}" for k, v in client.cookies.items())

    jars = await asyncio.gather(*(login(sents[0].sid) for sents in requests))

    # ... then all 1,000 requests go at once, each with its client's cookies.
    async def one(sent: Sent, cookie: str) -> tuple[Sent, int, Any]:
        target = "{}?{}".format(sent.path, urlencode({"q": sent.q}))
        status, body = await raw_get(port, target, {"X-Tag": sent.tag, "Cookie": cookie})
        return sent, status, body

    return await asyncio.gather(
        *(one(sent, jar) for sents, jar in zip(requests, jars, strict=True) for sent in sents)
    )


def test_checker_catches_swapped_values() -> None:
    sent = [s for client in plan()[:2] for s in client[:2]]
    honest = [(s, 200, {"reads": [[s.q, s.tag, s.sid]] * 3}) for s in sent]
    assert crosstalk_errors(honest) == []
    a, b = sent[0], sent[1]
    for swapped in (
        [a.q, a.tag, a.sid],  # another request's everything
        [b.q, a.tag, a.sid],  # another request's query string
        [a.q, b.tag, a.sid],  # another request's g
        [a.q, a.tag, plan()[1][0].sid],  # another client's session
    ):
        leaked = list(honest)
        leaked[1] = (b, 200, {"reads": [[b.q, b.tag, b.sid], swapped, [b.q, b.tag, b.sid]]})
        assert len(crosstalk_errors(leaked)) == 1, swapped
    assert crosstalk_errors([(a, 500, "oops")]) != []


def test_no_crosstalk_between_1000_concurrent_requests(gunicorn: Any) -> None:
    server = gunicorn(
        "flask_sem_crosstalk:app",
        "--workers",
        "1",
        "--threads",
        "4",
        "--worker-connections",
        "2000",
    )
    # Positive control: shared state across an await *is* seen by the checker.
    control = [Sent("/leaky", f"leak-{i}", f"leak-tag-{i}", f"leak-sid-{i}") for i in range(5)]

    async def run_control() -> list[tuple[Sent, int, Any]]:
        out = []
        clients = [httpx.AsyncClient(base_url=server.url, timeout=30) for _ in control]
        try:
            for client, sent in zip(clients, control, strict=True):
                await client.post("/login", params={"sid": sent.sid})
            rs = await asyncio.gather(
                *(
                    client.get("/leaky", params={"q": s.q, "n": "5"}, headers={"X-Tag": s.tag})
                    for client, s in zip(clients, control, strict=True)
                )
            )
            out = [(s, r.status_code, r.json()) for s, r in zip(control, rs, strict=True)]
        finally:
            for client in clients:
                await client.aclose()
        return out

    control_errors = crosstalk_errors(asyncio.run(run_control()))
    assert len(control_errors) == 4, control_errors  # all but the last writer

    requests = plan()
    results = asyncio.run(run_clients(server.url, server.port, requests))
    assert len(results) == CLIENTS * PER_CLIENT == 1000
    errors = crosstalk_errors(results)
    assert errors == [], f"{len(errors)} cross-talk reads, first: {errors[:5]}"
    views = {body["view"] for _, _, body in results}
    assert views == {"async", "sync"}
    # The async views really were interleaved on the loop (500 when every
    # request is in flight at once; the bound leaves room for a slow client).
    stats = httpx.get(server.url + "/stats").json()
    assert stats["max"] >= 100, stats
    assert "Traceback" not in server.log()
