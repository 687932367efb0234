"""A small Flask app whose answers show the mount point (``SCRIPT_NAME``)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.get("/hello")
def hello() -> Any:
    return jsonify(
        url=url_for("hello"),
        external=url_for("hello", _external=True),
        script_root=request.script_root,
        path=request.path,
        scheme=request.scheme,
    )


@app.get("/async-hello")
async def async_hello() -> Any:
    return jsonify(url=url_for("async_hello"), script_root=request.script_root)
