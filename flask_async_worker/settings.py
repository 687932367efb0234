"""Every bound and timeout the worker applies, in one place.

Most come straight from gunicorn's own settings, so an existing deployment's
command line keeps meaning what it meant.  The few a gunicorn setting does
not cover (how long a client may take to send its request head, how much of
a body is buffered before reading pauses, ...) are read from environment
variables named ``FLASK_ASYNC_WORKER_<NAME>``: gunicorn builds its command
line parser before it imports the worker class, so a worker cannot add flags
of its own, but ``--env FLASK_ASYNC_WORKER_HEADER_TIMEOUT=5`` (or ``raw_env``
in a config file) reaches the worker process.  The table in ``docs/settings.rst``
lists them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .protocols.http2 import H2Limits
from .protocols.http11_rules import Limits

ENV_PREFIX = "FLASK_ASYNC_WORKER_"
#: The HTTP/1.1 drivers: ``auto`` is httptools when it can be imported.
HTTP_PARSERS = ("auto", "httptools", "h11")
#: The HTTP/2 drivers: the worker's own frame layer, or h2's.
HTTP2_ENGINES = ("native", "h2")


@dataclass(frozen=True)
class Extra:
    """The worker's own settings (environment variables), with safe defaults."""

    #: Seconds a client has to send a complete request head once it has
    #: started one, or to start one on a new connection (slowloris bound).
    header_timeout: float = 10.0
    #: Seconds the application may wait for the next piece of a request body
    #: before the client is answered 408 and disconnected.
    body_timeout: float = 30.0
    #: Seconds a response write may wait for a client that does not read
    #: before the connection is dropped.
    send_timeout: float = 30.0
    #: Request body bytes buffered ahead of the application before the
    #: server stops reading from the socket (upload backpressure).
    body_buffer: int = 256 * 1024
    #: Response bytes queued in the transport before ``send()`` waits for
    #: the client to read (download backpressure).
    write_buffer: int = 256 * 1024
    #: Bytes of pipelined requests read ahead while one request is served.
    pipeline_buffer: int = 64 * 1024
    #: Seconds idle keep-alive connections stay open after a graceful stop
    #: begins, so a request already on the wire is answered (with
    #: ``Connection: close``) instead of meeting a reset.
    drain_window: float = 1.0
    #: Seconds the rest of an unread request body is read and discarded
    #: before closing, so the response is not lost to a reset.
    linger_timeout: float = 2.0
    #: Seconds a TLS handshake may take.
    ssl_handshake_timeout: float = 10.0
    #: Seconds between timeout sweeps and heartbeats; timeouts are enforced
    #: with this resolution.
    tick: float = 0.5
    #: The event loop silent for longer than this (seconds) is reported in
    #: the error log with the stack of the code that blocked it.
    blocking_threshold: float = 0.5
    #: Which parser reads HTTP/1.1: ``httptools`` (llhttp, several times
    #: faster per request) or ``h11`` (pure Python); ``auto`` picks httptools
    #: when it is installed.  Both refuse the same malformed requests.
    http_parser: str = "auto"
    #: Which implementation speaks HTTP/2: ``native`` (the worker's own
    #: frame layer, with hpack) or ``h2`` (the h2 library, several times
    #: slower per request).  Both refuse the same malformed input.
    http2_engine: str = "native"
    #: The first-generation threshold of Python's cyclic garbage collector
    #: in the worker (Python's default is 700; see docs/settings.rst).
    gc_threshold: int = 7000
    #: HTTP/2 streams a client may reset (or have refused) per second before
    #: the connection is closed (the "rapid reset" attack).
    h2_max_resets: int = 200
    #: HTTP/2 control frames (PING, SETTINGS, PRIORITY, empty DATA) a client
    #: may send per second before the connection is closed.
    h2_max_control_frames: int = 1000
    #: Largest WebSocket message (bytes, after decompression) a client may
    #: send; a larger one closes the connection with 1009.
    ws_max_message_size: int = 16 * 1024 * 1024
    #: Seconds a WebSocket may stay silent before the server pings it
    #: (0: never), and how long the pong may take before the connection is
    #: taken for dead and closed.
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    #: Seconds the server waits for the client's answer to its close frame.
    ws_close_timeout: float = 5.0
    #: Accept permessage-deflate (1) or not (0).  Inflation is bounded by
    #: ws_max_message_size either way.
    ws_per_message_deflate: int = 1

    # The text settings and the values each accepts.
    _CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "http_parser": HTTP_PARSERS,
        "http2_engine": HTTP2_ENGINES,
    }
    # Settings for which 0 means "off".
    _ZERO_OK: ClassVar[frozenset[str]] = frozenset(("ws_ping_interval", "ws_per_message_deflate"))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Extra:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            choices = cls._CHOICES.get(f.name)
            if choices is not None:
                choice = raw.strip().lower()
                if choice not in choices:
                    expected = ", ".join(choices)
                    raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: one of {expected}")
                values[f.name] = choice
                continue
            kind = float if f.type in ("float", float) else int
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a number") from None
            if value < 0 or (value == 0 and f.name not in cls._ZERO_OK):
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be positive")
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    """What one worker process needs to know, resolved once at start-up."""

    limits: Limits = field(default_factory=Limits)
    extra: Extra = field(default_factory=Extra)
    keepalive: float = 2.0
    max_connections: int = 1000
    graceful_timeout: float = 30.0
    backlog: int = 2048
    threads: int = 32
    root_path: str = ""
    proxy_protocol: str = "off"
    is_ssl: bool = False
    disconnect_grace: float = 3.0
    #: gunicorn's ``http_protocols``: what ALPN offers, in order.
    http_protocols: tuple[str, ...] = ("h1",)
    #: gunicorn's ``http2_cleartext``: off, prior-knowledge, upgrade, both.
    http2_cleartext: str = "off"
    h2: H2Limits = field(default_factory=H2Limits)

    @property
    def h2_enabled(self) -> bool:
        return "h2" in self.http_protocols

    @property
    def h2_prior_knowledge(self) -> bool:
        return self.h2_enabled and self.http2_cleartext in ("prior-knowledge", "both")

    @property
    def h2_upgrade(self) -> bool:
        return self.h2_enabled and self.http2_cleartext in ("upgrade", "both")

    @classmethod
    def from_gunicorn(cls, cfg: Any, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        threads = int(cfg.threads)
        proxy = getattr(cfg, "proxy_protocol", "off")
        if proxy is True:
            proxy = "auto"
        elif proxy in (False, None):
            proxy = "off"
        extra = Extra.from_environ(env)
        protocols = getattr(cfg, "http_protocols", None) or ["h1"]
        if isinstance(protocols, str):
            protocols = [p.strip() for p in protocols.split(",") if p.strip()]
        cleartext = getattr(cfg, "http2_cleartext", "off")
        if cleartext is True:
            cleartext = "prior-knowledge"
        elif cleartext in (False, None):
            cleartext = "off"
        return cls(
            limits=Limits(
                max_request_line=int(cfg.limit_request_line),
                max_fields=int(cfg.limit_request_fields),
                max_field_size=int(cfg.limit_request_field_size),
            ),
            extra=extra,
            keepalive=float(cfg.keepalive),
            max_connections=int(cfg.worker_connections),
            graceful_timeout=float(cfg.graceful_timeout),
            backlog=int(cfg.backlog),
            # gunicorn's default of one thread would serialise every sync
            # view; it is taken to mean "unset".
            threads=threads if threads > 1 else 32,
            root_path=(getattr(cfg, "root_path", "") or env.get("SCRIPT_NAME", "")).rstrip("/"),
            proxy_protocol=str(proxy),
            is_ssl=bool(cfg.is_ssl),
            disconnect_grace=float(getattr(cfg, "asgi_disconnect_grace_period", 3)),
            http_protocols=tuple(str(p).lower() for p in protocols),
            http2_cleartext=str(cleartext).lower(),
            h2=H2Limits(
                max_concurrent_streams=int(getattr(cfg, "http2_max_concurrent_streams", 100)),
                initial_window_size=int(getattr(cfg, "http2_initial_window_size", 65535)),
                max_frame_size=int(getattr(cfg, "http2_max_frame_size", 16384)),
                # gunicorn reads 0 as "unlimited"; HPACK still needs a number.
                max_header_list_size=int(getattr(cfg, "http2_max_header_list_size", 65536))
                or 16 * 1024 * 1024,
                connection_window=extra.body_buffer * 4,
                max_resets=extra.h2_max_resets,
                max_control_frames=extra.h2_max_control_frames,
            ),
        )
