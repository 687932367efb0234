"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT), end to end.

Real gunicorn arbiters serve ``tests/apps/ws_app.py`` with HTTP/2 switched
on (``--http-protocols h2,h1``, cleartext prior knowledge from loopback).
The client is two state machines on one socket: ``h2`` in client mode for
the HTTP/2 layer and wsproto's client-side frame protocol for the WebSocket
frames each extended CONNECT stream carries in its DATA (masked on the way
out, checked unmasked on the way in).  h2 gives up on a connection once it
reads a GOAWAY, so GOAWAY frames are taken out of the byte stream before h2
sees it and recorded apart: the streams still open after a graceful GOAWAY
must be served to their end.

Two arbiters are shared by the module: ``main`` with the defaults and an
access log, ``strict`` with a one-second send timeout, half-second pings and
a 16 MiB stream window (so a client can send megabytes without reading).
A graceful stop and the browser each get an arbiter of their own.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from .conftest import (
    Gunicorn,
    SocketClient,
    engine_env,
    launch_chromium,
    needs_chromium,
    serving,
    tls_files,
)

MB = 1024 * 1024
H2 = ("--http-protocols", "h2,h1", "--http2-cleartext", "prior-knowledge")
SEND_TIMEOUT = 1.0
PING = 0.5  # the strict server's ping interval and pong timeout
GOAWAY_TYPE = 0x7

Header = tuple[bytes, bytes]

# Every test together stays well under the module's budget; one stuck wait
# must not eat the rest.
pytestmark = pytest.mark.timeout(60)


def tag() -> str:
    return uuid.uuid4().hex[:10]


# -- the servers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory, http2_engine: str) -> Path:
    return tmp_path_factory.mktemp(f"ws-h2-logs-{http2_engine}") / "access.log"


@pytest.fixture(scope="module")
def servers(access_log: Path, http2_engine: str) -> Iterator[dict[str, Gunicorn]]:
    started = {
        "main": Gunicorn(
            "ws_app:app",
            *H2,
            "--access-logfile",
            str(access_log),
            env=engine_env(http2_engine),
            wait=False,
        ),
        "strict": Gunicorn(
            "ws_app:app",
            *H2,
            "--http2-initial-window-size",
            str(16 * MB),
            env=engine_env(
                http2_engine,
                {
                    "FLASK_ASYNC_WORKER_SEND_TIMEOUT": str(SEND_TIMEOUT),
                    "FLASK_ASYNC_WORKER_WS_PING_INTERVAL": str(PING),
                    "FLASK_ASYNC_WORKER_WS_PING_TIMEOUT": str(PING),
                    "FLASK_ASYNC_WORKER_TICK": "0.1",
                },
            ),
            wait=False,
        ),
    }
    with serving(started):
        yield started


@pytest.fixture(scope="module")
def main(servers: dict[str, Gunicorn]) -> Gunicorn:
    return servers["main"]


@pytest.fixture(scope="module")
def strict(servers: dict[str, Gunicorn]) -> Gunicorn:
    return servers["strict"]


# -- the client ------------------------------------------------------------------------


class Stream:
    """One stream as the client sees it: a WebSocket (extended CONNECT) or
    a plain request."""

    def __init__(
        self,
        sid: int,
        websocket: bool,
        answer_pings: bool = True,
        deflate: PerMessageDeflate | None = None,
    ) -> None:
        self.sid = sid
        self.websocket = websocket
        self.answer_pings = answer_pings
        self.deflate = deflate
        self.ws = Connection(ConnectionType.CLIENT)
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()  # DATA of a response that is not a WebSocket
        self.messages: list[str | bytes] = []
        self.taken = 0
        self.text_parts: list[str] = []  # of a message still arriving
        self.byte_parts = bytearray()
        self.close: CloseConnection | None = None
        self.pings = 0
        self.reset: int | None = None
        self.ended = False  # END_STREAM from the server
        self.received = 0  # DATA payload bytes
        self.window_updates = 0
        self.outbox = bytearray()
        self.end_pending = False
        self.after_close = bytearray()

    @property
    def accepted(self) -> bool:
        return self.websocket and self.status == 200

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class Client(SocketClient):
    """h2 (client side) plus wsproto per stream, on a blocking socket."""

    read_size = 256 * 1024
    wait_timeout = 5.0

    def __init__(
        self,
        port: int,
        *,
        acknowledge: bool = True,
        window: int | None = None,
        rcvbuf: int | None = None,
        send_timeout: float = 5.0,
    ) -> None:
        super().__init__(port, rcvbuf=rcvbuf, timeout=5.0)
        self.authority = f"127.0.0.1:{port}".encode()
        self.acknowledge = acknowledge
        self.send_timeout = send_timeout
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.conn.increment_flow_control_window(window - 65535)
        self.streams: dict[int, Stream] = {}
        self.settings: dict[int, int] = {}
        self.settings_received = False
        self.goaway: GoAwayFrame | None = None
        self.send_blocked = False
        self._buf = bytearray()
        self.flush()

    # -- sending -------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if not data or self.closed or self.send_blocked:
            return
        self.sock.settimeout(self.send_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            # The server stopped reading; what went out is all it gets.
            self.send_blocked = True
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True

    def open(
        self,
        path: str,
        *,
        protocol: bytes | None = b"websocket",
        method: bytes = b"CONNECT",
        version: bytes | None = b"13",
        extra: list[Header] | None = None,
        answer_pings: bool = True,
        deflate: bool = False,
    ) -> Stream:
        """Start an extended CONNECT (or, with ``protocol=None`` and
        CONNECT, a plain one: only :method and :authority)."""
        sid: int = self.conn.get_next_available_stream_id()
        block: list[Header] = [(b":method", method)]
        if protocol is not None:
            block.append((b":protocol", protocol))
        if protocol is not None or method != b"CONNECT":
            block += [(b":scheme", b"http"), (b":path", path.encode())]
        block.append((b":authority", self.authority))
        if version is not None:
            block.append((b"sec-websocket-version", version))
        block += extra or []
        extension = PerMessageDeflate() if deflate else None
        if extension is not None:
            offer = f"{extension.name}; {extension.offer()}"
            block.append((b"sec-websocket-extensions", offer.encode()))
        self.conn.send_headers(sid, block, end_stream=False)
        stream = self.streams[sid] = Stream(sid, True, answer_pings, extension)
        self.flush()
        return stream

    def get(self, path: str) -> Stream:
        sid: int = self.conn.get_next_available_stream_id()
        block = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self.authority),
        ]
        self.conn.send_headers(sid, block, end_stream=True)
        stream = self.streams[sid] = Stream(sid, websocket=False)
        self.flush()
        return stream

    def send(self, stream: Stream, data: str | bytes) -> None:
        message: Message[Any] = (
            TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        )
        stream.outbox += stream.ws.send(message)
        self.pump()

    def close_ws(self, stream: Stream, code: int = 1000, reason: str = "") -> None:
        stream.outbox += stream.ws.send(CloseConnection(code=code, reason=reason))
        self.pump()

    def end(self, stream: Stream) -> None:
        """END_STREAM once the outbox is out."""
        stream.end_pending = True
        self.pump()

    def reset(self, stream: Stream, code: int = ErrorCodes.CANCEL) -> None:
        stream.outbox.clear()
        self.conn.reset_stream(stream.sid, code)
        self.flush()

    def pump(self) -> None:
        """Send what the server's windows allow of every stream's outbox."""
        conn = self.conn
        for sid, stream in self.streams.items():
            out = stream.outbox
            if out:
                if stream.reset is not None:
                    out.clear()
                    continue
                try:
                    window = conn.local_flow_control_window(sid)
                    while out and window > 0:
                        size = min(window, conn.max_outbound_frame_size, len(out))
                        conn.send_data(sid, bytes(out[:size]))
                        del out[:size]
                        window -= size
                except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
                    out.clear()
            if stream.end_pending and not out:
                stream.end_pending = False
                try:
                    conn.end_stream(sid)
                except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
                    pass
                except h2.exceptions.ProtocolError:
                    pass  # already half-closed on this side
        self.flush()

    # -- receiving -----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        # h2 closes its state machine on GOAWAY and refuses every frame
        # after it; the server goes on serving the open streams, so the
        # GOAWAY is recorded here and h2 gets the rest.
        buf = self._buf
        buf += data
        keep = bytearray()
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            frame = bytes(buf[: 9 + length])
            del buf[: 9 + length]
            if frame[3] == GOAWAY_TYPE:
                goaway, _ = GoAwayFrame.parse_frame_header(memoryview(frame[:9]))
                goaway.parse_body(memoryview(frame[9:]))
                assert isinstance(goaway, GoAwayFrame)
                self.goaway = goaway
            else:
                keep += frame
        if keep:
            for event in self.conn.receive_data(bytes(keep)):
                self._on_event(event)
        self.pump()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.settings[int(code)] = change.new_value
            self.settings_received = True
            return
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.WindowUpdated):
            if stream is not None:
                stream.window_updates += 1
        elif stream is None:
            return
        elif isinstance(event, h2.events.ResponseReceived):
            for name, value in event.headers or []:
                if name == b":status":
                    stream.status = int(value)
                else:
                    stream.headers[bytes(name)] = bytes(value)
            accepted = stream.headers.get(b"sec-websocket-extensions")
            if stream.deflate is not None and stream.accepted and accepted is not None:
                # wsproto takes the extensions enabled when its protocol is made.
                stream.deflate.finalize(accepted.decode())
                stream.ws = Connection(ConnectionType.CLIENT, extensions=[stream.deflate])
        elif isinstance(event, h2.events.DataReceived):
            data = event.data or b""
            stream.received += len(data)
            if self.acknowledge and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            if stream.accepted:
                self._frames(stream, data)
            else:
                stream.body += data
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
            if stream.accepted:
                stream.end_pending = True  # the close handshake is over: end ours too
        elif isinstance(event, h2.events.StreamReset):
            stream.reset = int(event.error_code or 0)

    def _frames(self, stream: Stream, data: bytes) -> None:
        ws = stream.ws
        if not data:
            return
        if ws.state == ConnectionState.CLOSED:
            stream.after_close += data  # nothing may follow the close handshake
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                stream.text_parts.append(event.data)
                if event.message_finished:
                    stream.messages.append("".join(stream.text_parts))
                    stream.text_parts.clear()
            elif isinstance(event, BytesMessage):
                stream.byte_parts += event.data
                if event.message_finished:
                    stream.messages.append(bytes(stream.byte_parts))
                    stream.byte_parts.clear()
            elif isinstance(event, Ping):
                stream.pings += 1
                if stream.answer_pings and ws.state == ConnectionState.OPEN:
                    stream.outbox += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                stream.close = event
                if ws.state == ConnectionState.REMOTE_CLOSING:
                    stream.outbox += ws.send(event.response())

    # -- waiting -------------------------------------------------------------------

    def handshake(self) -> Client:
        self.wait(lambda: self.settings_received, what="server SETTINGS")
        return self

    def answered(self, stream: Stream, timeout: float = 5.0) -> Stream:
        self.wait(
            lambda: stream.status is not None or stream.reset is not None,
            timeout,
            f"response on stream {stream.sid}",
        )
        return stream

    def accept(self, path: str, **kwargs: Any) -> Stream:
        stream = self.answered(self.open(path, **kwargs))
        assert stream.status == 200, (stream.status, stream.headers, bytes(stream.body))
        return stream

    def message(self, stream: Stream, timeout: float = 5.0) -> str | bytes:
        self.wait(
            lambda: len(stream.messages) > stream.taken,
            timeout,
            f"message {stream.taken} on stream {stream.sid}",
        )
        stream.taken += 1
        return stream.messages[stream.taken - 1]

    def finished(self, stream: Stream, timeout: float = 5.0) -> Stream:
        self.wait(lambda: stream.done, timeout, f"end of stream {stream.sid}")
        return stream

    def fetch(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        stream = self.finished(self.get(path), timeout)
        assert stream.status is not None, stream.reset
        return stream.status, bytes(stream.body)

    def events(self) -> list[str]:
        status, body = self.fetch("/events")
        assert status == 200
        return list(json.loads(body)["events"])

    def wait_events(self, wanted: list[str], timeout: float = 5.0) -> list[str]:
        """Poll ``/events`` (on this connection) until each of ``wanted`` was recorded."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if all(w in events for w in wanted):
                return events
            assert time.monotonic() < deadline, f"missing {wanted}; events: {events[-20:]}"
            self.read(0.05)

    def summary(self) -> list[str]:
        return [
            f"{s.sid}: status={s.status} msgs={len(s.messages)} close="
            f"{s.close.code if s.close else None} reset={s.reset} ended={s.ended}"
            for s in list(self.streams.values())[-10:]
        ]


def connect(port: int, **kwargs: Any) -> Client:
    return Client(port, **kwargs).handshake()


def access_lines(path: Path, needle: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if needle in line]


def wait_access(path: Path, needle: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (lines := access_lines(path, needle)):
        assert time.monotonic() < deadline, f"no access log line with {needle!r}"
        time.sleep(0.05)
    return lines[0]


ECHO_PATHS = ["/ws/echo", "/ws/sync-echo", "/ws/flask-sock-echo"]


def assert_closed(stream: Stream, code: int) -> None:
    """The close handshake ended the stream in order: a close frame with
    ``code``, END_STREAM, nothing after it.  The server follows its
    END_STREAM with RST_STREAM(NO_ERROR) when the client has not ended its
    side yet (RFC 9113 section 8.1: "stop sending"), which is allowed; a
    reset with an error code is not an orderly close (RFC 8441 section 5)."""
    assert stream.close is not None, f"no close frame on stream {stream.sid}"
    assert stream.close.code == code, (stream.sid, stream.close)
    assert stream.ended, f"stream {stream.sid} not ended"
    assert stream.reset in (None, ErrorCodes.NO_ERROR), (stream.sid, stream.reset)
    assert stream.after_close == b"", bytes(stream.after_close[:100])


# -- the handshake ---------------------------------------------------------------------


def test_server_announces_extended_connect(main):
    with connect(main.port) as client:
        assert client.settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1
        assert client.conn.remote_settings.enable_connect_protocol == 1


@pytest.mark.parametrize("path", ECHO_PATHS)
def test_echo_text_and_binary(main, path):
    with connect(main.port) as client:
        stream = client.accept(path)
        # RFC 8441 section 5: a 200, none of HTTP/1.1's handshake fields.
        assert b"sec-websocket-accept" not in stream.headers
        assert b"upgrade" not in stream.headers
        assert b"connection" not in stream.headers
        assert b"date" in stream.headers
        for message in ("héllo wörld", b"\x00\x01\xfe\xff", "", b"x" * 70_000):
            client.send(stream, message)
            assert client.message(stream) == message
        client.close_ws(stream, 1000, "done")
        client.finished(stream)
        assert_closed(stream, 1000)
        # The connection serves more streams afterwards.
        assert client.fetch("/plain") == (200, b"plain")


@pytest.mark.parametrize("path", ECHO_PATHS)
def test_one_mebibyte_each_way_through_flow_control(main, path):
    """1 MiB messages both ways: the client waits for the server's stream
    window (65,535 by default) to be re-opened as the app takes the data,
    and the server for the client's (h2 on this side fails the connection
    if the server ever sends past it)."""
    binary = os.urandom(MB)
    text = ("flow ✓ " * MB)[:MB]
    with connect(main.port) as client:
        stream = client.accept(path)
        client.send(stream, binary)
        assert client.message(stream, timeout=15) == binary
        client.send(stream, text)
        assert client.message(stream, timeout=15) == text
        assert stream.window_updates >= 8, stream.window_updates  # the server re-opened
        assert stream.received > 2 * MB  # past the client's 64 KiB window many times
        client.close_ws(stream)
        client.finished(stream)
        assert_closed(stream, 1000)


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [
        (b"v1.chat, v2.chat", "v1.chat"),
        (b"v9.chat, v2.chat", "v2.chat"),
        (b"v9.chat", None),
    ],
)
def test_subprotocol_negotiation(main, offer, chosen):
    with connect(main.port) as client:
        stream = client.accept("/ws/proto", extra=[(b"sec-websocket-protocol", offer)])
        if chosen is None:
            assert b"sec-websocket-protocol" not in stream.headers
        else:
            assert stream.headers[b"sec-websocket-protocol"] == chosen.encode()
        assert client.message(stream) == (chosen or "")


def test_permessage_deflate_negotiated_in_the_200(main):
    text = "compress me, " * 20_000
    with connect(main.port) as client:
        plain = client.accept("/ws/echo")
        assert b"sec-websocket-extensions" not in plain.headers  # not offered, not used
        stream = client.accept("/ws/echo", deflate=True)
        extensions = stream.headers.get(b"sec-websocket-extensions", b"")
        assert extensions.startswith(b"permessage-deflate"), stream.headers
        client.send(stream, text)
        assert client.message(stream) == text
        assert stream.received < len(text) // 20  # it came back compressed
        client.close_ws(stream)
        client.finished(stream)
        assert_closed(stream, 1000)


# -- refusals --------------------------------------------------------------------------


def refuse(client: Client, path: str, **kwargs: Any) -> Stream:
    stream = client.finished(client.open(path, **kwargs))
    assert stream.status is not None, f"reset {stream.reset} without a response"
    return stream


def test_before_request_hook_refuses_with_its_response(main):
    with connect(main.port) as client:
        for path in ("/ws/private", "/ws/private-sync", "/ws/private?token=wrong"):
            stream = refuse(client, path)
            assert stream.status == 401, path
            assert b"Unauthorized" in stream.body, bytes(stream.body)
            assert stream.messages == []
        stream = refuse(client, "/ws/members")
        assert stream.status == 302
        assert stream.headers[b"location"].endswith(b"/login?next=/ws/members")
        # The same stream with the token is accepted.
        ok = client.accept("/ws/private?token=s3cret")
        assert client.message(ok) == "secret"
        assert client.fetch("/plain") == (200, b"plain")


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/ws/nope", {}, 404),
        ("/plain", {}, 400),  # a plain HTTP route is no WebSocket
        ("/ws/echo", {"protocol": b"connect-udp"}, 501),
        ("/ws/echo", {"protocol": None}, 501),  # plain CONNECT: no tunnels here
        ("/ws/echo", {"method": b"GET"}, 400),  # :protocol belongs to CONNECT
        ("/ws/echo", {"method": b"POST"}, 400),
    ],
    ids=["unknown-path", "http-route", "other-protocol", "plain-connect", "get", "post"],
)
def test_refused_on_the_stream_connection_goes_on(main, path, kwargs, status):
    with connect(main.port) as client:
        stream = refuse(client, path, **kwargs)
        assert stream.status == status, (stream.status, bytes(stream.body))
        assert client.goaway is None
        assert client.fetch("/plain") == (200, b"plain")
        ok = client.accept("/ws/echo")
        client.send(ok, "still here")
        assert client.message(ok) == "still here"


def test_other_websocket_version_is_426_naming_13(main):
    """RFC 6455 section 4.4 (which RFC 8441 section 5 keeps): a version the
    server does not speak is answered 426 with ``Sec-WebSocket-Version: 13``,
    as the HTTP/1.1 answer is."""
    with connect(main.port) as client:
        answers = [refuse(client, "/ws/echo", version=v) for v in (b"8", b"14", b"")]
        assert [s.status for s in answers] == [426] * 3
        assert client.fetch("/plain") == (200, b"plain")
        for stream in answers:
            assert stream.headers.get(b"sec-websocket-version") == b"13", stream.headers


def test_missing_websocket_version_is_400(main):
    """No Sec-WebSocket-Version at all is a malformed handshake (RFC 6455
    section 4.2.1: 400), as on HTTP/1.1, not an unknown version."""
    with connect(main.port) as client:
        stream = refuse(client, "/ws/echo", version=None)
        assert stream.status == 400
        assert client.fetch("/plain") == (200, b"plain")


# -- the handler's life ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/boom", "/ws/sync-boom", "/ws/flask-sock-boom"])
def test_handler_exception_closes_1011(main, path):
    with connect(main.port) as client:
        stream = client.accept(path)
        client.send(stream, "explode")
        client.finished(stream)
        assert_closed(stream, 1011)
        assert stream.messages == []
        assert client.fetch("/plain") == (200, b"plain")


@pytest.mark.parametrize("route", ["track", "sync-track"])
def test_client_close_ends_the_handler(main, route):
    name = f"close-{tag()}"
    with connect(main.port) as client:
        stream = client.accept(f"/ws/{route}?tag={name}")
        client.send(stream, "one")
        assert client.message(stream) == "one"
        client.close_ws(stream, 1000, "bye")
        client.finished(stream)
        assert_closed(stream, 1000)
        events = client.wait_events([f"closed {name} 1000", f"finally {name}"])
        assert events.count(f"finally {name}") == 1


def test_end_stream_without_close_frame_is_1006(main):
    name = f"eos-{tag()}"
    with connect(main.port) as client:
        stream = client.accept(f"/ws/track?tag={name}")
        client.send(stream, "one")
        assert client.message(stream) == "one"
        client.end(stream)
        client.finished(stream)
        client.wait_events([f"closed {name} 1006", f"finally {name}"])


@pytest.mark.parametrize("route", ["track", "sync-track"])
def test_rst_stream_ends_the_handler_other_streams_go_on(main, route):
    name = f"rst-{tag()}"
    with connect(main.port) as client:
        other = client.accept("/ws/echo")
        stream = client.accept(f"/ws/{route}?tag={name}")
        client.send(stream, "before")
        assert client.message(stream) == "before"
        client.reset(stream, ErrorCodes.CANCEL)
        events = client.wait_events([f"closed {name} 1006", f"finally {name}"])
        assert events.count(f"finally {name}") == 1
        # The connection and its other WebSocket carry on.
        client.send(other, "after")
        assert client.message(other) == "after"
        assert client.fetch("/plain") == (200, b"plain")
        fresh = client.accept("/ws/echo")
        client.send(fresh, "fresh")
        assert client.message(fresh) == "fresh"
        assert client.goaway is None and not client.closed
        assert stream.messages == ["before"]


def test_twenty_websockets_and_plain_requests_on_one_connection(main):
    paths = [ECHO_PATHS[i % 3] for i in range(20)]
    with connect(main.port) as client:
        sockets = []
        gets = []
        for path in paths:
            sockets.append(client.open(path))
            gets.append(client.get("/plain"))
        client.wait(lambda: all(s.status is not None for s in sockets + gets), 10, "all responses")
        assert [s.status for s in sockets] == [200] * 20

        def echoed(count: int) -> bool:
            return all(len(s.messages) >= count for s in sockets)

        for round_ in range(3):
            for i, stream in enumerate(sockets):
                client.send(stream, f"{i}:{round_}" if i % 2 else f"{i}:{round_}".encode())
            gets.append(client.get("/sync-ping"))
            client.wait(functools.partial(echoed, round_ + 1), 10, "echo round")
        for i, stream in enumerate(sockets):
            expected = [f"{i}:{r}" if i % 2 else f"{i}:{r}".encode() for r in range(3)]
            assert stream.messages == expected, (i, stream.messages)
        client.wait(lambda: all(g.ended for g in gets), 10, "plain responses")
        assert all(g.status == 200 for g in gets)
        assert {bytes(g.body) for g in gets[:20]} == {b"plain"}
        for stream in sockets:
            client.close_ws(stream)
        client.wait(lambda: all(s.done for s in sockets), 10, "closes")
        for stream in sockets:
            assert_closed(stream, 1000)


def test_access_log_names_the_extended_connect(main, access_log):
    marker = tag()
    with connect(main.port) as client:
        stream = client.accept(f"/ws/echo?log={marker}")
        client.send(stream, "logged")
        assert client.message(stream) == "logged"
        client.close_ws(stream)
        client.finished(stream)
        refused = refuse(client, f"/ws/private?log={marker}")
        assert refused.status == 401
    line = wait_access(access_log, f'"CONNECT /ws/echo?log={marker} HTTP/2" 200')
    assert line.startswith("127.0.0.1 "), line
    wait_access(access_log, f'"CONNECT /ws/private?log={marker} HTTP/2" 401')


def test_access_log_names_a_websocket_that_did_not_close_in_order(main, access_log):
    """A WebSocket over HTTP/1.1 is logged when it ends, however it ends
    (WebSocketCycle.run); one on an HTTP/2 stream must be too when the
    client resets the stream or drops the connection instead of closing."""
    reset_tag, drop_tag = f"log-rst-{tag()}", f"log-drop-{tag()}"
    with connect(main.port) as watcher:
        with connect(main.port) as client:
            stream = client.accept(f"/ws/track?tag={reset_tag}")
            client.send(stream, "x")
            assert client.message(stream) == "x"
            client.reset(stream, ErrorCodes.CANCEL)
            dropped = client.accept(f"/ws/track?tag={drop_tag}")
            client.send(dropped, "y")
            assert client.message(dropped) == "y"
        watcher.wait_events([f"finally {reset_tag}", f"finally {drop_tag}"])
    time.sleep(0.3)
    lines = access_lines(access_log, f"/ws/track?tag={reset_tag}") + access_lines(
        access_log, f"/ws/track?tag={drop_tag}"
    )
    assert len(lines) == 2, f"logged: {lines}"
    assert all('HTTP/2" 200' in line for line in lines), lines


# -- bounds ----------------------------------------------------------------------------


def test_client_that_never_opens_its_window_gets_the_stream_reset(strict):
    """The client reads the socket but acknowledges nothing: the echo of a
    1 MiB message stops at its 64 KiB window, the handler's send waits
    SEND_TIMEOUT and the stream is reset.  The client keeps sending small
    messages meanwhile, so the stream is not idle and no ping is due."""
    name = f"noack-{tag()}"
    with connect(strict.port) as watcher, Client(strict.port, acknowledge=False) as client:
        client.handshake()
        stream = client.accept(f"/ws/track?tag={name}")
        client.send(stream, b"\x00" * MB)
        start = time.monotonic()
        while stream.reset is None and time.monotonic() - start < 3 * SEND_TIMEOUT + 2:
            client.send(stream, "still here")
            client.read(0.2)
        elapsed = time.monotonic() - start
        assert stream.reset == ErrorCodes.CANCEL, client.summary()
        assert SEND_TIMEOUT * 0.8 <= elapsed <= 3 * SEND_TIMEOUT + 1, elapsed
        assert stream.received == 65535  # exactly the window, not a byte more
        watcher.wait_events([f"finally {name}"])
        strict.wait_for_log(r"Send timeout to ip=127\.0\.0\.1")
        # Only the stream went: the connection still serves (its connection
        # window, though, is what the unread echo filled).
        assert not client.closed and client.goaway is None
        assert watcher.fetch("/plain") == (200, b"plain")


def test_pings_without_window_for_the_pongs_stop_being_read(main):
    """Every WebSocket ping makes the server owe a pong, which waits in the
    stream's outbox for the client's window.  A client that pings but never
    opens that window stops having its own window re-opened once the owed
    pongs reach the write buffer (256 KiB): it stalls instead of growing
    the server's outbox."""
    pings = 20_000  # 2.6 MB of pings, as many pongs owed
    with Client(main.port, acknowledge=False) as client:
        client.handshake()
        stream = client.accept("/ws/echo")
        ping = stream.ws.send(Ping(payload=b"p" * 125))
        stream.outbox += ping * pings
        client.pump()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            client.read(0.1)
            client.pump()
        sent = len(ping) * pings - len(stream.outbox)
        # Pongs of about 320 KiB of pings (write buffer plus the client's
        # window), and a window more in flight, are all the server takes.
        assert 0 < sent < 600 * 1024, sent
        assert not client.closed and stream.reset is None, client.summary()
    with connect(main.port) as other:
        assert other.fetch("/plain") == (200, b"plain")


def test_client_that_reads_nothing_is_dropped(strict):
    """A client with a huge window that stops reading the socket: the
    echoes pile up in the server's transport, the server stops reading
    too, and SEND_TIMEOUT later the connection is aborted; the handler
    ends."""
    name = f"noread-{tag()}"
    with (
        connect(strict.port) as watcher,
        Client(strict.port, window=2**31 - 1, rcvbuf=4096, send_timeout=0.5) as client,
    ):
        client.handshake()
        stream = client.accept(f"/ws/track?tag={name}")
        start = time.monotonic()
        for _ in range(8):  # within the server's 16 MiB window: no read needed
            client.send(stream, os.urandom(MB))
            if client.send_blocked:
                break
        watcher.wait_events([f"finally {name}"], timeout=SEND_TIMEOUT + 5)
        assert time.monotonic() - start < SEND_TIMEOUT + 5
        strict.wait_for_log(r"Send timeout to ip=127\.0\.0\.1: client read nothing")
        # What was queued before the abort drains, then the connection ends.
        client.wait(lambda: client.closed, 10, "connection closed")
        assert time.monotonic() - start < SEND_TIMEOUT + 8
    assert len(strict.worker_pids()) == 1  # the worker lived through it
    with connect(strict.port) as fresh:  # the watcher may have gone idle meanwhile
        assert fresh.fetch("/plain") == (200, b"plain")


def test_ping_timeout_resets_only_the_silent_stream(strict):
    silent_tag, live_tag = f"silent-{tag()}", f"live-{tag()}"
    with connect(strict.port) as client:
        silent = client.accept(f"/ws/track?tag={silent_tag}", answer_pings=False)
        live = client.accept(f"/ws/track?tag={live_tag}")
        start = time.monotonic()
        client.wait(lambda: silent.reset is not None, 4 * PING + 3, "the silent stream reset")
        elapsed = time.monotonic() - start
        assert silent.reset == ErrorCodes.CANCEL
        assert 2 * PING * 0.8 <= elapsed <= 4 * PING + 2, elapsed
        assert silent.pings >= 1
        # The one that answers stays open through several more pings.
        client.wait(lambda: live.pings >= silent.pings + 3, 4 * PING + 3, "pings to the live one")
        assert live.reset is None and not live.ended and live.close is None
        client.send(live, "alive")
        assert client.message(live) == "alive"
        events = client.wait_events([f"closed {silent_tag} 1006", f"finally {silent_tag}"])
        assert f"finally {live_tag}" not in events
        strict.wait_for_log(r"WebSocket ping timeout from ip=127\.0\.0\.1")
        client.close_ws(live)
        client.finished(live)
        assert_closed(live, 1000)


# -- a graceful stop -------------------------------------------------------------------


def test_graceful_stop_closes_1001_and_the_worker_exits(gunicorn):
    server = gunicorn("ws_app:app", *H2, "--graceful-timeout", "15")
    (pid,) = server.worker_pids()
    names = [f"stop-{tag()}", f"stop-{tag()}"]
    with connect(server.port) as client:
        streams = [client.accept(f"/ws/track?tag={names[0]}")]
        streams.append(client.accept(f"/ws/sync-track?tag={names[1]}"))
        streams += [client.accept("/ws/echo"), client.accept("/ws/flask-sock-echo")]
        for i, stream in enumerate(streams):
            client.send(stream, f"m{i}")
            assert client.message(stream) == f"m{i}"
        assert client.events()  # the worker is serving
        server.signal(signal.SIGTERM)
        client.wait(lambda: all(s.done for s in streams), 10, "streams ended")
        for stream in streams:
            assert_closed(stream, 1001)
        assert client.goaway is not None and client.goaway.error_code == 0
        assert client.goaway.last_stream_id >= streams[-1].sid
        client.wait(lambda: client.closed, 10, "connection closed")
    assert server.proc.wait(15) == 0
    log = server.log()
    assert f"Worker exiting (pid: {pid})" in log
    assert "Traceback" not in log, log


# -- a browser -------------------------------------------------------------------------


@needs_chromium
def test_chromium_websocket_over_tls(gunicorn, tmp_path):
    from playwright.sync_api import sync_playwright

    tls = tls_files(tmp_path)
    log = tmp_path / "access.log"
    server = gunicorn(
        "ws_app:app",
        "--http-protocols",
        "h2,h1",
        "--certfile",
        str(tls.cert),
        "--keyfile",
        str(tls.key),
        "--access-logfile",
        str(log),
    )
    name = f"browser-{tag()}"
    url = f"https://127.0.0.1:{server.port}"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.set_default_timeout(10_000)
            response = page.goto(f"{url}/?tag={name}", wait_until="load")
            assert response is not None and response.status == 200
            protocol = page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            assert protocol == "h2"
            page.wait_for_function("document.querySelectorAll('#echoes li').length >= 3")
            page.evaluate("window.sendText('from the test')")
            page.wait_for_function("document.querySelectorAll('#echoes li').length >= 4")
            items = page.evaluate(
                "[...document.querySelectorAll('#echoes li')].map((li) => li.textContent)"
            )
            assert items == ["hello 0", "hello 1", "hello 2", "from the test"]
            assert page.evaluate("window.wsState") == "open"
            page.evaluate("ws.close(1000, 'done')")
            page.wait_for_function("window.wsState.startsWith('closed')")
            assert page.evaluate("window.wsState") == "closed 1000"
            page.close()
            context.close()
        finally:
            browser.close()
    # Chromium (156 here) opens the WebSocket as an extended CONNECT stream
    # on the page's HTTP/2 connection, not as an HTTP/1.1 GET + 101.
    line = wait_access(log, f'"CONNECT /ws/track?tag={name} HTTP/2" 200')
    assert "HeadlessChrome" in line, line
    assert not access_lines(log, f"GET /ws/track?tag={name}"), log.read_text()
    with httpx.Client(http2=True, verify=False, timeout=5) as plain:
        answer = plain.get(f"{url}/events")
        assert answer.http_version == "HTTP/2"
        events = answer.json()["events"]
    assert f"open {name}" in events
    assert f"closed {name} 1000" in events and f"finally {name}" in events, events
