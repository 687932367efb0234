"""Which thread runs each part of a request to an async view.

flaskr's pattern: a SQLite connection opened in ``before_request``, used by
the (async) view, closed in ``teardown_appcontext``.  SQLite refuses a
connection used from another thread, so this only works when the hooks, the
view and the teardown share one thread.  Every step records its thread in
``THREADS[rid]`` (readable at ``/threads/<rid>`` under gunicorn).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from typing import Any

from flask import Flask, current_app, g, jsonify, request, signals

THREADS: dict[str, dict[str, Any]] = {}


def note(step: str) -> None:
    # teardown_appcontext runs after the request context is gone: key on g.
    if "rid" not in g:
        g.rid = request.args.get("rid", "-")
    rid = g.rid
    adapter = current_app.extensions.get("flask_async_worker")
    seen = THREADS.setdefault(rid, {})
    seen["loop_thread"] = adapter.binding.thread if adapter is not None else None
    seen[step] = threading.get_ident()


def create_app(sync_hooks: str = "loop") -> Flask:
    app = Flask("flask_sem_affinity")
    app.config["ASYNC_WORKER_SYNC_HOOKS"] = sync_hooks
    use_sqlite = sync_hooks == "loop"

    @app.before_request
    def open_db() -> None:
        note("before_request")
        if use_sqlite:
            g.db = sqlite3.connect(":memory:")
            g.db.execute("create table t (q text)")

    @app.before_request
    def slow_hook() -> None:
        if request.args.get("slow"):
            time.sleep(float(request.args["slow"]))

    @app.after_request
    def after(response: Any) -> Any:
        note("after_request")
        if use_sqlite:
            g.db.execute("select count(*) from t").fetchone()
        return response

    @app.teardown_request
    def teardown_request(exc: BaseException | None) -> None:
        note("teardown_request")
        if use_sqlite:
            g.db.execute("select 1").fetchone()

    @app.teardown_appcontext
    def close_db(exc: BaseException | None) -> None:
        note("teardown_appcontext")
        db = g.pop("db", None)
        if db is not None:
            db.close()
            g.closed = True

    def on_request_started(sender: Any, **extra: Any) -> None:
        note("request_started")
        if request.args.get("slow_signal"):
            time.sleep(float(request.args["slow_signal"]))

    signals.request_started.connect(on_request_started, app)
    app.extensions["flask_sem_receivers"] = on_request_started  # blinker holds it weakly

    @app.get("/db")
    async def view() -> Any:
        note("view_start")
        q = request.args.get("q", "")
        await asyncio.sleep(0.001)
        if use_sqlite:
            g.db.execute("insert into t values (?)", (q,))
        await asyncio.sleep(0.001)
        note("view_end")
        stored = g.db.execute("select q from t").fetchone()[0] if use_sqlite else q
        return jsonify(q=stored)

    @app.get("/sync")
    def sync_view() -> Any:
        note("view_start")
        return jsonify(q=request.args.get("q"))

    @app.get("/threads/<rid>")
    def threads(rid: str) -> Any:
        return jsonify(THREADS.get(rid, {}))

    return app


app = create_app(os.environ.get("FLASK_SEM_SYNC_HOOKS", "loop"))
