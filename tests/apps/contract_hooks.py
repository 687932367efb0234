"""A gunicorn config file whose hooks record their calls, one JSON line each.

Used with ``-c contract_hooks.py``; the file written is named by the
``CONTRACT_HOOKS_FILE`` environment variable (no variable: no record).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _record(event: str, **data: Any) -> None:
    path = os.environ.get("CONTRACT_HOOKS_FILE")
    if not path:
        return
    data["event"] = event
    data["pid"] = os.getpid()
    data["time"] = time.time()
    with open(path, "a") as f:
        f.write(json.dumps(data) + "\n")


def post_worker_init(worker: Any) -> None:
    _record("post_worker_init", worker_pid=worker.pid, has_app=worker.wsgi is not None)


def worker_int(worker: Any) -> None:
    _record("worker_int", worker_pid=worker.pid)


def worker_abort(worker: Any) -> None:
    _record("worker_abort", worker_pid=worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    _record("worker_exit", worker_pid=worker.pid)


def pre_request(worker: Any, req: Any) -> None:
    _record(
        "pre_request",
        method=req.method,
        path=req.path,
        uri=req.uri,
        query=req.query,
        headers=[list(h) for h in req.headers],
    )


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    _record(
        "post_request",
        method=req.method,
        path=req.path,
        uri=req.uri,
        status=str(resp.status),
        environ_method=environ.get("REQUEST_METHOD"),
        environ_path=environ.get("PATH_INFO"),
        response_headers=[list(h) for h in resp.headers],
    )
