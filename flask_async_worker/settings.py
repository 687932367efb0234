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

from .protocols.http11_rules import Limits

ENV_PREFIX = "FLASK_ASYNC_WORKER_"
#: The HTTP/1.1 drivers: ``auto`` is httptools when it can be imported.
HTTP_PARSERS = ("auto", "httptools", "h11")


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

    # The text settings and the values each accepts.
    _CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"http_parser": HTTP_PARSERS}

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
            if value <= 0:
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

    @classmethod
    def from_gunicorn(cls, cfg: Any, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        threads = int(cfg.threads)
        proxy = getattr(cfg, "proxy_protocol", "off")
        if proxy is True:
            proxy = "auto"
        elif proxy in (False, None):
            proxy = "off"
        return cls(
            limits=Limits(
                max_request_line=int(cfg.limit_request_line),
                max_fields=int(cfg.limit_request_fields),
                max_field_size=int(cfg.limit_request_field_size),
            ),
            extra=Extra.from_environ(env),
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
        )
