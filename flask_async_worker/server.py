"""The only module that touches sockets: connections, timeouts, backpressure.

One :class:`HTTPConnection` (an ``asyncio.Protocol``) per client connection
feeds bytes to a sans-IO protocol driver and turns its events into ASGI
calls; one :class:`RequestCycle` per request implements ASGI ``receive`` and
``send`` on top of the connection.  :class:`Server` owns the listening
sockets and the set of live connections, which gives it the connection cap
(``worker_connections``), the timeout sweep and the graceful drain.

Timeouts are not one timer per connection: each connection records a single
deadline and what it guards, and :meth:`Server.sweep` (run by the worker's
heartbeat) checks them all.  That keeps timer allocations off the
per-request path and makes every wait bounded by construction.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from .policy import AddressList, HeaderPolicy
from .protocols.errors import ProtocolError, error_response
from .protocols.events import Body, EndOfBody, Headers, Request
from .protocols.http2 import PREFACE
from .protocols.http11 import H11Driver
from .protocols.http11_rules import HTTP11Driver, Limits
from .protocols.proxy import ProxyInfo, parse_proxy_header
from .protocols.websocket import is_upgrade as is_websocket_upgrade
from .protocols.websocket import parse_handshake
from .settings import Settings

if TYPE_CHECKING:
    from .server_h2 import H2Session
    from .server_ws import WebSocketCycle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What a deadline guards; checked by Server.sweep.
NO_DEADLINE = 0
HEAD = 1  # a request head is due (new connection, or bytes of one arrived)
KEEPALIVE = 2  # idle between requests
BODY = 3  # the app waits for request body bytes
SEND = 4  # the app waits for the client to read
DRAIN = 5  # idle during a graceful stop
PING = 6  # a WebSocket silent for a while: ping it
PONG_DUE = 7  # a WebSocket was pinged: the pong is due
CLOSING = 8  # a WebSocket close frame was sent: the reply is due

# RFC 9110 section 5.1/5.5: a field name is a token; a value holds no CR,
# LF or NUL.  Checked on what the application sends, so a header injection
# in the app becomes a 500 instead of a second response on the wire.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS = frozenset((204, 304))
_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_REASONS = {int(s): s.phrase.encode("ascii") for s in HTTPStatus}


class ClientDisconnected(OSError):
    """``send()`` was called after the client went away (ASGI spec 2.4)."""


def http11_driver_class(name: str) -> tuple[str, Callable[[Limits], HTTP11Driver]]:
    """The HTTP/1.1 driver the ``http_parser`` setting names, and its name.

    ``auto`` prefers httptools (llhttp in C: the head parse costs a fraction
    of h11's) and falls back to h11, which is always installed; asking for
    httptools explicitly when it cannot be imported is a start-up error
    rather than a silent slowdown.
    """
    if name == "h11":
        return "h11", H11Driver
    try:
        from .protocols.httptools_driver import HttptoolsDriver
    except ImportError as exc:
        if name == "httptools":
            raise RuntimeError(f"http_parser=httptools cannot be imported ({exc})") from None
        return "h11", H11Driver
    return "httptools", HttptoolsDriver


class Server:
    """The listening sockets and live connections of one worker."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        worker: Any,
        loop: asyncio.AbstractEventLoop,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.worker = worker
        self.cfg = worker.cfg
        self.log = worker.log
        self.loop = loop
        self.state = state if state is not None else {}
        self.connections: set[HTTPConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.policy = HeaderPolicy(self.cfg)
        self.proxy_allow = AddressList(self.cfg.proxy_allow_ips)
        self.ssl_context: ssl.SSLContext | None = None
        self._listen_socks: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._accepting = False
        self._resuming: asyncio.Task[None] | None = None
        self.closing = False
        self.base_context = contextvars.copy_context()
        self.date = b""
        self.update_date()
        self._setup_hooks()
        parser, self.make_driver = http11_driver_class(settings.extra.http_parser)
        self.log.debug("HTTP/1.1 parser: %s", parser)

    # -- gunicorn integration --------------------------------------------------

    def _setup_hooks(self) -> None:
        cfg = self.cfg
        settings = getattr(cfg, "settings", {})

        def custom(name: str) -> Callable[..., Any] | None:
            setting = settings.get(name)
            if setting is None:
                return getattr(cfg, name, None)
            # The default hooks only log at debug level; calling them costs
            # a request object per request for nothing.
            if setting.value is setting.default:
                return None
            return setting.value  # type: ignore[no-any-return]

        self.pre_request = custom("pre_request")
        self.post_request = custom("post_request")
        log = self.log
        error_log = getattr(log, "error_log", None)
        if (
            self.pre_request is None
            and error_log is not None
            and error_log.isEnabledFor(10)  # logging.DEBUG
        ):
            # gunicorn's default pre_request logs "GET /path" at debug level.
            self.pre_request = cfg.pre_request
        enabled = getattr(log, "access_log_enabled", True)
        # A Statsd (or custom) logger wants every access() call for its
        # metrics even when no access log file is configured.
        self.access_log = bool(enabled) or type(log).access is not _base_access()
        self.need_info = bool(self.pre_request or self.post_request or self.access_log)

    def update_date(self) -> None:
        self.date = formatdate(usegmt=True).encode("ascii")

    @property
    def alive(self) -> bool:
        return bool(self.worker.alive) and not self.closing

    def launch(self, cycle: RequestCycle) -> None:
        """Run gunicorn's pre_request hook and start the app's task."""
        if self.pre_request is not None:
            try:
                self.pre_request(self.worker, cycle.info())
            except Exception:
                self.log.exception("Exception in pre_request hook")
        task = cycle.task = self.loop.create_task(cycle.run(), context=self.base_context.copy())
        # run() takes the task out again as it ends: cheaper than a done
        # callback, which costs the loop one more scheduled call per request.
        # (A task cancelled before it ever ran stays until the server goes:
        # only cancel_requests, at shutdown, does that.)
        self.tasks.add(task)

    def request_finished(self, cycle: RequestCycle) -> None:
        worker = self.worker
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            self.log.info("Autorestarting worker after current request.")
            worker.alive = False
            wake = getattr(worker, "wakeup", None)
            if wake is not None:
                wake()
        if self.need_info:
            cycle.report()
            cycle._info = None  # it points back at the cycle

    # -- listening -------------------------------------------------------------

    async def start(
        self, sockets: list[socket.socket], ssl_context: ssl.SSLContext | None
    ) -> None:
        self.ssl_context = ssl_context
        self._listen_socks = sockets
        await self._listen()

    async def _listen(self) -> None:
        extra = self.settings.extra
        servers: list[asyncio.AbstractServer] = []
        for sock in self._listen_socks:
            # A duplicate descriptor per listening period: closing the asyncio
            # server (to stop accepting at the connection cap) closes only the
            # duplicate, and waiting clients stay queued in the shared backlog.
            dup = sock.dup()
            kwargs: dict[str, Any] = {}
            if self.ssl_context is not None:
                kwargs["ssl"] = self.ssl_context
                kwargs["ssl_handshake_timeout"] = extra.ssl_handshake_timeout
            if dup.family == socket.AF_UNIX:
                server = await self.loop.create_unix_server(
                    lambda: HTTPConnection(self), sock=dup, backlog=self.settings.backlog, **kwargs
                )
            else:
                server = await self.loop.create_server(
                    lambda: HTTPConnection(self), sock=dup, backlog=self.settings.backlog, **kwargs
                )
            servers.append(server)
        self._servers = servers
        self._accepting = True

    def _stop_listening(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []
        self._accepting = False

    def connection_opened(self, conn: HTTPConnection) -> None:
        self.connections.add(conn)
        if self._accepting and len(self.connections) >= self.settings.max_connections:
            self._stop_listening()
            self.log.debug("worker_connections reached: not accepting")

    def connection_closed(self, conn: HTTPConnection) -> None:
        self.connections.discard(conn)
        if (
            not self._accepting
            and not self.closing
            and self._resuming is None
            and len(self.connections) < self.settings.max_connections
        ):
            self._resuming = self.loop.create_task(self._resume())

    async def _resume(self) -> None:
        try:
            if not self.closing and self.worker.alive:
                await self._listen()
        finally:
            self._resuming = None

    # -- timeouts --------------------------------------------------------------

    def sweep(self) -> None:
        """Enforce every connection's deadline; run a few times a second."""
        now = self.loop.time()
        self.update_date()
        expired = [c for c in self.connections if c.deadline_kind and c.deadline <= now]
        for conn in expired:
            conn.on_deadline()

    # -- shutdown --------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, let in-flight requests finish, close idle
        connections; True when every connection closed within ``timeout``."""
        self.closing = True
        if self._resuming is not None:
            self._resuming.cancel()
        self._stop_listening()
        window = self.settings.extra.drain_window
        now = self.loop.time()
        for conn in list(self.connections):
            conn.begin_drain(now + min(window, timeout))
        deadline = now + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
            if self.loop.time() - now > window:
                self.sweep()
        return not self.connections

    def abort_all(self) -> None:
        self.closing = True
        self._stop_listening()
        for conn in list(self.connections):
            conn.abort()

    async def cancel_requests(self, timeout: float = 1.0) -> None:
        """Cancel what is still running of the requests' app calls."""
        tasks = [t for t in self.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


_BASE_ACCESS: Any = None


def _base_access() -> Any:
    global _BASE_ACCESS
    if _BASE_ACCESS is None:
        from gunicorn.glogging import Logger

        _BASE_ACCESS = Logger.access
    return _BASE_ACCESS


class HTTPConnection(asyncio.Protocol):
    """One client connection speaking HTTP/1.1."""

    __slots__ = (
        "_drain_waiter",
        "_lingering",
        "_pipelined",
        "_proxy_buf",
        "_send_mark",
        "_sniff",
        "client",
        "cycle",
        "deadline",
        "deadline_kind",
        "driver",
        "h2",
        "loop",
        "proxy_denied",
        "proxy_info",
        "read_paused",
        "scheme",
        "server",
        "server_addr",
        "settings",
        "transport",
        "trusted",
        "write_paused",
        "ws",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings = server.settings
        self.loop = server.loop
        self.driver = server.make_driver(server.settings.limits)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.cycle: RequestCycle | None = None
        self.deadline = 0.0
        self.deadline_kind = NO_DEADLINE
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lingering = -1
        self._send_mark = 0
        self._pipelined = 0
        self._proxy_buf: bytearray | None = None
        # Bytes read while deciding whether a cleartext client speaks
        # HTTP/2 with prior knowledge.
        self._sniff: bytearray | None = None
        self.h2: H2Session | None = None
        # Set once a WebSocket handshake was accepted.
        self.ws: WebSocketCycle | None = None
        self.proxy_info: ProxyInfo | None = None
        self.proxy_denied = False
        self.client: tuple[str, int] | None = None
        self.server_addr: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.trusted = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without
        # inheriting from it.
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        peer = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.client = (peer[0], peer[1])
        if isinstance(sockname, tuple):
            self.server_addr = (sockname[0], sockname[1])
        elif sockname:
            self.server_addr = (str(sockname), None)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.scheme = "https"
        peer_ip = self.client[0] if self.client else None
        self.trusted = server.policy.is_trusted(peer_ip)
        settings = self.settings
        if ssl_object is not None:
            if settings.h2_enabled and ssl_object.selected_alpn_protocol() == "h2":
                self.h2 = _h2_session(self)
        elif self.trusted and settings.h2_prior_knowledge:
            # gunicorn's rule: cleartext HTTP/2 only from forwarded_allow_ips.
            self._sniff = bytearray()
        if self.settings.proxy_protocol != "off":
            if peer_ip in server.proxy_allow:
                self._proxy_buf = bytearray()
            else:
                self.proxy_denied = True
        self.transport.set_write_buffer_limits(high=self.settings.extra.write_buffer)
        self.set_deadline(HEAD, self.settings.extra.header_timeout)
        server.connection_opened(self)
        if self.h2 is not None and self._proxy_buf is None:
            self.h2.start(b"")
        if server.closing:
            self.begin_drain(self.loop.time() + self.settings.extra.drain_window)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.data_received(data)
            return
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > self.settings.extra.body_buffer * 4:
                self.transport.close()
            return
        if self.proxy_denied:
            self.proxy_denied = False
            if data.startswith((b"PROXY ", _PROXY_V2_SIGNATURE)):
                # gunicorn's ForbiddenProxyRequest: a PROXY header from a
                # peer outside proxy_allow_ips.
                self.protocol_error(ProtocolError("PROXY header from a disallowed peer", 403))
                return
        if self._proxy_buf is not None:
            rest = self._feed_proxy(data)
            if rest is None:
                return
            data = rest
            if self.h2 is not None:
                self.h2.start(data)
                return
            if not data:
                return
        if self.h2 is not None:
            self.h2.data_received(data)
            return
        if self._sniff is not None:
            rest = self._feed_sniff(data)
            if rest is None:
                return
            data = rest
        self.driver.receive_data(data)
        cycle = self.cycle
        if cycle is None:
            if self.deadline_kind != HEAD:
                self.set_deadline(HEAD, self.settings.extra.header_timeout)
            self.process()
        elif not cycle.body_complete:
            self.process()
        else:
            # Pipelined requests wait until this response is done; bound
            # how much of them is read ahead.
            self._pipelined += len(data)
            if self._pipelined > self.settings.extra.pipeline_buffer:
                self.pause_reading()

    def eof_received(self) -> bool | None:
        if self._lingering >= 0 or self.h2 is not None or self.ws is not None:
            return None
        self.driver.receive_data(b"")
        if self.cycle is not None:
            # The client closed its side while its request is being served:
            # it left (RFC 9112 section 9.6 leaves this to the server), so the
            # app hears http.disconnect and a stream stops at once.
            return None
        # Between requests: answer what was already sent in full, then close
        # (process() closes once the driver has nothing more).
        self.process()
        if not self.serving() or self.scheme == "https":
            # Keeping a TLS transport half-open is not supported.
            return None
        return True

    def serving(self) -> bool:
        """A request of this connection is being served."""
        if self.h2 is not None:
            return bool(self.h2.streams)
        return self.cycle is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline_kind = NO_DEADLINE
        cycle = self.cycle
        self.cycle = None
        if cycle is not None:
            cycle.on_disconnect()
        if self.h2 is not None:
            self.h2.connection_lost()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientDisconnected("client disconnected"))
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.ws is not None:
            # A WebSocket client that sends (pings) but reads nothing: the
            # socket pauses (see WebSocketCycle.may_read) and the send
            # deadline applies, as for a response nobody reads, unless a
            # ping deadline comes first.
            timeout = self.settings.extra.send_timeout
            if self.deadline_kind == NO_DEADLINE or self.deadline > self.loop.time() + timeout:
                self._send_mark = self.transport.get_write_buffer_size()
                self.set_deadline(SEND, timeout)
        elif self.h2 is not None:
            # Streams wait in their outboxes; reading stops too, so a client
            # that sends requests (or PINGs) but reads nothing cannot make
            # the answers pile up.  The connection's send deadline applies.
            self.pause_reading()
            self._send_mark = self.transport.get_write_buffer_size()
            self.set_deadline(SEND, self.settings.extra.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.ws is not None:
            self.clear_deadline(SEND)
            self.ws.writable()
        h2 = self.h2
        if h2 is not None:
            self.clear_deadline(SEND)
            self.resume_reading()
            h2.writable()
            if not h2.streams and self.deadline_kind == NO_DEADLINE:
                h2.idle()
            return
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- flow control --------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written."""
        if self.transport.is_closing():
            raise ClientDisconnected("client disconnected")
        waiter = self._drain_waiter = self.loop.create_future()
        self._send_mark = self.transport.get_write_buffer_size()
        self.set_deadline(SEND, self.settings.extra.send_timeout)
        try:
            await waiter
        finally:
            self._drain_waiter = None
            self.clear_deadline(SEND)

    # -- deadlines -----------------------------------------------------------------

    def set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        self.deadline_kind = kind

    def clear_deadline(self, kind: int) -> None:
        if self.deadline_kind == kind:
            self.deadline_kind = NO_DEADLINE

    def on_deadline(self) -> None:
        kind = self.deadline_kind
        self.deadline_kind = NO_DEADLINE
        log = self.server.log
        if self.h2 is not None and kind != SEND:
            self.h2.on_deadline(kind)
        elif self.ws is not None and kind != SEND:
            self.ws.on_deadline(kind)
        elif kind == HEAD:
            if self.driver.head_started or self._proxy_buf or self._sniff:
                log.warning(
                    "Request head timeout from ip=%s: no complete request in %ss",
                    self.client_ip,
                    self.settings.extra.header_timeout,
                )
                self.transport.write(error_response(408))
            else:
                log.debug("Closing connection from %s: no request", self.client_ip)
            self.transport.close()
        elif kind in (KEEPALIVE, DRAIN):
            self.transport.close()
        elif kind == BODY:
            log.warning(
                "Request body timeout from ip=%s: nothing received for %ss",
                self.client_ip,
                self.settings.extra.body_timeout,
            )
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                self.transport.write(error_response(408))
            self.transport.close()
        elif kind == SEND:
            size = self.transport.get_write_buffer_size()
            if size < self._send_mark:
                # A slow reader, not a stalled one: it read something since.
                self._send_mark = size
                self.set_deadline(SEND, self.settings.extra.send_timeout)
                return
            log.warning(
                "Send timeout to ip=%s: client read nothing for %ss",
                self.client_ip,
                self.settings.extra.send_timeout,
            )
            self.abort()

    @property
    def client_ip(self) -> str:
        return self.client[0] if self.client else "-"

    # -- requests ------------------------------------------------------------------

    def process(self) -> None:
        """Turn buffered bytes into events until the driver needs more."""
        driver = self.driver
        while True:
            try:
                event = driver.next_event()
            except ProtocolError as exc:
                self.protocol_error(exc)
                return
            if event is None:
                break
            kind = type(event)
            if kind is Body:
                assert self.cycle is not None
                self.cycle.feed(event.data)  # type: ignore[union-attr]
            elif kind is EndOfBody:
                assert self.cycle is not None
                self.cycle.feed_end()
            else:
                try:
                    self.start_request(event)  # type: ignore[arg-type]
                except ProtocolError as exc:
                    # The header policy refuses some heads (contradictory
                    # scheme headers, underscores with header_map=refuse).
                    self.protocol_error(exc)
                    return
                if self.h2 is not None:
                    return  # upgraded to HTTP/2
        if driver.eof:
            cycle = self.cycle
            if cycle is None:
                self.transport.close()
            elif not cycle.body_complete:
                # A body cut short is never handed over as complete.
                cycle.on_disconnect()
                self.transport.close()

    def protocol_error(self, exc: ProtocolError) -> None:
        self.server.log.warning("Invalid request from ip=%s: %s", self.client_ip, exc.detail)
        cycle = self.cycle
        self.deadline_kind = NO_DEADLINE
        if cycle is not None:
            # Broken framing inside a body: the app must not take a partial
            # body for a whole one.
            cycle.on_disconnect()
            if not cycle.response_started:
                self.transport.write(error_response(exc.status, headers=exc.headers))
        else:
            self.transport.write(error_response(exc.status, headers=exc.headers))
        self.transport.close()

    def start_request(self, request: Request) -> None:
        self.deadline_kind = NO_DEADLINE
        self._pipelined = 0
        if request.upgrade:
            if self.settings.h2_upgrade and self.trusted and self._try_upgrade(request):
                return
            if is_websocket_upgrade(request):
                self._start_websocket(request)
                return
        cycle = RequestCycle(self, request)
        self.cycle = cycle
        self.server.launch(cycle)

    def _start_websocket(self, request: Request) -> None:
        from .server_ws import WebSocketCycle  # builds on this module's classes

        handshake = parse_handshake(request)  # a ProtocolError is answered by process()
        cycle = WebSocketCycle(self, request, handshake)
        self.cycle = cycle
        self.server.launch(cycle)

    def switch_to_websocket(self, cycle: WebSocketCycle) -> None:
        """The 101 is written: from now on the bytes are WebSocket frames."""
        self.ws = cycle
        self.deadline_kind = NO_DEADLINE
        self._pipelined = 0
        early = self.driver.take_buffered()
        # HTTP/1.1 is over on this connection: its parser's state can go.
        self.driver = _SPENT_DRIVER
        if early:
            cycle.data_received(early)
        if not self.read_paused or cycle.may_read():
            self.resume_reading()

    def response_done(self, cycle: RequestCycle) -> None:
        """The response was written in full; start on the next request."""
        self.server.request_finished(cycle)
        if self.cycle is not cycle:
            return
        self.cycle = None
        if not cycle.keep_alive or not self.driver.start_next_cycle():
            if not cycle.body_complete and not cycle.disconnected:
                self._linger()
            else:
                self.transport.close()
            return
        if self.server.closing or not self.server.worker.alive:
            self.set_deadline(DRAIN, self.settings.extra.drain_window)
        else:
            self.set_deadline(KEEPALIVE, self.settings.keepalive)
        self.resume_reading()
        self.process()

    def _linger(self) -> None:
        """Close after a response sent before the request body was read.

        Closing with unread bytes in the socket makes the kernel send a
        reset, which can destroy the response before the client reads it.
        So the rest of the body is read and discarded, bounded in time and
        size, and the socket closed after (nginx's lingering close).
        """
        self._lingering = 0
        if self.scheme != "https" and self.transport.can_write_eof():
            self.transport.write_eof()
        self.resume_reading()
        self.set_deadline(DRAIN, self.settings.extra.linger_timeout)

    def begin_drain(self, deadline: float) -> None:
        """Graceful stop: idle connections close after a short window, in
        which a request already sent is still answered (with close)."""
        if self.h2 is not None:
            self.h2.begin_drain()
        elif self.ws is not None:
            self.ws.begin_drain()
        elif self.cycle is None and not self.driver.head_started:
            self.deadline = deadline
            self.deadline_kind = DRAIN

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- HTTP/2 ---------------------------------------------------------------------

    def _feed_sniff(self, data: bytes) -> bytes | None:
        """Hold the first bytes of a cleartext connection until they show
        whether it opens with the HTTP/2 preface; the bytes for HTTP/1.1
        when it does not, None while undecided or switched."""
        buf = self._sniff
        assert buf is not None
        buf += data
        size = min(len(buf), len(PREFACE))
        if buf[:size] == PREFACE[:size]:
            if size < len(PREFACE):
                return None
            self._sniff = None
            self.h2 = _h2_session(self)
            self.h2.start(bytes(buf))
            return None
        self._sniff = None
        if not self.settings.h2_upgrade:
            # gunicorn's prior-knowledge rule: a trusted peer on such a port
            # is expected to speak HTTP/2; a silent downgrade would hide a
            # misconfigured proxy.
            self.protocol_error(ProtocolError("expected the HTTP/2 connection preface"))
            return None
        return bytes(buf)

    def _try_upgrade(self, request: Request) -> bool:
        """Switch to HTTP/2 for ``Upgrade: h2c`` (RFC 7540 section 3.2).

        Only a request without a body is upgraded (its body would have to
        be read before the switch); any other is served over HTTP/1.1, which
        the RFC allows, as is one whose client sent more after its head.
        """
        settings_header = None
        upgrade = connection = b""
        for name, value in request.headers:
            if name == b"upgrade":
                upgrade = value
            elif name == b"http2-settings":
                if settings_header is not None:
                    return False
                settings_header = value
            elif name == b"connection":
                connection = value
        if settings_header is None or b"h2c" not in [
            t.strip(b" \t").lower() for t in upgrade.split(b",")
        ]:
            return False
        tokens = {t.strip(b" \t").lower() for t in connection.split(b",")}
        if b"upgrade" not in tokens or b"http2-settings" not in tokens:
            return False
        if request.has_body or self.driver.buffered:
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        dropped = (b"upgrade", b"http2-settings", b"connection")
        upgraded = Request(
            request.method,
            request.target,
            request.path,
            request.query,
            request.authority,
            "2",
            [(n, v) for n, v in request.headers if n not in dropped],
            keep_alive=True,
            expect_continue=False,
            has_body=False,
        )
        session = self.h2 = _h2_session(self)
        try:
            session.start_upgraded(settings_header, upgraded)
        except ProtocolError as exc:
            self.h2 = None
            self.server.log.warning("Invalid request from ip=%s: %s", self.client_ip, exc.detail)
            self.transport.close()
        return True

    # -- proxy protocol ------------------------------------------------------------

    def _feed_proxy(self, data: bytes) -> bytes | None:
        buf = self._proxy_buf
        assert buf is not None
        buf += data
        try:
            result = parse_proxy_header(buf, self.settings.proxy_protocol)
        except ProtocolError as exc:
            if not buf.startswith((b"PROXY", _PROXY_V2_SIGNATURE)):
                # gunicorn lets a trusted peer omit the header.
                self._proxy_buf = None
                return bytes(buf)
            self._proxy_buf = None
            self.protocol_error(exc)
            return None
        if result is None:
            if len(buf) > 16 + 65535:
                self._proxy_buf = None
                self.protocol_error(ProtocolError("PROXY header too long"))
            return None
        info, consumed = result
        self._proxy_buf = None
        self.proxy_info = info
        if info.client_addr is not None and info.client_port is not None:
            # Only the address changes: whether scheme and forwarder headers
            # are trusted stays a question about the socket peer (the
            # balancer), as in gunicorn, which checks forwarded_allow_ips
            # against the peer and not the client a PROXY header names.
            self.client = (info.client_addr, info.client_port)
        return bytes(buf[consumed:])


class RequestCycle:
    """ASGI ``receive``/``send`` for one request on an HTTP/1.1 connection."""

    __slots__ = (
        "_info",
        "body",
        "body_complete",
        "body_size",
        "bytes_sent",
        "conn",
        "disconnect_handler",
        "disconnected",
        "end_delivered",
        "keep_alive",
        "request",
        "response_complete",
        "response_has_date",
        "response_has_length",
        "response_headers",
        "response_started",
        "scope",
        "sends_body",
        "start",
        "status",
        "task",
        "waiter",
        "wrote_head",
    )

    def __init__(self, conn: HTTPConnection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.start = time.time()
        server = conn.server
        headers, scheme = server.policy.apply(request.headers, conn.trusted, conn.scheme)
        root_path = server.settings.root_path
        forwarded_root = server.policy.forwarded_script_name(headers, conn.trusted)
        if forwarded_root is not None:
            root_path = forwarded_root.rstrip("/")
        raw_path = request.path
        self.scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version,
            "method": request.method.decode("ascii"),
            "scheme": scheme,
            "path": unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
            if b"%" in raw_path
            else raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": request.query,
            "root_path": root_path,
            "headers": headers,
            "client": conn.client,
            "server": conn.server_addr,
            "state": server.state.copy(),
            "extensions": {
                "http.response.informational": {},
                "flask_async_worker": {
                    "raw_uri": request.target,
                    "proxy": conn.proxy_info,
                    "on_disconnect": self.set_disconnect_handler,
                },
            },
        }
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_complete = not request.has_body
        self.disconnected = False
        self.disconnect_handler: Callable[[], None] | None = None
        self.end_delivered = False
        self.waiter: asyncio.Future[None] | None = None
        self.response_started = False
        self.response_complete = False
        self.wrote_head = False
        self.sends_body = False
        self.status = 0
        self.response_headers: Headers = []
        self.response_has_length = False
        self.response_has_date = False
        self.bytes_sent = 0
        self.keep_alive = request.keep_alive
        self.task: asyncio.Task[None] | None = None
        self._info: RequestInfo | None = None

    # -- fed by the connection -----------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.body.append(data)
        self.body_size += len(data)
        conn = self.conn
        if self.body_size > conn.settings.extra.body_buffer:
            conn.pause_reading()
        if conn.deadline_kind == BODY:
            conn.set_deadline(BODY, conn.settings.extra.body_timeout)
        self._wake()

    def feed_end(self) -> None:
        self.body_complete = True
        self.conn.clear_deadline(BODY)
        self._wake()

    def on_disconnect(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self._wake()
        handler = self.disconnect_handler
        if handler is not None:
            handler()
            return
        task = self.task
        if task is not None and not task.done() and not self.response_complete:
            # The app hears http.disconnect (or ClientDisconnected from
            # send); if it carries on regardless it is cancelled after the
            # grace period, so a stream nobody reads cannot run forever.
            self.conn.loop.call_later(self.conn.settings.disconnect_grace, _cancel, task)

    def set_disconnect_handler(self, handler: Callable[[], None] | None) -> None:
        """Let the app decide what a disconnect does to its work (the
        ``on_disconnect`` extension); by default the app task is cancelled
        ``asgi_disconnect_grace_period`` seconds after the client left."""
        self.disconnect_handler = handler
        if handler is not None and self.disconnected:
            handler()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI ------------------------------------------------------------------------

    async def run(self) -> None:
        conn = self.conn
        server = conn.server
        try:
            await server.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            if not self.disconnected:
                self._fail(None)
                raise
        except (SystemExit, KeyboardInterrupt):
            # The worker is leaving (SIGABRT's handler raised in app code):
            # not an application error; the connection goes with the process.
            raise
        except Exception as exc:
            self._fail(exc)
        else:
            self._app_returned()
        finally:
            task = self.task
            if task is not None:
                server.tasks.discard(task)
            # Break the cycles a request makes (task -> coroutine -> this
            # cycle -> task; scope -> bound method -> this cycle -> scope) so
            # reference counting frees it at once: left to the cyclic GC,
            # thousands of requests in flight make every full collection
            # walk them all, and long waits (scenario 4) lose a sixth of the
            # loop to it.
            self.task = None
            self.disconnect_handler = None
            self.scope["extensions"]["flask_async_worker"]["on_disconnect"] = None
            if self.disconnected:
                self._info = None  # never reported: the response did not finish

    def log_finished(self) -> None:
        """Count and log the request (access log, post_request, max_requests)."""
        self.conn.server.request_finished(self)

    def _app_returned(self) -> None:
        if not self.response_complete and not self.disconnected:
            log = self.conn.server.log
            if not self.response_started:
                log.error("ASGI app returned without sending a response: %s", self._describe())
                self._send_500()
            else:
                log.error("ASGI app returned before finishing its response: %s", self._describe())
                self._abandon()

    def _abandon(self) -> None:
        """A response cut short: the client must not take it for whole."""
        self.conn.transport.close()

    def _describe(self) -> str:
        r = self.request
        return f"{r.method.decode('ascii')} {r.target.decode('latin-1')}"

    def _fail(self, exc: BaseException | None) -> None:
        log = self.conn.server.log
        if exc is not None:
            log.error("Error handling request %s", self._describe(), exc_info=exc)
        if self.disconnected or self.response_complete:
            return
        if not self.response_started:
            self._send_500()
        else:
            # Headers are out: the only honest signal left is a cut-short
            # response (no terminating chunk / short Content-Length).
            self.conn.abort()

    def _send_500(self) -> None:
        self.keep_alive = False
        self.status = 500
        body = b"Internal Server Error\n"
        self.response_headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        self.response_has_length = True
        self.response_has_date = False
        self.response_started = True
        self._write_head_and(body, more=False)

    async def receive(self) -> Message:
        while True:
            if self.body:
                body = self.body
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self.body_size = 0
                self._body_taken()
                more = not self.body_complete
                if not more:
                    self.end_delivered = True
                return {"type": "http.request", "body": data, "more_body": more}
            if self.disconnected or self.response_complete:
                return {"type": "http.disconnect"}
            if self.body_complete:
                if not self.end_delivered:
                    self.end_delivered = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                # ASGI: once the body is delivered, receive() blocks until
                # the client leaves or the response is done.
                await self._wait()
                continue
            await self._wait_for_body()

    def _body_taken(self) -> None:
        """The app took the buffered body: let the client send more."""
        self.conn.resume_reading()

    async def _wait_for_body(self) -> None:
        conn = self.conn
        if conn.driver.waiting_for_continue and not self.response_started:
            # RFC 9110 section 10.1.1: answer 100 only when the app
            # actually reads the body, so it can refuse it unread.
            conn.transport.write(conn.driver.send_informational(100, []))
        conn.resume_reading()
        conn.set_deadline(BODY, conn.settings.extra.body_timeout)
        try:
            await self._wait()
        finally:
            conn.clear_deadline(BODY)

    async def _wait(self) -> None:
        waiter = self.waiter = self.conn.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_complete:
                raise RuntimeError("response already complete")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            more = message.get("more_body", False)
            body = message.get("body", b"")
            if not self.wrote_head:
                self._write_head_and(body, more)
            else:
                self._write_body(body, more)
            if more:
                await self._backpressure()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            status = message["status"]
            headers = message.get("headers", ())
            self.response_headers, self.response_has_length, self.response_has_date = (
                _check_response_headers(headers)
            )
            if type(status) is not int or not 200 <= status <= 599:
                raise ValueError(f"invalid response status {status!r}")
            self.status = status
            self.response_started = True
        elif kind == "http.response.informational":
            if self.response_started:
                raise RuntimeError("informational response after http.response.start")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            status = message["status"]
            if type(status) is not int or not 100 < status < 200 or status == 101:
                raise ValueError(f"invalid informational status {status!r}")
            headers = _check_response_headers(message.get("headers", ()))[0]
            self._write_informational(status, headers)
        else:
            raise ValueError(f"unexpected ASGI message {kind!r}")

    async def _backpressure(self) -> None:
        """Wait while the client is behind (more body is coming)."""
        if self.conn.write_paused:
            await self.conn.drain()

    def _write_informational(self, status: int, headers: Headers) -> None:
        if self.request.http_version != "1.0":
            self.conn.transport.write(self.conn.driver.send_informational(status, headers))

    def _prepare_head(self, body: bytes, more: bool) -> None:
        """What both HTTP versions decide when the head goes out: whether a
        body may follow, the Content-Length of a whole body, and Date."""
        status = self.status
        self.sends_body = self.request.method != b"HEAD" and status not in _NO_BODY_STATUS
        if not self.response_has_length and not more and status not in _NO_BODY_STATUS:
            self.response_headers.append((b"content-length", b"%d" % len(body)))
        if not self.response_has_date:
            self.response_headers.append((b"date", self.conn.server.date))
        self.wrote_head = True

    def _write_head_and(self, body: bytes, more: bool) -> None:
        conn = self.conn
        driver = conn.driver
        server = conn.server
        headers = self.response_headers
        status = self.status
        keep = (
            self.keep_alive
            and server.alive
            and conn.settings.keepalive > 0
            and self.body_complete
            and server.worker.nr + 1 < server.worker.max_requests
        )
        if not keep:
            self.keep_alive = False
            headers.append((b"connection", b"close"))
        self._prepare_head(body, more)
        try:
            data = driver.send_response(status, headers, _REASONS.get(status, b""))
        except ValueError as exc:
            # Caught by _check_response_headers for the usual cases; h11's
            # framing checks (e.g. a bad Content-Length) land here.
            raise RuntimeError(f"invalid response: {exc}") from None
        if body and self.sends_body:
            data += driver.send_body(body)
            self.bytes_sent += len(body)
        if not more:
            data += driver.send_end()
        conn.transport.write(data)
        if not more:
            self._complete()

    def _write_body(self, body: bytes, more: bool) -> None:
        driver = self.conn.driver
        data = b""
        if body and self.sends_body:
            data = driver.send_body(body)
            self.bytes_sent += len(body)
        if not more:
            data += driver.send_end()
        if data:
            self.conn.transport.write(data)
        if not more:
            self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        if driver_will_close(self.conn.driver):
            self.keep_alive = False
        self._wake()
        self.conn.response_done(self)

    # -- gunicorn hooks and access log ---------------------------------------------

    def info(self) -> RequestInfo:
        if self._info is None:
            self._info = RequestInfo(self)
        return self._info

    def report(self) -> None:
        server = self.conn.server
        info = self.info()
        environ = info.environ()
        response = ResponseInfo(self)
        if server.access_log:
            elapsed = datetime.timedelta(seconds=time.time() - self.start)
            try:
                server.log.access(response, info, environ, elapsed)
            except Exception:
                server.log.exception("Error writing access log")
        if server.post_request is not None:
            try:
                server.post_request(server.worker, info, environ, response)
            except Exception:
                server.log.exception("Exception in post_request hook")


def _h2_session(conn: HTTPConnection) -> H2Session:
    # Imported here: server_h2 builds on this module's classes.
    from .server_h2 import make_session

    return make_session(conn)


class _SpentDriver:
    """What a connection switched to WebSocket keeps as its HTTP/1.1
    driver: nothing, and it is never asked for events again."""

    eof = True
    head_started = False
    buffered = 0


_SPENT_DRIVER: Any = _SpentDriver()


def driver_will_close(driver: HTTP11Driver) -> bool:
    return driver.response_will_close


def _cancel(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


_OWS = (b" ", b"\t")


def _check_response_headers(headers: Any) -> tuple[Headers, bool, bool]:
    """The app's headers as lower-cased bytes pairs, refused if they could
    break the response head, and whether they hold Content-Length and Date
    (the server adds those otherwise): one pass, at ``http.response.start``,
    so a bad header is a clean 500 before anything is written."""
    checked: Headers = []
    has_length = has_date = False
    token = _TOKEN.fullmatch
    bad_value = _BAD_VALUE.search
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes:
            name = bytes(name)
            value = bytes(value)
        if token(name) is None:
            raise ValueError(f"invalid response header name {name!r}")
        if bad_value(value) is not None:
            raise ValueError(f"invalid response header value for {name!r}")
        if value[:1] in _OWS or value[-1:] in _OWS:
            # Not part of the value (RFC 9110 section 5.5); gunicorn strips
            # it too, and the parsers refuse to frame it.
            value = value.strip(b" \t")
        name = name.lower()
        if name == b"content-length":
            has_length = True
        elif name == b"date":
            has_date = True
        checked.append((name, value))
    return checked, has_length, has_date


class RequestInfo:
    """The request as gunicorn's hooks and access log expect to see it."""

    def __init__(self, cycle: RequestCycle) -> None:
        request = cycle.request
        scope = cycle.scope
        self.cycle = cycle
        self.method = request.method.decode("ascii")
        self.uri = request.target.decode("latin-1")
        self.path = request.path.decode("latin-1")
        self.query = request.query.decode("latin-1")
        major, _, minor = request.http_version.partition(".")
        self.version = (int(major), int(minor or 0))
        self.scheme = scope["scheme"]
        self.headers = [
            (n.decode("latin-1").upper(), v.decode("latin-1")) for n, v in scope["headers"]
        ]
        self.peer_addr = cycle.conn.client
        self.remote_addr = cycle.conn.client

    def environ(self) -> dict[str, Any]:
        cycle = self.cycle
        scope = cycle.scope
        env: dict[str, Any] = {
            "REQUEST_METHOD": self.method,
            "RAW_URI": self.uri,
            "PATH_INFO": unquote_to_bytes(cycle.request.path).decode("latin-1"),
            "QUERY_STRING": self.query,
            "SCRIPT_NAME": scope["root_path"],
            "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
            "wsgi.url_scheme": self.scheme,
        }
        client = scope["client"]
        if client:
            env["REMOTE_ADDR"] = client[0]
            env["REMOTE_PORT"] = str(client[1])
        proxy = cycle.conn.proxy_info
        if proxy is not None:
            env.update(proxy.environ())
        for name, value in self.headers:
            key = "HTTP_" + name.replace("-", "_")
            env[key] = env[key] + "," + value if key in env else value
        if "HTTP_CONTENT_TYPE" in env:
            env["CONTENT_TYPE"] = env.pop("HTTP_CONTENT_TYPE")
        if "HTTP_CONTENT_LENGTH" in env:
            env["CONTENT_LENGTH"] = env.pop("HTTP_CONTENT_LENGTH")
        return env


class ResponseInfo:
    """The response as gunicorn's access log and ``post_request`` see it."""

    def __init__(self, cycle: RequestCycle) -> None:
        self.status = f"{cycle.status}" if cycle.status else "-"
        self.status_code = cycle.status
        self.sent = cycle.bytes_sent
        self.response_length = cycle.bytes_sent
        self.headers = [
            (n.decode("latin-1"), v.decode("latin-1")) for n, v in cycle.response_headers
        ]
