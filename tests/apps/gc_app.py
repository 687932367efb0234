"""An app that reports the worker's cyclic-GC state, for tests/test_gc.py.

Loaded with ``-c gc_conf.py``, which makes the collector keep what it finds
(``gc.DEBUG_SAVEALL``): every object a request leaves in a reference cycle
then shows up in ``gc.garbage`` instead of being freed.
"""

from __future__ import annotations

import gc

from flask import Flask, Response, jsonify

app = Flask(__name__)


@app.get("/sync")
def sync_view() -> str:
    return "sync"


@app.get("/async")
async def async_view() -> str:
    return "async"


@app.get("/gc")
async def gc_state() -> Response:
    """Collect now; report and forget the cyclic garbage found so far.

    An async view: the worker routes it natively, so it adds no Werkzeug
    matcher closure of its own to what it reports."""
    gc.collect()
    found = [type(o).__qualname__ for o in gc.garbage]
    gc.garbage.clear()
    return jsonify(
        garbage=len(found),
        kinds=sorted(set(found)),
        threshold=gc.get_threshold(),
        frozen=gc.get_freeze_count(),
    )
