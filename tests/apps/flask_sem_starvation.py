"""Thread-path requests whose coroutines need a thread themselves.

``ProxyFix`` puts every request on the thread path, where an async view
runs on the loop through ``ensure_sync`` while its pool thread waits.  Each
view then asks for a thread of its own (``run_sync``, ``asyncio.to_thread``,
``getaddrinfo``) and reports the name of the thread it got.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_async_worker import run_sync


def create_app() -> Flask:
    app = Flask("flask_sem_starvation")

    def blocking() -> str:
        time.sleep(float(request.args.get("sleep", "0.05")))
        return threading.current_thread().name

    @app.get("/run-sync")
    async def with_run_sync() -> Any:
        return jsonify(thread=await run_sync(blocking))

    @app.get("/to-thread")
    async def with_to_thread() -> Any:
        return jsonify(thread=await asyncio.to_thread(time_and_name))

    @app.get("/getaddrinfo")
    async def with_getaddrinfo() -> Any:
        await asyncio.sleep(0.02)
        infos = await asyncio.get_running_loop().getaddrinfo("localhost", 80)
        return jsonify(resolved=bool(infos))

    @app.get("/sync-bridge")
    def sync_bridge() -> Any:
        return current_app.ensure_sync(with_run_sync)()

    @app.get("/pool")
    def pool() -> Any:
        return jsonify(thread=threading.current_thread().name)

    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    return app


def time_and_name() -> str:
    time.sleep(0.05)
    return threading.current_thread().name


app = create_app()
