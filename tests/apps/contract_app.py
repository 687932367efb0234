"""The test ASGI app plus a few answers about the worker process itself.

``IMPORT_PID`` is the pid that imported this module: the arbiter's under
``--preload``, the worker's otherwise.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any

# The sibling module, importable under the gunicorn fixture's PYTHONPATH.
base_app: Any = importlib.import_module("asgi_app").app

IMPORT_PID = os.getpid()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] in ("/loop", "/import-pid"):
        if scope["path"] == "/loop":
            body = type(asyncio.get_running_loop()).__module__
        else:
            body = f"{IMPORT_PID} {os.getpid()}"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
        return
    await base_app(scope, receive, send)
