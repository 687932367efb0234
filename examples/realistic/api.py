# mypy: disable-error-code="untyped-decorator"
"""The JSON API (async views behind ``login_required``).

A POST needs the CSRF token in an ``X-CSRFToken`` header (the page's
``<meta name="csrf-token">``), as Flask-WTF's ``CSRFProtect`` expects.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flask import Blueprint, abort, jsonify
from flask_login import current_user, login_required  # type: ignore[import-untyped]

from .forms import ItemForm
from .models import Item, db

bp = Blueprint("api", __name__)


@bp.get("/items")
@login_required
async def list_items() -> Any:
    await asyncio.sleep(0.01)
    return jsonify(user=current_user.username, items=[i.to_dict() for i in current_user.items])


@bp.post("/items")
@login_required
async def create_item() -> Any:
    form = ItemForm()  # Flask-WTF reads the JSON body
    if not form.validate():
        return jsonify(errors=form.errors), 400
    item = Item(name=form.name.data, quantity=form.quantity.data, owner=current_user)
    db.session.add(item)
    db.session.commit()
    return jsonify(item.to_dict()), 201


@bp.get("/items/<int:item_id>")
@login_required
async def get_item(item_id: int) -> Any:
    item = db.session.get(Item, item_id)
    if item is None or item.owner_id != current_user.id:
        abort(404)
    return jsonify(item.to_dict())


@bp.errorhandler(404)
def not_found(error: Exception) -> Any:
    return jsonify(error="not found"), 404
