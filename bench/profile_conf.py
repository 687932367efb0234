"""gunicorn config that profiles one worker process with cProfile.

    BENCH_PROFILE_OUT=/tmp/ours.pstats \\
        gunicorn -c bench/profile_conf.py -k flask_async_worker.UVLoopWorker ...

Without ``BENCH_PROFILE_OUT`` the hooks do nothing.  With it,
``post_worker_init`` starts a profiler in the worker's main thread (the event
loop) and in every thread the worker's executor starts from then on (sync
views run there); ``worker_exit`` writes the merged statistics to that path
(pstats/marshal format, readable with ``python -m pstats``).

The timer is each thread's CPU time (``time.thread_time``), so time a thread
spends blocked (the loop in ``epoll_wait``, a pool thread waiting for work)
is not counted: the numbers are where CPU goes, per function.  Deterministic
profiling slows call-heavy code more than the rest, so compare shares, not
absolute times, with an unprofiled run.
"""

from __future__ import annotations

import cProfile
import marshal
import os
import pstats
import tempfile
import threading
import time
from typing import Any

OUT = os.environ.get("BENCH_PROFILE_OUT", "")
_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start() -> None:
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def post_worker_init(worker: Any) -> None:
    if not OUT:
        return
    executor = getattr(worker, "executor", None)
    if executor is not None:
        # ThreadPoolExecutor reads its initializer when it starts a thread,
        # and starts them lazily: every pool thread runs _start first.
        executor._initializer = _start
        executor._initargs = ()
    _start()


def worker_exit(server: Any, worker: Any) -> None:
    if not OUT or worker.pid != os.getpid():
        return
    with _lock:
        profiles = list(_profiles)
    paths = []
    for profile in profiles:
        # snapshot without disable(): disable() acts on the calling thread.
        profile.snapshot_stats()
        fd, path = tempfile.mkstemp(suffix=".pstats")
        with os.fdopen(fd, "wb") as f:
            marshal.dump(profile.stats, f)
        paths.append(path)
    if not paths:
        return
    stats = pstats.Stats(paths[0])
    for path in paths[1:]:
        stats.add(path)
    stats.dump_stats(OUT)
    for path in paths:
        os.unlink(path)
