"""An ASGI app whose lifespan shutdown never finishes by itself."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

# The sibling module, importable under the gunicorn fixture's PYTHONPATH.
base_app: Any = importlib.import_module("asgi_app").app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "lifespan":
        await base_app(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.sleep(60)
            await send({"type": "lifespan.shutdown.complete"})
            return
