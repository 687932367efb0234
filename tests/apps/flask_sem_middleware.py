"""A Flask app whose ``wsgi_app`` is wrapped by WSGI middleware.

``ProxyFix`` trusts one proxy for X-Forwarded-For/-Proto/-Host/-Prefix, and
``DispatcherMiddleware`` mounts a second Flask app under ``/sub``.  Both apps
have async and sync views reporting what they see, and on which loop.
``plain`` serves them through a bare ``DispatcherMiddleware``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from flask import Flask, current_app, jsonify, request, url_for
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_async_worker.adapter.bridge import SERVING


def seen(main: Flask) -> dict[str, Any]:
    adapter = main.extensions.get("flask_async_worker")
    worker_loop = adapter.binding.loop if adapter is not None else None
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    serving = SERVING.get()
    return {
        "app": current_app.name,
        "remote_addr": request.remote_addr,
        "scheme": request.scheme,
        "host": request.host,
        "script_root": request.script_root,
        "url": url_for(request.endpoint or "", _external=True),
        "q": request.args.get("q"),
        "on_worker_loop": loop is not None and loop is worker_loop,
        # the loop of whatever serves this request (no FlaskAdapter for ``plain``)
        "on_serving_loop": loop is not None and serving is not None and loop is serving.loop,
        "on_loop_thread": adapter is not None and threading.get_ident() == adapter.binding.thread,
    }


def create_app() -> Flask:
    main = Flask("flask_sem_middleware")
    sub = Flask("flask_sem_middleware_sub")

    @main.get("/async")
    async def main_async() -> Any:
        await asyncio.sleep(0.001)
        return jsonify(seen(main))

    @main.get("/sync")
    def main_sync() -> Any:
        return jsonify(seen(main))

    @sub.get("/async")
    async def sub_async() -> Any:
        await asyncio.sleep(0.001)
        return jsonify(seen(main))

    @sub.get("/sync")
    def sub_sync() -> Any:
        return jsonify(seen(main))

    dispatcher = DispatcherMiddleware(main.wsgi_app, {"/sub": sub})
    main.wsgi_app = ProxyFix(  # type: ignore[method-assign]
        dispatcher, x_for=1, x_proto=1, x_host=1, x_prefix=1
    )
    main.extensions["flask_sem_sub"] = sub
    return main


def create_plain() -> Any:
    """The same two apps behind a plain ``DispatcherMiddleware``: the served
    object is no Flask app at all."""
    main = create_app()
    return DispatcherMiddleware(main.wsgi_app, {"/other": main.extensions["flask_sem_sub"]})


app = create_app()
plain = create_plain()
