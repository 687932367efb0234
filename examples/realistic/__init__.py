# mypy: disable-error-code="untyped-decorator"
"""A small, ordinary Flask app: some views ``async def``, most sync.

    cd examples
    export REALISTIC_INSTANCE=/tmp/realistic   # the instance folder (database)
    gunicorn -k flask_async_worker.UVLoopWorker --threads 4 'realistic:create_app()'

Flask-Login (``login_required``, ``current_user``), Flask-WTF forms with CSRF
protection, Flask-SQLAlchemy on SQLite (``realistic.sqlite`` in the instance
folder, which ``REALISTIC_INSTANCE`` names) and the session.  The dashboard,
the item form's handler and the JSON API are ``async def``; registration,
login and the item list are sync.  Nothing in it knows about the worker: it
runs as it is under ``flask run`` or gunicorn's own workers too.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, flash, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect  # type: ignore[import-untyped]
from werkzeug.wrappers import Response as BaseResponse

from .models import User, db, login_manager

csrf = CSRFProtect()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    instance = os.environ.get("REALISTIC_INSTANCE")
    app = Flask(__name__, instance_path=os.path.abspath(instance) if instance else None)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("REALISTIC_SECRET_KEY", "dev-only-secret"),
        # Relative to the instance folder (Flask-SQLAlchemy resolves it).
        SQLALCHEMY_DATABASE_URI="sqlite:///realistic.sqlite",
    )
    if test_config:
        app.config.update(test_config)
    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)

    from . import api, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp, url_prefix="/api")

    @login_manager.unauthorized_handler
    def unauthorized() -> Any:
        if request.blueprint == "api":
            return jsonify(error="authentication required"), 401
        flash("Please log in to see this page.")
        return redirect(url_for("views.login", next=request.path))

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> tuple[Any, int]:
        if request.blueprint == "api":
            return jsonify(error=error.description), 400
        return render_template("csrf_error.html", reason=error.description), 400

    @app.after_request
    def no_store(response: BaseResponse) -> BaseResponse:
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    with app.app_context():
        db.create_all()  # a real app would run migrations once, before the workers start
    return app


__all__ = ["User", "create_app", "csrf", "db"]
