"""The worker serves HTTP/1.1 from a real gunicorn arbiter."""

from __future__ import annotations

import json
import socket

import httpx

from .conftest import raw_request, status_of


def test_get_and_post(gunicorn):
    server = gunicorn("asgi_app:app")
    with httpx.Client(base_url=server.url) as client:
        r = client.get("/")
        assert r.status_code == 200
        assert r.text == "hello"
        assert r.headers["content-length"] == "5"
        assert "date" in r.headers
        r = client.post("/echo", content=b"x" * 100_000)
        assert r.status_code == 200
        assert r.content == b"x" * 100_000


def test_keepalive_reuses_connection(gunicorn):
    server = gunicorn("asgi_app:app")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        pids = set()
        for _ in range(3):
            sock.sendall(b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
            assert status_of(head) == 200
            pids.add(json.loads(body)["client"][1])
        assert len(pids) == 1  # the same client port: one connection


def test_pipelined_requests_answered_in_order(gunicorn):
    server = gunicorn("asgi_app:app")
    req = (
        b"".join(
            b"GET /sleep?s=%s HTTP/1.1\r\nHost: x\r\n\r\n" % s for s in (b"0.3", b"0", b"0.1")
        )
        + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = raw_request(server.port, req)
    assert data.count(b"HTTP/1.1 200 OK") == 4
    assert data.index(b"slept") < data.index(b"hello")
