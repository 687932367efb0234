"""gunicorn config for tests/test_gc.py: keep cyclic garbage for inspection."""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    gc.set_debug(gc.DEBUG_SAVEALL)
