"""One Flask app, generated with each user function sync or async.

``create_app(view, flavours)`` builds the same application whatever the
mix: every hook, error handler, context processor and signal receiver is
the same sync function, or that function behind an ``async def`` that
awaits once first.  Each records what it saw in a per-request log
(``LOGS[rid]``, ``rid`` from the query string), so a test can compare the
order of calls, and what each call saw, with Flask's own test client
serving the all-sync variant.

Run under gunicorn as ``flask_sem_matrix:app``, choosing the variant with
``FLASK_SEM_VIEW`` / ``FLASK_SEM_MIX`` / ``FLASK_SEM_SYNC_HOOKS``; the log of
a request is then read back from ``/_log/<rid>``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import random
from collections.abc import Callable, Generator, Mapping
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    after_this_request,
    current_app,
    flash,
    g,
    get_flashed_messages,
    has_request_context,
    jsonify,
    render_template,
    request,
    session,
    signals,
    url_for,
)
from flask.views import MethodView, View

#: Every user function whose flavour a test can choose.
HOOKS = (
    "before_request",
    "after_request",
    "teardown_request",
    "teardown_appcontext",
    "context_processor",
    "errorhandler_418",
    "errorhandler_MyError",
    "errorhandler_RaisingError",
    "errorhandler_500",
    "errorhandler_404",
    "after_this_request",
    "bp_before_request",
    "bp_after_request",
    "bp_teardown_request",
    "bp_errorhandler_BpError",
    "sig_request_started",
    "sig_request_finished",
    "sig_got_request_exception",
    "sig_request_tearing_down",
    "sig_appcontext_tearing_down",
)

#: How the views are written.  Each ``*_async`` one has a ``*_sync`` twin.
VIEWS = (
    "sync",
    "async",
    "methodview_sync",
    "methodview_async",
    "view_sync",
    "view_async",
    "wrapped_sync",
    "wrapped_async",
)

MIXES = ("all_sync", "all_async", "alt_a", "alt_b", "rand_1", "rand_2")

LOGS: dict[str, list[list[Any]]] = {}
#: Set by before_request; the view and after_request must see it (Flask runs
#: a request in one context).
REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("flask_sem_var")
HERE = os.path.dirname(os.path.abspath(__file__))

Body = Generator[None, None, Any]


class MyError(Exception):
    pass


class RaisingError(Exception):
    pass


class HandlerFailed(Exception):
    pass


class Unhandled(Exception):
    pass


class BpError(Exception):
    pass


def mix(name: str) -> dict[str, str]:
    """A named assignment of "sync"/"async" to every hook."""
    if name == "all_sync":
        return dict.fromkeys(HOOKS, "sync")
    if name == "all_async":
        return dict.fromkeys(HOOKS, "async")
    if name in ("alt_a", "alt_b"):
        first = "async" if name == "alt_a" else "sync"
        other = "sync" if first == "async" else "async"
        return {h: first if i % 2 == 0 else other for i, h in enumerate(HOOKS)}
    if name.startswith("rand_"):
        rng = random.Random(name)
        return {h: rng.choice(("sync", "async")) for h in HOOKS}
    raise ValueError(name)


def sync_twin(view: str) -> str:
    return view.replace("async", "sync")


# -- recording -----------------------------------------------------------------------


def _log() -> list[list[Any]]:
    log: list[list[Any]] | None = g.get("_sem_log")
    if log is None:
        rid = request.args.get("rid", "-") if has_request_context() else "-"
        log = LOGS.setdefault(rid, [])
        g._sem_log = log
    return log


def rec(event: str, detail: Any = None) -> None:
    _log().append([event, detail])


def exc_name(exc: BaseException | None) -> str | None:
    return None if exc is None else type(exc).__name__


def flavoured(kind: str, func: Callable[..., Any], suspend: bool = True) -> Callable[..., Any]:
    """``func`` itself, or an ``async def`` that awaits once and calls it."""
    if kind == "sync":
        return func
    if kind != "async":
        raise ValueError(kind)

    async def async_func(*args: Any, **kwargs: Any) -> Any:
        if suspend:
            await asyncio.sleep(0)
        return func(*args, **kwargs)

    async_func.__name__ = func.__name__
    async_func.__qualname__ = f"async_{func.__qualname__}"
    return async_func


# -- view bodies: generators that yield where an async view awaits ---------------------------


def drive_sync(body: Body) -> Any:
    try:
        while True:
            next(body)
    except StopIteration as stop:
        return stop.value


async def drive_async(body: Body) -> Any:
    try:
        while True:
            next(body)
            await asyncio.sleep(0)
    except StopIteration as stop:
        return stop.value


def page_body(atr_flavour: str, n: int) -> Body:
    rec("view", request.endpoint)

    def atr(response: Any) -> Any:
        rec("after_this_request", response.status_code)
        response.headers["X-ATR"] = "1"
        return response

    after_this_request(flavoured(atr_flavour, atr))
    do = request.args.get("do", "ok")
    q = request.args.get("q")
    yield
    if do == "abort":
        abort(418)
    if do == "raise":
        raise MyError("boom")
    if do == "handler_raises":
        raise RaisingError("raising")
    if do == "unhandled":
        raise Unhandled("unhandled")
    if do == "flashes":
        return "flashes=" + ",".join(str(m) for m in get_flashed_messages())
    if do == "json":
        yield
        return {
            "q": q,
            "g": g.before,
            "count": session.get("count"),
            "n": n,
            "var": REQUEST_VAR.get(),
        }
    before = g.before
    yield
    session["count"] = session.get("count", 0) + 1
    flash(f"flash-{q}")
    yield
    assert request.args.get("q") == q and g.before == before
    return render_template(
        "page.html",
        q=q,
        app_name=current_app.name,
        next_url=url_for("page", n=n + 1),
        ext=url_for("page", n=n, _external=True).removeprefix(request.host_url),
        lang=None,
        form=request.form.get("x"),
        var=REQUEST_VAR.get(),
    )


def item_body(atr_flavour: str) -> Body:
    rec("view", request.endpoint)
    do = request.args.get("do", "ok")
    q = request.args.get("q")
    yield
    if do == "raise":
        raise BpError("bp")
    if do == "myerror":
        raise MyError("from-bp")
    yield
    return render_template(
        "page.html",
        q=q,
        app_name=current_app.name,
        # bp.url_defaults fills in <lang> from g.lang
        next_url=url_for("bp.item"),
        ext=url_for("bp.item", lang="xx", _external=True).removeprefix(request.host_url),
        lang=g.lang,
        form=None,
        var=REQUEST_VAR.get(),
    )


def login_required(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flask-Login's ``login_required`` shape: a sync wrapper that calls
    ``current_app.ensure_sync(func)``."""

    @functools.wraps(func)
    def decorated_view(*args: Any, **kwargs: Any) -> Any:
        if request.args.get("anonymous"):
            return "login first", 401
        return current_app.ensure_sync(func)(*args, **kwargs)

    return decorated_view


def make_view(
    flavour: str, body: Callable[..., Body], name: str, atr_flavour: str
) -> Callable[..., Any]:
    kind = "async" if flavour.endswith("async") else "sync"
    run: Callable[..., Any]
    if flavour.startswith("methodview"):
        if kind == "async":

            class AsyncMV(MethodView):
                async def get(self, **kwargs: Any) -> Any:
                    return await drive_async(body(atr_flavour, **kwargs))

                async def post(self, **kwargs: Any) -> Any:
                    return await drive_async(body(atr_flavour, **kwargs))

            return AsyncMV.as_view(name)

        class SyncMV(MethodView):
            def get(self, **kwargs: Any) -> Any:
                return drive_sync(body(atr_flavour, **kwargs))

            def post(self, **kwargs: Any) -> Any:
                return drive_sync(body(atr_flavour, **kwargs))

        return SyncMV.as_view(name)
    if flavour.startswith("view_"):
        if kind == "async":

            class AsyncView(View):
                methods = ["GET", "POST"]

                async def dispatch_request(self, **kwargs: Any) -> Any:  # type: ignore[override]
                    return await drive_async(body(atr_flavour, **kwargs))

            return AsyncView.as_view(name)

        class SyncView(View):
            methods = ["GET", "POST"]

            def dispatch_request(self, **kwargs: Any) -> Any:
                return drive_sync(body(atr_flavour, **kwargs))

        return SyncView.as_view(name)

    if kind == "async":

        async def async_view(**kwargs: Any) -> Any:
            return await drive_async(body(atr_flavour, **kwargs))

        run = async_view
    else:

        def sync_view(**kwargs: Any) -> Any:
            return drive_sync(body(atr_flavour, **kwargs))

        run = sync_view
    run.__name__ = run.__qualname__ = name
    if flavour.startswith("wrapped"):
        run = login_required(run)
    return run


# -- the application ---------------------------------------------------------------------


def create_app(
    view: str = "async",
    flavours: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Flask:
    if view not in VIEWS:
        raise ValueError(view)
    fl = dict.fromkeys(HOOKS, "sync")
    fl.update(flavours or {})
    unknown = set(fl) - set(HOOKS)
    if unknown:
        raise ValueError(f"unknown hooks: {unknown}")

    def f(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        return flavoured(fl[name], func, suspend=name != "context_processor")

    # One name whether imported as tests.apps.flask_sem_matrix or by gunicorn.
    app = Flask("flask_sem_matrix", root_path=HERE, template_folder="flask_sem_templates")
    app.secret_key = "flask-sem-matrix"
    app.config.update(config or {})

    # -- app-level hooks
    def url_value_preprocessor(endpoint: str | None, values: dict[str, Any] | None) -> None:
        # Flask calls these directly (never through ensure_sync): sync only.
        rec("url_value_preprocessor", endpoint)

    def before_request() -> Any:
        rec("before_request", request.endpoint)
        g.before = f"b-{request.args.get('q')}"
        REQUEST_VAR.set(f"cv-{request.args.get('q')}")
        if request.args.get("stop") == "app":
            return "stopped by app", 203
        if request.args.get("abort_before"):
            abort(418)
        return None

    def after_request(response: Any) -> Any:
        rec("after_request", response.status_code)
        response.headers["X-After"] = "app"
        response.headers["X-Var"] = REQUEST_VAR.get("unset")
        return response

    def teardown_request(exc: BaseException | None) -> None:
        rec("teardown_request", exc_name(exc))

    def teardown_appcontext(exc: BaseException | None) -> None:
        rec("teardown_appcontext", exc_name(exc))

    def context_processor() -> dict[str, Any]:
        rec("context_processor")
        return {"cp_value": f"cp-{g.before}"}

    def on_418(e: Any) -> Any:
        rec("errorhandler_418", e.code)
        return f"teapot {g.before}", 418

    def on_my_error(e: Exception) -> Any:
        rec("errorhandler_MyError", str(e))
        return f"myerror {e}", 409

    def on_raising_error(e: Exception) -> Any:
        rec("errorhandler_RaisingError", str(e))
        raise HandlerFailed("handler failed")

    def on_500(e: Any) -> Any:
        rec("errorhandler_500", exc_name(e.original_exception))
        return f"internal {exc_name(e.original_exception)}", 500

    def on_404(e: Any) -> Any:
        rec("errorhandler_404", request.path)
        return "notfound", 404

    app.url_value_preprocessor(url_value_preprocessor)
    app.before_request(f("before_request", before_request))
    app.after_request(f("after_request", after_request))
    app.teardown_request(f("teardown_request", teardown_request))
    app.teardown_appcontext(f("teardown_appcontext", teardown_appcontext))
    app.context_processor(f("context_processor", context_processor))
    app.register_error_handler(418, f("errorhandler_418", on_418))
    app.register_error_handler(MyError, f("errorhandler_MyError", on_my_error))
    app.register_error_handler(RaisingError, f("errorhandler_RaisingError", on_raising_error))
    app.register_error_handler(500, f("errorhandler_500", on_500))
    app.register_error_handler(404, f("errorhandler_404", on_404))

    # -- signals (receivers are kept alive by the app: blinker holds them weakly)
    def on_started(sender: Any, **extra: Any) -> None:
        rec("request_started")

    def on_finished(sender: Any, response: Any, **extra: Any) -> None:
        rec("request_finished", response.status_code)

    def on_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
        rec("got_request_exception", exc_name(exception))

    def on_request_tearing_down(sender: Any, exc: BaseException | None = None, **_: Any) -> None:
        rec("request_tearing_down", exc_name(exc))

    def on_appcontext_tearing_down(
        sender: Any, exc: BaseException | None = None, **_: Any
    ) -> None:
        rec("appcontext_tearing_down", exc_name(exc))

    receivers = [
        (signals.request_started, f("sig_request_started", on_started)),
        (signals.request_finished, f("sig_request_finished", on_finished)),
        (signals.got_request_exception, f("sig_got_request_exception", on_exception)),
        (signals.request_tearing_down, f("sig_request_tearing_down", on_request_tearing_down)),
        (
            signals.appcontext_tearing_down,
            f("sig_appcontext_tearing_down", on_appcontext_tearing_down),
        ),
    ]
    for signal, receiver in receivers:
        signal.connect(receiver, app)
    app.extensions["flask_sem_receivers"] = receivers

    # -- views
    page = make_view(view, page_body, "page", fl["after_this_request"])
    app.add_url_rule("/page/<int:n>", view_func=page, methods=["GET", "POST"])

    # -- a blueprint with its own hooks
    bp = Blueprint("bp", "flask_sem_matrix", root_path=HERE, url_prefix="/bp/<lang>")

    def bp_url_value_preprocessor(endpoint: str | None, values: dict[str, Any] | None) -> None:
        rec("bp_url_value_preprocessor", endpoint)
        g.lang = values.pop("lang") if values else None

    def bp_url_defaults(endpoint: str, values: dict[str, Any]) -> None:
        if "lang" not in values and "lang" in g:
            values["lang"] = g.lang

    def bp_before_request() -> Any:
        rec("bp_before_request", g.lang)
        if request.args.get("stop") == "bp":
            return "stopped by bp", 203
        return None

    def bp_after_request(response: Any) -> Any:
        rec("bp_after_request", response.status_code)
        response.headers["X-Bp-After"] = g.lang
        return response

    def bp_teardown_request(exc: BaseException | None) -> None:
        rec("bp_teardown_request", exc_name(exc))

    def bp_on_error(e: Exception) -> Any:
        rec("bp_errorhandler_BpError", str(e))
        return f"bperror {g.lang}", 410

    bp.url_value_preprocessor(bp_url_value_preprocessor)
    bp.url_defaults(bp_url_defaults)
    bp.before_request(f("bp_before_request", bp_before_request))
    bp.after_request(f("bp_after_request", bp_after_request))
    bp.teardown_request(f("bp_teardown_request", bp_teardown_request))
    bp.register_error_handler(BpError, f("bp_errorhandler_BpError", bp_on_error))
    item = make_view(view, item_body, "item", fl["after_this_request"])
    bp.add_url_rule("/item", view_func=item, methods=["GET", "POST"])
    app.register_blueprint(bp)

    @app.get("/_log/<rid>")
    def read_log(rid: str) -> Any:
        return jsonify(LOGS.get(rid, []))

    return app


app = create_app(
    os.environ.get("FLASK_SEM_VIEW", "async"),
    mix(os.environ.get("FLASK_SEM_MIX", "all_async")),
    {"ASYNC_WORKER_SYNC_HOOKS": os.environ.get("FLASK_SEM_SYNC_HOOKS", "loop")},
)
