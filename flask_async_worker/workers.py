"""The gunicorn worker classes.

The arbiter stays unchanged: it forks these workers, watches their
heartbeat, signals them and replaces them.  A worker process owns one event
loop, a :class:`~flask_async_worker.server.Server` on gunicorn's listening
sockets, and two thread pools, both sized by gunicorn's ``threads``:

* the sync pool runs the app's sync code (sync views, Flask's ``wsgi_app``);
  its threads may block waiting for the loop (``ensure_sync``, reading the
  request body, sending the response);
* the offload pool is the loop's default executor: ``run_sync``,
  ``asyncio.to_thread``, ``loop.run_in_executor(None)`` and ``getaddrinfo``
  run there.  Coroutines wait for it, so it must not be the sync pool:
  with every sync thread blocked in ``ensure_sync`` on a coroutine that
  needs a thread, the worker would hang for good.

Signals follow gunicorn's contract: SIGTERM is a graceful stop bounded by
``graceful_timeout``; SIGQUIT and SIGINT a quick one (after ``worker_int``);
SIGUSR1 reopens log files; SIGABRT (sent by the arbiter when the heartbeat
stops) calls ``worker_abort`` and exits.  SIGABRT is the one handler
installed with ``signal.signal`` instead of on the loop: the heartbeat stops
precisely when the loop is blocked, and a loop-dispatched handler would
never run.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gunicorn.workers import base

from .lifespan import Lifespan, LifespanFailure
from .server import ASGIApp, Server
from .settings import Settings
from .watchdog import LoopWatchdog

WORKER_BOOT_ERROR = 3
#: Seconds the executor's threads get to finish at process exit after a
#: clean stop; after a quick exit, an abort or an expired graceful timeout
#: the worker has given up on them and does not wait at all.
THREAD_EXIT_GRACE = 0.25


def is_asgi(app: Any) -> bool:
    """An ASGI 3 application is an async callable of (scope, receive, send)."""
    if inspect.isclass(app):
        return False
    if not callable(app):
        return False
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else type(app).__call__
    if not (inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app)):
        return False
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return True
    return len(params) == 3 or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()
    )


class AsyncioWorker(base.Worker):  # type: ignore[misc]
    """The worker on the standard library's asyncio event loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.server: Server | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.offload: ThreadPoolExecutor | None = None
        self.settings: Settings = None  # type: ignore[assignment]
        self.asgi: ASGIApp = None  # type: ignore[assignment]
        self.quick_exit = False
        self.exit_code = 0
        self.abandoned = False
        self._stop_event: asyncio.Event | None = None

    @staticmethod
    def new_event_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Fail at arbiter start, not in every forked worker.
        Settings.from_gunicorn(cfg)

    # -- process set-up (after fork) ---------------------------------------------

    def init_process(self) -> None:
        self.loop = self.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.settings = Settings.from_gunicorn(self.cfg)
        self.executor = ThreadPoolExecutor(
            max_workers=self.settings.threads, thread_name_prefix="flask-async-worker"
        )
        self.offload = ThreadPoolExecutor(
            max_workers=self.settings.threads, thread_name_prefix="flask-async-worker-offload"
        )
        self.loop.set_default_executor(self.offload)
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self._exit_despite_busy_threads)
        route_adapter_log(self.log)
        super().init_process()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.handle_term)
        loop.add_signal_handler(signal.SIGQUIT, self.handle_quick)
        loop.add_signal_handler(signal.SIGINT, self.handle_quick)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        loop.add_signal_handler(signal.SIGWINCH, self.handle_winch_ignored)
        signal.signal(signal.SIGABRT, self.handle_abort)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.asgi = self.wrap_app(self.wsgi)

    def wrap_app(self, app: Any) -> ASGIApp:
        """Serve Flask through the adapter, ASGI as is, plain WSGI in threads."""
        try:
            from flask import Flask
        except ImportError:  # pragma: no cover - flask is a dependency
            Flask = None  # type: ignore[assignment,misc]
        if Flask is not None and isinstance(app, Flask):
            from .adapter import FlaskAdapter

            return FlaskAdapter(app, executor=self.executor, **self._wsgi_options())
        if is_asgi(app):
            return app  # type: ignore[no-any-return]
        from .wsgi import WSGIAdapter

        wsgi = WSGIAdapter(app, executor=self.executor, **self._wsgi_options())
        if Flask is None:
            return wsgi  # pragma: no cover
        from .adapter.bridge import BridgedApp

        # Flask apps inside (DispatcherMiddleware) run async code on this loop.
        return BridgedApp(wsgi)

    def _wsgi_options(self) -> dict[str, Any]:
        from gunicorn import SERVER_SOFTWARE
        from gunicorn.http.wsgi import WSGIErrorsWrapper

        return {
            "errors": WSGIErrorsWrapper(self.cfg),
            "multiprocess": self.cfg.workers > 1,
            "server_software": SERVER_SOFTWARE,
            "stream_buffer": self.settings.extra.write_buffer,
            "input_buffer": self.settings.extra.body_buffer,
        }

    # -- signals -------------------------------------------------------------------

    def wakeup(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def handle_term(self) -> None:
        self.alive = False
        self.wakeup()

    def handle_quick(self) -> None:
        self.quick_exit = True
        if self.alive:
            self.alive = False
            self.cfg.worker_int(self)
        self.wakeup()

    def handle_winch_ignored(self) -> None:
        self.log.debug("worker: SIGWINCH ignored.")

    def handle_abort(self, sig: int, frame: Any) -> None:
        self.alive = False
        self.exit_code = 1
        self.abandoned = True
        self.cfg.worker_abort(self)
        sys.exit(1)

    def _exit_despite_busy_threads(self) -> None:
        """Leave without waiting for sync calls nobody waits for any more.

        Python joins every executor thread at exit, so a sync view still
        running after a quick exit, an abort or an expired graceful timeout
        would keep the process alive until it returns (or until the arbiter
        SIGKILLs it).  This runs at interpreter shutdown, after the arbiter
        code has called ``worker_exit``, and before the threads are joined.
        """
        threads = [thread for pool in self._pools() for thread in getattr(pool, "_threads", ())]
        if not threads:
            return
        deadline = time.monotonic() + (0.0 if self.abandoned else THREAD_EXIT_GRACE)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(t.is_alive() for t in threads)
        if not busy:
            return
        self.log.warning("Exiting with %d sync call(s) still running in threads", busy)
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(self.exit_code)

    def _pools(self) -> list[Any]:
        """Every thread pool of this worker: the sync pool, the loop's
        default executor, and the adapter's pool of sync WebSocket handlers."""
        ws = getattr(getattr(self, "asgi", None), "_websocket_pool", None)
        pools = [self.executor, self.offload, ws.executor if ws is not None else None]
        return [pool for pool in pools if pool is not None]

    # -- the main loop ---------------------------------------------------------------

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except LifespanFailure as exc:
            self.log.error("Application start-up failed: %s", exc)
            self.exit_code = WORKER_BOOT_ERROR
            sys.exit(WORKER_BOOT_ERROR)
        finally:
            self._close_loop()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        lifespan = Lifespan(self.asgi, self.log, mode=getattr(self.cfg, "asgi_lifespan", "auto"))
        await lifespan.startup()
        server = self.server = Server(self.asgi, self.settings, self, self.loop, lifespan.state)
        await server.start([s.sock for s in self.sockets], self._ssl_context())
        tune_gc(self.settings.extra.gc_threshold)
        heartbeat = self.loop.create_task(self._heartbeat(server))
        watchdog = LoopWatchdog(self.loop, self.settings.extra.blocking_threshold, self.log)
        watchdog.start()
        try:
            await self._stop_event.wait()
            # The arbiter SIGKILLs the worker graceful_timeout after it asked
            # it to stop; the app's shutdown gets what the drain left of that
            # (less a moment for worker_exit), not a fixed minute.
            deadline = time.monotonic() + self.settings.graceful_timeout - 0.5
            await self._stop(server)
            if not self.quick_exit:
                lifespan.timeout = max(0.1, min(lifespan.timeout, deadline - time.monotonic()))
                await lifespan.shutdown()
        finally:
            watchdog.stop()
            heartbeat.cancel()

    async def _heartbeat(self, server: Server) -> None:
        tick = self.settings.extra.tick
        while True:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False
            if not self.alive:
                # The reloader thread and max_requests flip ``alive``.
                self.wakeup()
            server.sweep()
            await asyncio.sleep(tick)

    async def _stop(self, server: Server) -> None:
        started = time.monotonic()
        drained = False
        if not self.quick_exit:
            # The arbiter kills the worker at graceful_timeout; keep a margin
            # so the app's shutdown hooks and worker_exit still run.
            timeout = self.settings.graceful_timeout
            budget = timeout - min(max(timeout * 0.05, 0.5), timeout / 2)
            drain = asyncio.ensure_future(server.drain(budget))
            while not drain.done() and not self.quick_exit:
                self._stop_event.clear()  # type: ignore[union-attr]
                waiter = asyncio.ensure_future(self._stop_event.wait())  # type: ignore[union-attr]
                await asyncio.wait((drain, waiter), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            drained = drain.done() and not drain.cancelled() and drain.result()
            if drain.done() and not drained:
                self.log.warning(
                    "Graceful timeout: closing %d connection(s) still open after %.1fs",
                    len(server.connections),
                    time.monotonic() - started,
                )
            drain.cancel()
        # Requests still running now are given up on: at exit, sync calls
        # still in the executor are not waited for.
        self.abandoned = not drained
        server.abort_all()
        await server.cancel_requests()

    def _ssl_context(self) -> Any:
        if not self.cfg.is_ssl:
            return None
        from gunicorn import sock

        context = sock.ssl_context(self.cfg)
        # Advertise what http_protocols names, in its order of preference.
        alpn = {"h1": "http/1.1", "h2": "h2"}
        offered = [alpn[p] for p in self.settings.http_protocols if p in alpn]
        context.set_alpn_protocols(offered or ["http/1.1"])
        return context

    def _close_loop(self) -> None:
        loop = self.loop
        try:
            for pool in self._pools():
                pool.shutdown(wait=False, cancel_futures=True)
            if not loop.is_closed():
                # A quick exit (SIGQUIT/SIGINT) skips the lifespan shutdown and
                # SIGABRT leaves from the middle of a request: cancel what is
                # left, as asyncio.run does, instead of letting the closed loop
                # destroy pending tasks (which logs errors from their finally).
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        except Exception:  # pragma: no cover - best effort at exit
            self.log.debug("Error closing the event loop", exc_info=True)


def route_adapter_log(log: Any) -> None:
    """Send the adapter's records to gunicorn's error log.

    The adapter logs as ``flask_async_worker`` (it runs under any ASGI
    server); under this worker its warnings (a refused WebSocket, a hook
    blocking the loop) belong with the server's, in the same file, format
    and level, unless the app configured that logger itself.
    """
    error_log = getattr(log, "error_log", None)
    logger = logging.getLogger("flask_async_worker")
    if error_log is None or logger.handlers:
        return
    for handler in error_log.handlers:
        logger.addHandler(handler)
    logger.setLevel(error_log.level)
    logger.propagate = False


def tune_gc(threshold: int) -> None:
    """Keep the cyclic GC from walking what every request in flight holds.

    A request's objects live as long as it waits (a second, for a view
    awaiting a slow service), so with thousands in flight Python's default
    threshold (700 net allocations) runs a collection every few requests and
    promotes what is waiting into the old generation, whose full collections
    then walk all of it: with 5,000 requests awaiting 1 s that was a sixth of
    the loop's time.  The server breaks the cycles a request makes, so its
    objects are freed by reference counting; a larger threshold then leaves
    the collector almost idle.  Objects alive after start-up (the app, its
    imports) are frozen out of every collection.  An application that set
    its own thresholds keeps them.
    """
    gc.collect()
    gc.freeze()
    first, second, third = gc.get_threshold()
    if first == _PYTHON_GC_THRESHOLD:
        gc.set_threshold(threshold, second, third)


_PYTHON_GC_THRESHOLD = 700


class UVLoopWorker(AsyncioWorker):
    """The worker on uvloop (falls back to asyncio where uvloop is missing)."""

    @staticmethod
    def new_event_loop() -> asyncio.AbstractEventLoop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - platform without uvloop
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()
