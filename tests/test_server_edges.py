"""Server behaviours at the edges of a connection's life."""

from __future__ import annotations

import socket
import time

from .conftest import parser_env, status_of


def test_response_before_body_is_not_lost_to_a_reset(gunicorn, http_parser):
    """The app answers without reading a large upload: the worker reads and
    discards the rest (lingering close) instead of resetting the connection."""
    server = gunicorn("asgi_app:app", env=parser_env(http_parser))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"a" * 65536
        )
        response = b""
        while b"hello" not in response:
            response += sock.recv(65536)
        assert status_of(response) == 200
        assert b"connection: close" in response.lower()
        # The client keeps sending the body it had started: no reset.
        for _ in range(8):
            sock.sendall(b"b" * 65536)
        sock.settimeout(3)
        assert sock.recv(65536) == b""  # the server half-closed after the response
    assert "Traceback" not in server.log()


def test_lingering_is_bounded(gunicorn, http_parser):
    server = gunicorn(
        "asgi_app:app", env=parser_env(http_parser, {"FLASK_ASYNC_WORKER_LINGER_TIMEOUT": "0.5"})
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\nabc")
        data = sock.recv(65536)
        assert status_of(data) == 200
        started = time.monotonic()
        try:
            while True:
                sock.sendall(b"x" * 1024)
                time.sleep(0.05)
                if time.monotonic() - started > 5:
                    raise AssertionError("the server kept lingering")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 3
