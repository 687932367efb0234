"""``ensure_sync``/``async_to_sync`` from sync code around async code.

Every coroutine here reports whether it runs on the worker's loop (the
adapter's ``binding.loop``), and every sync wrapper on which thread it ran.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

from flask import (
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    request,
    url_for,
)
from flask.views import MethodView


def loop_report() -> dict[str, Any]:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # sync code, in a pool thread
        loop = None
    adapter = current_app.extensions.get("flask_async_worker")
    worker_loop = adapter.binding.loop if adapter is not None else None
    return {
        "loop_is_worker_loop": loop is worker_loop,
        "loop_id": id(loop),
        "thread": threading.get_ident(),
        "loop_thread": adapter.binding.thread if adapter is not None else None,
    }


def login_required(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flask-Login's shape: ``functools.wraps`` + ``current_app.ensure_sync``."""

    @functools.wraps(func)
    def decorated_view(*args: Any, **kwargs: Any) -> Any:
        g.decorator_thread = threading.get_ident()
        if not request.args.get("user"):
            return "login first", 401
        return current_app.ensure_sync(func)(*args, **kwargs)

    return decorated_view


def login_required_unwrapped(func: Callable[..., Any]) -> Callable[..., Any]:
    """The same, written without ``functools.wraps``: a plain sync view."""

    def decorated_view(*args: Any, **kwargs: Any) -> Any:
        g.decorator_thread = threading.get_ident()
        if not request.args.get("user"):
            return "login first", 401
        return current_app.ensure_sync(func)(*args, **kwargs)

    decorated_view.__name__ = func.__name__
    return decorated_view


def flaskr_login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Flask's tutorial (flaskr): returns ``view(**kwargs)`` without ensure_sync."""

    @functools.wraps(view)
    def wrapped_view(**kwargs: Any) -> Any:
        if g.user is None:
            return redirect(url_for("login"))
        return view(**kwargs)

    return wrapped_view


async def quick_check() -> bool:
    """An async permission check that never waits."""
    return request.args.get("role") == "admin"


async def io_check() -> bool:
    """An async permission check that waits (as a database query would)."""
    await asyncio.sleep(0.001)
    return request.args.get("role") == "admin"


def require_admin(check: Callable[[], Any], wraps: bool = True) -> Callable[..., Any]:
    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        def decorated(*args: Any, **kwargs: Any) -> Any:
            g.decorator_thread = threading.get_ident()
            if not current_app.ensure_sync(check)():
                abort(403)
            return current_app.ensure_sync(func)(*args, **kwargs)

        if wraps:
            return functools.wraps(func)(decorated)
        decorated.__name__ = func.__name__
        return decorated

    return decorator


def add_header(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that post-processes the view's return value."""

    @functools.wraps(func)
    def decorated(*args: Any, **kwargs: Any) -> Any:
        response = make_response(current_app.ensure_sync(func)(*args, **kwargs))
        response.headers["X-Decorated"] = "1"
        return response

    return decorated


def create_app() -> Flask:
    app = Flask("flask_sem_bridge")

    @app.before_request
    def load_user() -> None:
        g.user = request.args.get("user")

    def report(**extra: Any) -> Any:
        return jsonify(
            decorator_thread=g.get("decorator_thread"),
            q=request.args.get("q"),
            **loop_report(),
            **extra,
        )

    @app.get("/wrapped")
    @login_required
    async def wrapped() -> Any:
        await asyncio.sleep(0.001)
        return report()

    @app.get("/unwrapped")
    @login_required_unwrapped
    async def unwrapped() -> Any:
        await asyncio.sleep(0.001)
        return report()

    async def seen_by_coroutine(tag: str) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"tag": tag, "q": request.args.get("q"), **loop_report()}

    @app.get("/ext")
    def extension_in_sync_view() -> Any:
        # An extension's helper, called from a sync view (an executor thread).
        calls = [current_app.ensure_sync(seen_by_coroutine)(f"ensure_sync{i}") for i in range(3)]
        calls.append(current_app.async_to_sync(seen_by_coroutine)("async_to_sync"))
        return jsonify(calls=calls, view_thread=threading.get_ident())

    @app.get("/login")
    def login() -> str:
        return "login page"

    @app.get("/flaskr")
    @flaskr_login_required
    async def flaskr() -> Any:
        await asyncio.sleep(0.001)
        return report(user=g.user)

    @app.get("/admin")
    @require_admin(quick_check)
    async def admin() -> Any:
        await asyncio.sleep(0)
        return "secret"

    @app.get("/admin-io")
    @require_admin(io_check)
    async def admin_io() -> Any:
        await asyncio.sleep(0)
        return "secret"

    @app.get("/admin-io-unwrapped")
    @require_admin(io_check, wraps=False)
    async def admin_io_unwrapped() -> Any:
        await asyncio.sleep(0)
        return "secret"

    class Profile(MethodView):
        decorators = [login_required]

        async def get(self, name: str) -> Any:
            await asyncio.sleep(0.001)
            return report(name=name)

        def post(self, name: str) -> Any:
            return report(name=name, method="post")

    app.add_url_rule("/profile/<name>", view_func=Profile.as_view("profile"))

    @app.get("/post-processed")
    @add_header
    async def post_processed() -> Any:
        await asyncio.sleep(0)
        return "body"

    @app.get("/hook-ensure-sync")
    async def hook_ensure_sync() -> Any:
        await asyncio.sleep(0)
        return jsonify(g.hook_saw)

    @app.before_request
    def hook_calling_ensure_sync() -> None:
        if request.path == "/hook-ensure-sync":
            # A sync hook of an async view; with ASYNC_WORKER_SYNC_HOOKS =
            # "executor" it runs in a pool thread, and its coroutine on the loop.
            g.hook_saw = current_app.ensure_sync(seen_by_coroutine)("hook")
            g.hook_saw["hook_thread"] = threading.get_ident()

    return app


app = create_app()
