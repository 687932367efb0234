"""The ASGI lifespan protocol, driven from the worker.

An application's start-up code (opening a database pool, an HTTP client)
must run on the loop that will serve its requests, once per worker, after
the fork; its shutdown code must run on the same loop before the worker
exits.  The lifespan protocol is the ASGI way to say so, and the Flask
adapter uses it for its own start-up and shutdown hooks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .server import ASGIApp, Message


class LifespanFailure(Exception):
    """The application reported that it cannot start (or stop)."""


class Lifespan:
    """Runs one application's lifespan task.

    ``mode`` is gunicorn's ``asgi_lifespan``: ``auto`` tolerates apps that do
    not speak the protocol (they raise or return on the lifespan scope),
    ``on`` treats that as a start-up failure, ``off`` never starts it.
    """

    def __init__(self, app: ASGIApp, log: Any, mode: str = "auto", timeout: float = 60.0) -> None:
        self.app = app
        self.log = log
        self.mode = mode
        self.timeout = timeout
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = False

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._to_app.get, self._send)
        except BaseException as exc:
            if not self.supported:
                # The app does not speak lifespan (it raised on the scope).
                self._from_app.put_nowait({"type": "unsupported", "exc": exc})
                if isinstance(exc, Exception):
                    return
            elif not isinstance(exc, asyncio.CancelledError | GeneratorExit):
                # Cancelled: the worker is leaving without a shutdown (a quick
                # exit or an abort), which is not the application's fault.
                self.log.error("Exception in ASGI lifespan", exc_info=exc)
            raise
        finally:
            self._from_app.put_nowait({"type": "lifespan.finished"})

    async def _send(self, message: Message) -> None:
        self.supported = True
        await self._from_app.put(message)

    async def startup(self) -> None:
        if self.mode == "off":
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await asyncio.wait_for(self._from_app.get(), self.timeout)
        kind = reply["type"]
        if kind == "lifespan.startup.complete":
            return
        if kind == "lifespan.startup.failed":
            raise LifespanFailure(reply.get("message", "") or "startup failed")
        # "unsupported" or "finished" without a reply.
        self.supported = False
        if self.mode == "on":
            raise LifespanFailure(f"the application does not support lifespan: {reply!r}")
        self.log.debug("ASGI lifespan not supported by the application")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            reply = await asyncio.wait_for(self._from_app.get(), self.timeout)
        except TimeoutError:
            self.log.error("ASGI lifespan shutdown timed out after %.1fs", self.timeout)
            self._task.cancel()
            return
        if reply["type"] == "lifespan.shutdown.failed":
            self.log.error("ASGI lifespan shutdown failed: %s", reply.get("message", ""))
