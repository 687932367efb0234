# mypy: disable-error-code="untyped-decorator"
"""The HTML pages: registration and login (sync), the dashboard and the item
form's handler (async), the item list (sync)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user  # type: ignore[import-untyped]

from .forms import ItemForm, LoginForm, RegisterForm
from .models import Item, User, db

bp = Blueprint("views", __name__)


async def slow_backend(user: User) -> str:
    """A stand-in for a slow service (a recommendation API, say)."""
    await asyncio.sleep(0.05)
    names = sorted(item.name for item in user.items)
    return f"More {names[0]}?" if names else "Add your first item."


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.route("/register", methods=["GET", "POST"])
def register() -> Any:
    form = RegisterForm()
    if form.validate_on_submit():
        if db.session.scalar(db.select(User).filter_by(username=form.username.data)):
            form.username.errors.append("That username is taken.")
        else:
            user = User(username=form.username.data)
            user.set_password(form.password.data)
            db.session.add(user)
            db.session.commit()
            flash("Registered. Please log in.")
            return redirect(url_for("views.login"))
    return render_template("register.html", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(db.select(User).filter_by(username=form.username.data))
        if user is not None and user.check_password(form.password.data):
            login_user(user)
            session["visits"] = 0
            target = request.args.get("next", "")
            if not target.startswith("/") or urlsplit(target).netloc:
                target = url_for("views.dashboard")
            return redirect(target)
        flash("Invalid username or password.")
    return render_template("login.html", form=form)


@bp.get("/logout")
@login_required
def logout() -> Any:
    logout_user()
    session.clear()
    flash("Logged out.")
    return redirect(url_for("views.index"))


@bp.get("/dashboard")
@login_required
async def dashboard() -> str:
    advice = await slow_backend(current_user)
    session["visits"] = session.get("visits", 0) + 1
    return render_template(
        "dashboard.html",
        advice=advice,
        count=len(current_user.items),
        last_item=session.get("last_item"),
        visits=session["visits"],
    )


@bp.route("/items/new", methods=["GET", "POST"])
@login_required
async def new_item() -> Any:
    form = ItemForm()
    if form.validate_on_submit():
        await asyncio.sleep(0.01)  # say, a call to an inventory service
        db.session.add(Item(name=form.name.data, quantity=form.quantity.data, owner=current_user))
        db.session.commit()
        session["last_item"] = form.name.data
        flash(f"Added {form.name.data}.")
        return redirect(url_for("views.dashboard"))
    return render_template("new_item.html", form=form)


@bp.route("/items", methods=["GET", "POST"])
@login_required
def items() -> Any:
    form = ItemForm()
    if form.validate_on_submit():
        db.session.add(Item(name=form.name.data, quantity=form.quantity.data, owner=current_user))
        db.session.commit()
        flash(f"Added {form.name.data}.")
        return redirect(url_for("views.items"))
    return render_template("items.html", form=form, items=current_user.items)
