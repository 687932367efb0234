"""TLS settings and the PROXY protocol, against a real gunicorn arbiter.

Certificates come from ``trustme``: one CA per test module, a server
certificate for 127.0.0.1 and a client certificate, written to a temporary
directory for gunicorn's ``--certfile``/``--keyfile``/``--ca-certs``.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme

from .conftest import APPS, Gunicorn, raw_request, status_of

SCOPE = b"GET /scope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def start_all(gunicorn: type[Gunicorn], *configs: tuple[Any, ...]) -> list[Gunicorn]:
    """Start several arbiters at once, then wait for each to serve."""
    servers = [gunicorn(*config, wait=False) for config in configs]
    for server in servers:
        server.wait_ready()
    return servers


def body_json(response: bytes) -> dict[str, Any]:
    assert status_of(response) == 200, response[:300]
    return json.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


# -- PROXY protocol ------------------------------------------------------------------

V1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\n"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V2 = (
    V2_SIG
    + bytes([0x21, 0x11])  # version 2 PROXY command; TCP over IPv4
    + (12).to_bytes(2, "big")
    + socket.inet_aton("1.2.3.4")
    + socket.inet_aton("5.6.7.8")
    + (1111).to_bytes(2, "big")
    + (80).to_bytes(2, "big")
)


def test_proxy_protocol(gunicorn, tmp_path):
    access = tmp_path / "access.log"
    v1, v2, auto, disallowed = start_all(
        gunicorn,
        (
            "asgi_app:app",
            "--proxy-protocol",
            "v1",
            "--access-logfile",
            str(access),
            "--access-logformat",
            "%(h)s %(r)s %(s)s",
        ),
        ("asgi_app:app", "--proxy-protocol", "v2"),
        ("asgi_app:app", "--proxy-protocol", "auto"),
        ("asgi_app:app", "--proxy-protocol", "v1", "--proxy-allow-from", "10.0.0.1"),
    )
    # v1: the application sees the client the balancer names.
    scope = body_json(raw_request(v1.port, V1 + SCOPE))
    assert scope["client"] == ["1.2.3.4", 1111]
    pid = scope["pid"]
    # gunicorn's access log (the h atom) names it too.
    with open(access) as f:
        assert any(line.startswith("1.2.3.4 GET /scope HTTP/1.1 200") for line in f)
    # v2 (binary), with the header and the request in separate packets.
    with socket.create_connection(("127.0.0.1", v2.port), timeout=5) as sock:
        sock.sendall(V2[:10])
        sock.sendall(V2[10:])
        sock.sendall(SCOPE)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert body_json(data)["client"] == ["1.2.3.4", 1111]
    # auto: either version.
    assert body_json(raw_request(auto.port, V1 + SCOPE))["client"] == ["1.2.3.4", 1111]
    assert body_json(raw_request(auto.port, V2 + SCOPE))["client"] == ["1.2.3.4", 1111]
    # Malformed PROXY lines, and the wrong version for the mode: 400.
    for bad in (
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1111 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 99999\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1111 80\r\n",
        V2,
    ):
        assert status_of(raw_request(v1.port, bad + SCOPE)) == 400, bad
    assert status_of(raw_request(v2.port, V1 + SCOPE)) == 400
    # The worker survived every one of them.
    assert body_json(raw_request(v1.port, V1 + SCOPE))["pid"] == pid
    assert len(v1.worker_pids()) == 1
    # From a peer outside proxy_allow_ips the header is forbidden (as gunicorn).
    answer = raw_request(disallowed.port, V1 + SCOPE)
    assert status_of(answer) == 403
    assert body_json(raw_request(disallowed.port, SCOPE))["client"][0] == "127.0.0.1"


def test_proxy_protocol_keeps_the_balancer_trusted_for_scheme_headers(gunicorn):
    """gunicorn decides forwarded_allow_ips on the socket peer (the balancer),
    not on the client a PROXY header names: a balancer that sends PROXY and
    sets X-Forwarded-Proto keeps working."""
    server = gunicorn("asgi_app:app", "--proxy-protocol", "v1")
    request = (
        b"GET /scope HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
    )
    scope = body_json(raw_request(server.port, V1 + request))
    assert scope["client"] == ["1.2.3.4", 1111]
    assert scope["scheme"] == "https"


# -- TLS -------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    authority: trustme.CA

    def args(self) -> tuple[str, ...]:
        return ("--certfile", str(self.cert), "--keyfile", str(self.key))

    def client_context(self, **kwargs: Any) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        for name, value in kwargs.items():
            setattr(context, name, value)
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    path = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.com")
    files = Certs(
        ca=path / "ca.pem",
        cert=path / "server.pem",
        key=path / "server.key",
        client_cert=path / "client.pem",
        client_key=path / "client.key",
        authority=ca,
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.key))
    with open(files.cert, "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    client.private_key_pem.write_to_path(str(files.client_key))
    with open(files.client_cert, "wb") as f:
        for blob in client.cert_chain_pems:
            f.write(blob.bytes())
    return files


@dataclass
class Session:
    version: str | None
    cipher: str | None
    alpn: str | None


def tls_exchange(
    port: int, context: ssl.SSLContext, request: bytes = SCOPE
) -> tuple[bytes, Session]:
    """Handshake, send ``request``, read to EOF: the answer and what was negotiated."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        cipher = sock.cipher()
        session = Session(
            sock.version(), cipher[0] if cipher else None, sock.selected_alpn_protocol()
        )
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            data += chunk
        return data, session
    finally:
        sock.close()


def tls_refused(port: int, context: ssl.SSLContext) -> bool:
    """True when no HTTP answer comes back over TLS with this client context."""
    try:
        data, _ = tls_exchange(port, context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return not data.startswith(b"HTTP/")


def test_tls_serves_https(gunicorn, certs):
    server, h2_configured = start_all(
        gunicorn,
        ("asgi_app:app", *certs.args()),
        ("asgi_app:app", *certs.args(), "--http-protocols", "h2,h1"),
    )
    url = f"https://127.0.0.1:{server.port}"
    with httpx.Client(verify=certs.client_context()) as client:
        r = client.get(url + "/scope")
        assert r.status_code == 200
        assert r.json()["scheme"] == "https"
        assert client.get(url + "/").text == "hello"
        assert client.post(url + "/echo", content=b"z" * 200_000).content == b"z" * 200_000
    # ALPN offers what http_protocols names: gunicorn's default is HTTP/1.1
    # only; with h2 listed first, a client offering both gets HTTP/2 (served
    # in test_http2_e2e.py).
    context = certs.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    data, session = tls_exchange(server.port, context)
    assert session.alpn == "http/1.1"
    assert body_json(data)["scheme"] == "https"
    context = certs.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", h2_configured.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    # Plain HTTP on the TLS port gets no HTTP answer, and the worker carries on.
    assert not raw_request(server.port, SCOPE, timeout=2).startswith(b"HTTP/1.1 200")
    assert body_json(tls_exchange(server.port, certs.client_context())[0])["scheme"] == "https"
    assert len(server.worker_pids()) == 1


def test_tls_client_certificates_ciphers_and_ssl_context_hook(gunicorn, certs):
    mutual, ciphers, hooked = start_all(
        gunicorn,
        ("asgi_app:app", *certs.args(), "--cert-reqs", "2", "--ca-certs", str(certs.ca)),
        ("asgi_app:app", *certs.args(), "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("asgi_app:app", *certs.args(), "-c", str(APPS / "contract_tls_conf.py")),
    )
    # --cert-reqs 2 (CERT_REQUIRED): no client certificate, no answer...
    assert tls_refused(mutual.port, certs.client_context())
    # ...a certificate from an unknown CA neither...
    stranger = trustme.CA().issue_cert("stranger@example.com")
    context = certs.client_context()
    stranger.configure_cert(context)
    assert tls_refused(mutual.port, context)
    # ...one issued by the --ca-certs authority is accepted.
    context = certs.client_context()
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    data, _ = tls_exchange(mutual.port, context)
    assert body_json(data)["scheme"] == "https"
    assert len(mutual.worker_pids()) == 1

    # --ciphers: a TLS 1.2 client offering only another suite is refused.
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    context = certs.client_context(**tls12)
    context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    assert tls_refused(ciphers.port, context)
    # (the same client is fine with a server that has no --ciphers)
    context = certs.client_context(**tls12)
    context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    data, session = tls_exchange(mutual.port, context)
    assert status_of(data) == 200
    assert session.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    # Offered both, the server's --ciphers choice is the one negotiated.
    context = certs.client_context(**tls12)
    context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    data, session = tls_exchange(ciphers.port, context)
    assert status_of(data) == 200
    assert session.version == "TLSv1.2"
    assert session.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"

    # The ssl_context(conf, default_ssl_context_factory) hook is applied:
    # it sets TLS 1.3 as the minimum.
    assert tls_refused(hooked.port, certs.client_context(**tls12))
    data, session = tls_exchange(hooked.port, certs.client_context())
    assert session.version == "TLSv1.3"
    assert body_json(data)["scheme"] == "https"


def test_proxy_protocol_then_http2_prior_knowledge(gunicorn):
    """A balancer speaking PROXY v1 and then cleartext HTTP/2 (Envoy-style):
    the preface is looked for after the PROXY header, and the stream's
    client is the one the header names."""
    server = gunicorn(
        "asgi_app:app",
        "--proxy-protocol",
        "v1",
        "--http-protocols",
        "h2,h1",
        "--http2-cleartext",
        "prior-knowledge",
    )
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.send_headers(
        1,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"x"),
            (b":path", b"/scope"),
        ],
        end_stream=True,
    )
    body = b""
    ended = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(V1 + client.data_to_send())
        while not ended:
            data = sock.recv(65536)
            assert data, "connection closed before the response ended"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    client.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(client.data_to_send())
    scope = json.loads(body)
    assert scope["client"] == ["1.2.3.4", 1111]
    assert scope["http_version"] == "2"
