"""HTTP/2 end to end: real gunicorn arbiters with the worker, real clients
(httpx with h2, curl, h2load), over TLS with ALPN and over cleartext with
prior knowledge or ``Upgrade: h2c`` — the gunicorn settings that choose them
(``--http-protocols``, ``--http2-cleartext``) mean what they mean to gunicorn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Gunicorn, engine_env, raw_request, serving, status_of, tls_files

CHUNK = bytes(range(256)) * 256


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tls = tls_files(tmp_path_factory.mktemp("h2certs"))
    return tls.ca, tls.cert, tls.key


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory, http2_engine: str) -> Path:
    return tmp_path_factory.mktemp(f"h2marks-{http2_engine}")


@pytest.fixture(scope="module")
def servers(
    certs: tuple[Path, Path, Path],
    marks: Path,
    tmp_path_factory: pytest.TempPathFactory,
    http2_engine: str,
) -> Iterator[dict[str, Gunicorn]]:
    """Arbiters started together: prior knowledge, both cleartext mechanisms,
    TLS offering h2 first, TLS with gunicorn's default (HTTP/1.1 only), and
    h2 enabled without cleartext HTTP/2."""
    _, cert, key = certs
    env = engine_env(http2_engine, {"H2_TEST_MARKS": str(marks)})
    access = tmp_path_factory.mktemp("h2logs") / "access.log"
    h2 = ("--http-protocols", "h2,h1")
    tls = ("--certfile", str(cert), "--keyfile", str(key))
    configs = {
        "prior": (*h2, "--http2-cleartext", "prior-knowledge", "--access-logfile", str(access)),
        "both": (*h2, "--http2-cleartext", "both"),
        "tls": (*h2, *tls),
        "tls_h1": tls,
        "plain": (*h2,),
    }
    started = {
        name: Gunicorn("h2_app:app", "--threads", "4", *args, env=env, wait=False)
        for name, args in configs.items()
    }
    started["prior"].access_log = access  # type: ignore[attr-defined]
    with serving(started):
        yield started


def h2load(*args: str, timeout: float = 60) -> str:
    """Run h2load (installed by make system-deps); its report."""
    path = shutil.which("h2load")
    assert path, "h2load (nghttp2-client) is installed by make system-deps"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout).stdout


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def h2_client(base: str, **kwargs: object) -> httpx.Client:
    """httpx speaking HTTP/2 only: prior knowledge on http://, ALPN on https://."""
    return httpx.Client(base_url=base, http1=False, http2=True, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_prior_knowledge_serves_sync_and_async_views(servers):
    server = servers["prior"]
    with h2_client(server.url) as client:
        for path, text in (("/hello", "hello"), ("/ahello", "ahello")):
            response = client.get(path)
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200
            assert response.text == text
        scope = client.get("/scope?a=1&b=%20", cookies={"k": "v"}).json()
    assert scope["protocol"] == "HTTP/2"
    assert scope["host"] == f"127.0.0.1:{server.port}"  # from :authority
    assert scope["scheme"] == "http"
    assert scope["query"] == "a=1&b=%20"
    assert scope["cookie"] == "k=v"
    assert scope["url"].startswith(f"http://127.0.0.1:{server.port}/scope")


def test_tls_alpn_offers_h2_and_http11(servers, certs):
    server = servers["tls"]
    base = f"https://127.0.0.1:{server.port}"
    context = client_context(certs[0])
    with httpx.Client(base_url=base, http2=True, verify=context, timeout=10) as client:
        response = client.get("/scope")
        assert response.http_version == "HTTP/2"
        assert response.json()["scheme"] == "https"
        assert response.json()["protocol"] == "HTTP/2"
    with httpx.Client(base_url=base, http2=False, verify=context, timeout=10) as client:
        response = client.get("/scope")
        assert response.http_version == "HTTP/1.1"
        assert response.json()["protocol"] == "HTTP/1.1"


def test_gunicorn_default_protocols_keep_http11_only(servers, certs):
    server = servers["tls_h1"]
    base = f"https://127.0.0.1:{server.port}"
    with httpx.Client(base_url=base, http2=True, verify=client_context(certs[0])) as client:
        assert client.get("/hello").http_version == "HTTP/1.1"
    # Nor is the cleartext preface taken for HTTP/2 where it was not enabled.
    # Nor does a cleartext port take the preface for HTTP/2 unless
    # http2_cleartext says so: the HTTP/1.1 parser refuses it.
    response = raw_request(servers["plain"].port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert status_of(response) in (400, 505)


def test_prior_knowledge_port_refuses_http11_from_trusted_peer(servers):
    """gunicorn's rule: a trusted peer on a prior-knowledge port must speak
    HTTP/2; anything else is a 400, not a silent downgrade."""
    response = raw_request(servers["prior"].port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 400
    servers["prior"].wait_for_log("expected the HTTP/2 connection preface")


def test_both_serves_http11_prior_knowledge_and_upgrade(servers):
    server = servers["both"]
    response = raw_request(
        server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 200
    with h2_client(server.url) as client:
        assert client.get("/hello").http_version == "HTTP/2"
    curl = shutil.which("curl")
    assert curl, "curl is installed by make system-deps"
    out = subprocess.run(
        [curl, "-sS", "-i", "--http2", f"{server.url}/scope?up=1"],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols"), out[:200]
    _head, found, body = out.partition(b"\r\n\r\nHTTP/2 200")
    assert found, out[:300]
    scope = json.loads(body.partition(b"\r\n\r\n")[2])
    assert scope["protocol"] == "HTTP/2"
    assert scope["query"] == "up=1"


def test_curl_prior_knowledge(servers):
    curl = shutil.which("curl")
    assert curl
    out = subprocess.run(
        [curl, "-sS", "-i", "--http2-prior-knowledge", f"{servers['prior'].url}/hop-by-hop"],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    assert out.startswith(b"HTTP/2 200")
    head = out.partition(b"\r\n\r\n")[0].lower()
    # Connection-specific fields have no meaning in HTTP/2 (RFC 9113
    # section 8.2.2): dropped, not a protocol error for the client.
    assert b"connection:" not in head
    assert b"keep-alive:" not in head


def test_hundred_concurrent_streams_share_one_connection(servers):
    """100 async views sleeping 1 s, multiplexed on one connection, finish
    together: no stream waits for another."""
    server = servers["prior"]

    async def main() -> tuple[float, list[int]]:
        async with httpx.AsyncClient(
            base_url=server.url, http1=False, http2=True, timeout=20
        ) as client:
            await client.get("/hello")  # one connection, opened before the burst
            started = time.monotonic()
            responses = await asyncio.gather(*(client.get("/sleep?s=1") for _ in range(100)))
            return time.monotonic() - started, [r.status_code for r in responses]

    elapsed, statuses = asyncio.run(main())
    assert statuses == [200] * 100
    assert elapsed < 3.0, elapsed


@pytest.mark.parametrize("path", ["/download", "/adownload"])
def test_large_download_under_flow_control(servers, path):
    """16 MiB through 64 KiB stream windows: every byte arrives in order."""
    with (
        h2_client(servers["prior"].url) as client,
        client.stream("GET", f"{path}?mib=16") as response,
    ):
        assert response.status_code == 200
        digest = hashlib.sha256()
        size = 0
        for chunk in response.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == 16 * 1024 * 1024
    assert digest.hexdigest() == hashlib.sha256(CHUNK * 256).hexdigest()


@pytest.mark.parametrize("path", ["/echo", "/echo-sync"])
def test_upload_is_acknowledged_as_the_app_reads(servers, path):
    """8 MiB up a 64 KiB window: the window re-opens only as the view reads,
    so the upload completes only if acknowledgement follows consumption."""
    data = os.urandom(8 * 1024 * 1024)
    with h2_client(servers["prior"].url) as client:
        response = client.post(path, content=data)
    assert response.status_code == 200
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_parallel_uploads_and_downloads_on_one_connection(servers, tmp_path):
    """Streams share the connection window: parallel downloads (httpx) and
    parallel uploads (h2load: httpx's HTTP/2 client stalls on concurrent
    uploads of its own, a client-side bug) all complete."""
    server = servers["prior"]

    async def downloads() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, http1=False, http2=True, timeout=30
        ) as client:
            return await asyncio.gather(*(client.get("/adownload?mib=4") for _ in range(4)))

    for response in asyncio.run(downloads()):
        assert response.content == CHUNK * 64
    blob = tmp_path / "upload.bin"
    blob.write_bytes(os.urandom(2 * 1024 * 1024))
    for path in ("/echo", "/echo-sync"):
        report = h2load("-c", "1", "-m", "8", "-n", "24", "-d", str(blob), server.url + path)
        assert "24 succeeded, 0 failed, 0 errored" in report, report
        assert "24 2xx" in report, report


def test_errors_head_and_no_body_statuses(servers):
    with h2_client(servers["prior"].url) as client:
        boom = client.get("/boom")
        assert boom.status_code == 500
        head = client.head("/scope")
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
        no_content = client.get("/status/204")
        assert no_content.status_code == 204
        assert no_content.content == b""
        # The connection survived all of it.
        assert client.get("/hello").text == "hello"


def test_client_leaving_closes_the_stream_generator(servers, marks):
    """A client gone in the middle of an SSE stream is a disconnect for the
    stream's app: its generator is closed.  (A reset of the one stream is in
    test_http2_hostile.py: httpx never resets a stream it stops reading.)"""
    client = h2_client(servers["prior"].url)
    with client.stream("GET", "/sse?name=h2leave") as response:
        lines = response.iter_lines()
        assert next(lines) == "data: 0"
        client.close()
    deadline = time.monotonic() + 3
    while not (marks / "h2leave.closed").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (marks / "h2leave.closed").exists()


def test_access_log_says_http2(servers):
    server = servers["prior"]
    with h2_client(server.url) as client:
        client.get("/hello?log=h2")
    log: Path = server.access_log
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        text = log.read_text()
        if "/hello?log=h2" in text:
            break
        time.sleep(0.05)
    line = next(li for li in log.read_text().splitlines() if "/hello?log=h2" in li)
    assert re.search(r'"GET /hello\?log=h2 HTTP/2(\.0)?" 200', line), line


def test_h2load_many_streams(servers):
    report = h2load("-c", "4", "-m", "16", "-n", "4000", f"{servers['prior'].url}/ahello")
    assert "4000 succeeded, 0 failed, 0 errored" in report, report


def test_sigterm_finishes_streams_in_flight(gunicorn):
    """Graceful stop on HTTP/2: GOAWAY, then the streams already started
    complete before the worker leaves.  (curl: httpx's HTTP/2 client fails
    every open stream on any GOAWAY, even one that lets them finish.)"""
    server = gunicorn(
        "h2_app:app", "--http-protocols", "h2", "--http2-cleartext", "prior-knowledge"
    )
    curl = shutil.which("curl")
    assert curl
    proc = subprocess.Popen(
        [curl, "-sS", "-i", "--http2-prior-knowledge", f"{server.url}/sleep?s=1.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.6)
    server.signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert out.startswith(b"HTTP/2 200"), (out, err)
    assert b'"slept":1.5' in out
    assert server.proc.wait(10) == 0


def test_max_requests_retires_the_worker_between_http2_connections(gunicorn):
    """--max-requests on HTTP/2: the worker that reached it answers the
    request that did so, sends GOAWAY and is replaced; connections opened
    after are served by its successor."""
    server = gunicorn(
        "h2_app:app",
        "--max-requests",
        "10",
        "--http-protocols",
        "h2",
        "--http2-cleartext",
        "prior-knowledge",
    )
    for _ in range(6):
        # Five requests per connection: every tenth ends a connection.
        report = h2load("-c", "1", "-m", "1", "-n", "5", f"{server.url}/ahello", timeout=30)
        assert "5 succeeded, 0 failed, 0 errored" in report, report
    server.wait_for_log(r"Booting worker with pid", count=3)
    assert server.log().count("Autorestarting worker after current request.") >= 2


def test_expect_100_continue_over_http2(servers, tmp_path):
    """The interim 100 goes out when the app reads the body, as on HTTP/1.1."""
    blob = tmp_path / "body.bin"
    data = os.urandom(300_000)
    blob.write_bytes(data)
    curl = shutil.which("curl")
    assert curl
    out = subprocess.run(
        [
            curl,
            "-sS",
            "-i",
            "--http2-prior-knowledge",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{blob}",
            f"{servers['prior'].url}/echo",
        ],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    assert out.startswith(b"HTTP/2 100"), out[:200]
    assert b"HTTP/2 200" in out
    body = json.loads(out.rpartition(b"\r\n\r\n")[2])
    assert body == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
