"""Reports code that blocks the event loop, naming it.

A sync call inside an ``async def`` view (``time.sleep``, a blocking
database driver, a big template) stalls every request of the worker.  A
callback on the loop stamps the time every ``threshold / 2`` seconds; a
daemon thread checks the stamp, and when the loop has been silent longer
than ``threshold`` it captures the loop thread's stack — the innermost
frames are the culprit — and reports it with the duration when the loop
comes back.  A block long enough to risk the heartbeat timeout is reported
at once as well, so a worker the arbiter kills leaves a trace of why.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from typing import Any

# Frames of the machinery around the app: the culprit is never in them.
_SKIP_MODULES = ("asyncio/", "uvloop", "/flask_async_worker/", "/gunicorn/")


class LoopWatchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float, log: Any) -> None:
        self.loop = loop
        self.threshold = threshold
        self.log = log
        self.last = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._blocked_since: float | None = None
        self._stack = ""
        self._warned_long = False

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(
            target=self._watch, name="flask-async-worker-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()

    def _beat(self) -> None:
        now = time.monotonic()
        since = self._blocked_since
        if since is not None:
            self._blocked_since = None
        if since is not None and now - self.last > self.threshold:
            self.log.warning(
                "Event loop blocked for %.0f ms by sync code:\n%s",
                (now - self.last) * 1000,
                self._stack,
            )
        self.last = now
        self._handle = self.loop.call_later(self.threshold / 2, self._beat)

    def _watch(self) -> None:
        while not self._stop.wait(self.threshold / 2):
            silent = time.monotonic() - self.last
            if silent <= self.threshold:
                self._warned_long = False
                continue
            if self._blocked_since is None:
                self._stack = self._capture()
                self._blocked_since = self.last
            if silent > max(1.0, 10 * self.threshold) and not self._warned_long:
                self._warned_long = True
                self.log.warning(
                    "Event loop blocked for %.1f s so far by:\n%s", silent, self._stack
                )

    def _capture(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (stack unavailable)"
        stack = traceback.extract_stack(frame)
        frames = [f for f in stack if not any(part in f.filename for part in _SKIP_MODULES)]
        return "".join(traceback.format_list((frames or stack)[-6:])).rstrip()
