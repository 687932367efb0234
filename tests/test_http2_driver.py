"""The HTTP/2 drivers alone: bytes from an h2 client in, events out.

Every test runs against both engines (the worker's own frame layer and the
h2-based one), which must agree.

No sockets and no loop: what reaches the application, what the server
answers itself and where the flood bounds sit are decided here, so they are
tested here case by case; test_http2_e2e.py and test_http2_hostile.py run
the same cases through a real worker.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame

from flask_async_worker.protocols.errors import ProtocolError
from flask_async_worker.protocols.http2 import (
    H2Driver,
    H2Event,
    H2Limits,
    PeerGoAway,
    StreamData,
    StreamEnd,
    StreamRefused,
    StreamRequest,
    StreamReset,
    WindowOpened,
)
from flask_async_worker.protocols.http11_rules import Limits

from .conftest import H2DriverClass, driver_engine_fixture
from .conftest import h2_frames as frames

Driver: H2DriverClass = H2Driver
engine = driver_engine_fixture(__name__)


class Pair:
    """An h2 client wired to the driver by hand."""

    def __init__(self, limits: H2Limits | None = None, header_limits: Limits | None = None):
        self.server = Driver(limits or H2Limits(), header_limits or Limits())
        self.server.initiate()
        # Unvalidated: some tests send what a conforming client would not.
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.client.initiate_connection()
        self.now = 100.0
        self.to_server()
        self.to_client()
        self.to_server()  # the client's SETTINGS ACK
        # The handshake's frames count as control frames: start a new second.
        self.now += 1.5

    def to_server(self) -> list[H2Event]:
        return self.server.receive_data(self.client.data_to_send(), self.now)

    def to_client(self, data: bytes | None = None) -> list[h2.events.Event]:
        return self.client.receive_data(self.server.data_to_send() if data is None else data)

    def request(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        extra: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
        authority: bytes = b"example.com",
    ) -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", authority),
            (b":path", path),
            *(extra or []),
        ]
        self.client.send_headers(sid, headers, end_stream=end)
        return sid


def test_a_request_becomes_a_request_event():
    pair = Pair()
    sid = pair.request(b"/a/b%20c?x=1&y=2#frag", extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
    events = pair.to_server()
    start = next(e for e in events if isinstance(e, StreamRequest))
    request = start.request
    assert start.stream_id == sid
    assert start.ended
    assert request.method == b"GET"
    assert request.path == b"/a/b%20c"
    assert request.query == b"x=1&y=2"
    assert request.http_version == "2"
    assert request.authority == b"example.com"
    headers = dict(request.headers)
    # :authority stands in for Host (RFC 9113 section 8.3.1); split cookies
    # are joined for the application (section 8.2.3).
    assert request.headers[0] == (b"host", b"example.com")
    assert headers[b"cookie"] == b"a=1; b=2"
    assert not any(name.startswith(b":") for name, _ in request.headers)
    assert any(isinstance(e, StreamEnd) and e.stream_id == sid for e in events)


def test_body_arrives_and_window_reopens_only_when_acknowledged():
    pair = Pair()
    sid = pair.request(b"/upload", b"POST", end=False)
    pair.to_server()
    window = pair.client.local_flow_control_window(sid)
    assert window == 65535
    for _ in range(4):
        pair.client.send_data(sid, b"x" * 10000)
    events = pair.to_server()
    data = [e for e in events if isinstance(e, StreamData)]
    assert sum(len(e.data) for e in data) == 40000
    # Not acknowledged yet: the client's window stays spent.
    pair.to_client()
    assert pair.client.local_flow_control_window(sid) == window - 40000
    pair.server.acknowledge(sid, sum(e.flow for e in data))
    pair.to_client()
    assert pair.client.local_flow_control_window(sid) == window
    assert sum(len(e.data) for e in data) == 40000


def test_connection_window_is_opened_for_parallel_streams_within_its_bound():
    pair = Pair(H2Limits(initial_window_size=65535, max_concurrent_streams=10))
    assert pair.client.outbound_flow_control_window == 65535 * 10
    bounded = Pair(H2Limits(max_concurrent_streams=100, connection_window=256 * 1024))
    assert bounded.client.outbound_flow_control_window == 256 * 1024


@pytest.mark.parametrize(
    ("path", "method", "extra", "status"),
    [
        (b"/", b"CONNECT", [], 501),
        (b"*", b"GET", [], 400),
        (b"http://example.com/", b"GET", [], 400),
        (b"/a b", b"GET", [], 400),
        (b"/\x7f", b"GET", [], 400),
        (b"/" + b"a" * 5000, b"GET", [], 414),
        (b"/", b"GET", [(b"expect", b"something")], 417),
        (b"/", b"GET", [(b"x-big", b"v" * 9000)], 431),
        (b"/", b"GET", [(b"x-%d" % i, b"v") for i in range(101)], 431),
    ],
)
def test_refusals_answered_on_the_stream(path, method, extra, status):
    pair = Pair()
    if method == b"CONNECT":
        # Ordinary CONNECT carries only :method and :authority.
        sid = pair.client.get_next_available_stream_id()
        pair.client.send_headers(
            sid, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        )
    else:
        sid = pair.request(path, method, extra)
    events = pair.to_server()
    refused = [e for e in events if isinstance(e, StreamRefused)]
    assert [(e.stream_id, e.status) for e in refused] == [(sid, status)]
    assert not any(isinstance(e, StreamRequest) for e in events)
    # The connection goes on: the next stream is a request.
    pair.request(b"/ok")
    assert any(isinstance(e, StreamRequest) for e in pair.to_server())


def test_options_asterisk_is_allowed():
    pair = Pair()
    pair.request(b"*", b"OPTIONS")
    start = next(e for e in pair.to_server() if isinstance(e, StreamRequest))
    assert start.request.path == b"*"


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example")]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b":method", b"GET"), (b":path", b"/")], 400),  # no :scheme
        ([*BASE], 400),  # no :path
        ([*BASE, (b":path", b"")], 400),
        ([*BASE, (b":path", b"/"), (b":path", b"/x")], 400),
        ([*BASE, (b":path", b"/"), (b":status", b"200")], 400),
        ([*BASE, (b"x-a", b"1"), (b":path", b"/")], 400),  # pseudo after regular
        ([*BASE, (b":path", b"/"), (b"X-Upper", b"1")], 400),
        ([*BASE, (b":path", b"/"), (b"bad name", b"1")], 400),
        ([*BASE, (b":path", b"/"), (b"connection", b"keep-alive")], 400),
        ([*BASE, (b":path", b"/"), (b"transfer-encoding", b"chunked")], 400),
        ([*BASE, (b":path", b"/"), (b"te", b"gzip")], 400),
        ([*BASE, (b":path", b"/"), (b"x-a", b"a\r\nx-b: 1")], 400),
        ([*BASE, (b":path", b"/"), (b"x-a", b"nul\x00")], 400),
        ([*BASE, (b":path", b"/"), (b"x-a", b" padded")], 400),
        ([*BASE, (b":path", b"/"), (b"host", b"b.example")], 400),
        ([*BASE, (b":path", b"/"), (b"host", b"a.example"), (b"host", b"a.example")], 400),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")], 400),  # no host
        ([*BASE[:2], (b":authority", b"us@er"), (b":path", b"/")], 400),
        ([(b":method", b"G T"), *BASE[1:], (b":path", b"/")], 400),
        # RFC 8441: :protocol belongs to CONNECT, and only WebSocket is served.
        ([*BASE, (b":path", b"/"), (b":protocol", b"websocket")], 400),
        ([(b":method", b"CONNECT"), *BASE[1:], (b":path", b"/"), (b":protocol", b"h3")], 501),
        (
            [
                (b":method", b"CONNECT"),
                *BASE[1:],
                (b":path", b"/"),
                (b":protocol", b"websocket"),
                (b":protocol", b"websocket"),
            ],
            400,
        ),
    ],
)
def test_malformed_requests_are_refused_on_their_stream(headers, status):
    """RFC 9113 section 8.1.1: a malformed request is a stream error; the
    client gets the status and the connection carries on."""
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, headers, end_stream=True)
    events = pair.to_server()
    refused = [(e.stream_id, e.status) for e in events if isinstance(e, StreamRefused)]
    assert refused == [(sid, status)]
    assert not any(isinstance(e, StreamRequest) for e in events)
    pair.request(b"/ok")
    assert any(isinstance(e, StreamRequest) for e in pair.to_server())


def test_extended_connect_for_websocket_is_announced_and_accepted():
    """RFC 8441: the server's SETTINGS allow extended CONNECT, and a
    WebSocket's CONNECT stream reaches the server as an upgrade request
    whose stream stays open for the frames."""
    pair = Pair()
    assert pair.client.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        sid,
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", b"/chat?room=1"),
            (b":authority", b"a.example"),
            (b"sec-websocket-version", b"13"),
        ],
    )
    events = pair.to_server()
    start = next(e for e in events if isinstance(e, StreamRequest))
    request = start.request
    assert (request.method, request.path, request.query) == (b"CONNECT", b"/chat", b"room=1")
    assert request.upgrade and request.has_body
    assert not any(isinstance(e, (StreamRefused, StreamEnd)) for e in events)


def test_te_trailers_and_host_alone_are_accepted():
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        sid,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b"host", b"h.example:8080"),
            (b"te", b"trailers"),
        ],
        end_stream=True,
    )
    start = next(e for e in pair.to_server() if isinstance(e, StreamRequest))
    assert start.request.authority == b"h.example:8080"
    assert (b"host", b"h.example:8080") in start.request.headers


def test_broken_frames_end_the_connection():
    pair = Pair()
    pair.client.send_headers(1, [*BASE, (b":path", b"/")], end_stream=True)
    data = pair.client.data_to_send()
    # A DATA frame on stream 0 is a connection error (RFC 9113 section 6.1).
    bad = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
    with pytest.raises(ProtocolError):
        pair.server.receive_data(data + bad, pair.now)
    goaway = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == ErrorCodes.PROTOCOL_ERROR


def test_garbage_instead_of_preface():
    driver = Driver(H2Limits(), Limits())
    driver.initiate()
    with pytest.raises(ProtocolError):
        driver.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)


def test_rapid_reset_is_bounded_per_second():
    pair = Pair(H2Limits(max_resets=20))
    for _ in range(20):
        sid = pair.request(b"/slow")
        pair.client.reset_stream(sid, ErrorCodes.CANCEL)
    events = pair.to_server()
    assert sum(isinstance(e, StreamReset) for e in events) == 20
    # A second later the count starts again ...
    pair.now += 1.5
    for _ in range(20):
        pair.client.reset_stream(pair.request(b"/slow"), ErrorCodes.CANCEL)
    pair.to_server()
    # ... but one more within the same second is one too many.
    pair.client.reset_stream(pair.request(b"/slow"), ErrorCodes.CANCEL)
    with pytest.raises(ProtocolError, match="too many streams reset"):
        pair.to_server()
    goaway = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_ping_flood_is_bounded():
    pair = Pair(H2Limits(max_control_frames=50))
    for i in range(50):
        pair.client.ping(b"%08d" % i)
    pair.to_server()
    pair.client.ping(b"one more")
    with pytest.raises(ProtocolError, match="too many control frames"):
        pair.to_server()


def test_send_data_respects_the_window_and_frame_size():
    pair = Pair()
    sid = pair.request(b"/download")
    pair.to_server()
    assert pair.server.send_headers(sid, 200, [(b"content-type", b"x/y")], end_stream=False)
    body = memoryview(b"z" * 100_000)
    sent = pair.server.send_data(sid, body, end_stream=True)
    assert sent == 65535  # the client's initial window
    out = frames(pair.server.data_to_send())
    data_frames = [f for f in out if isinstance(f, DataFrame)]
    assert max(len(f.data) for f in data_frames) <= 16384
    assert "END_STREAM" not in data_frames[-1].flags
    assert pair.server.window(sid) == 0


def test_window_update_is_reported_and_the_rest_goes_with_end_stream():
    pair = Pair()
    sid = pair.request(b"/download")
    pair.to_server()
    pair.server.send_headers(sid, 200, [], end_stream=False)
    body = b"z" * 70_000
    sent = pair.server.send_data(sid, memoryview(body), end_stream=True)
    for event in pair.to_client():
        if isinstance(event, h2.events.DataReceived):
            pair.client.acknowledge_received_data(event.flow_controlled_length, sid)
    events = pair.to_server()
    assert any(isinstance(e, WindowOpened) for e in events)
    rest = pair.server.send_data(sid, memoryview(body[sent:]), end_stream=True)
    assert sent + rest == len(body)
    ended = [e for e in pair.to_client() if isinstance(e, h2.events.StreamEnded)]
    assert ended


def test_hop_by_hop_response_headers_are_dropped():
    pair = Pair()
    sid = pair.request()
    pair.to_server()
    pair.server.send_headers(
        sid, 200, [(b"connection", b"close"), (b"x-kept", b"1")], end_stream=True
    )
    response = next(e for e in pair.to_client() if isinstance(e, h2.events.ResponseReceived))
    names = [n for n, _ in response.headers]
    assert b"connection" not in names
    assert b"x-kept" in names


def test_sending_on_a_reset_stream_says_gone():
    pair = Pair()
    sid = pair.request(b"/x")
    pair.to_server()
    pair.client.reset_stream(sid, ErrorCodes.CANCEL)
    assert any(isinstance(e, StreamReset) for e in pair.to_server())
    assert not pair.server.send_headers(sid, 200, [], end_stream=False)
    assert pair.server.send_data(sid, memoryview(b"x"), end_stream=True) == -1
    assert pair.server.window(sid) == -1


def test_graceful_goaway_lets_started_streams_finish():
    pair = Pair()
    sid = pair.request(b"/slow")
    pair.to_server()
    pair.server.goaway()
    out = pair.server.data_to_send()
    goaway = [f for f in frames(out) if isinstance(f, GoAwayFrame)]
    assert goaway[0].last_stream_id == sid
    assert goaway[0].error_code == ErrorCodes.NO_ERROR
    # The stream in flight can still be answered in full.
    assert pair.server.send_headers(sid, 200, [], end_stream=True)
    headers = [f for f in frames(pair.server.data_to_send()) if f.type == 1]
    assert [f.stream_id for f in headers] == [sid]
    assert "END_STREAM" in headers[0].flags


def test_response_before_the_body_leaves_the_client_side_open():
    pair = Pair()
    sid = pair.request(b"/upload", b"POST", end=False)
    pair.to_server()
    pair.server.send_headers(sid, 413, [], end_stream=True)
    # The client may still send: the server resets with NO_ERROR (RFC 9113
    # section 8.1) so that it stops.
    assert pair.server.remote_open(sid)
    pair.server.reset(sid, ErrorCodes.NO_ERROR)
    resets = [f for f in frames(pair.server.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert resets[-1].error_code == ErrorCodes.NO_ERROR


def test_client_goaway_is_reported():
    pair = Pair()
    pair.client.close_connection()
    assert any(isinstance(e, PeerGoAway) for e in pair.to_server())


def test_http2_engine_setting(engine: str) -> None:
    from flask_async_worker.settings import Extra

    assert Extra.from_environ({}).http2_engine == "native"
    env = {"FLASK_ASYNC_WORKER_HTTP2_ENGINE": f" {engine.upper()} "}
    assert Extra.from_environ(env).http2_engine == engine
    with pytest.raises(ValueError, match="FLASK_ASYNC_WORKER_HTTP2_ENGINE"):
        Extra.from_environ({"FLASK_ASYNC_WORKER_HTTP2_ENGINE": "nghttp2"})
