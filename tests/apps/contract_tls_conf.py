"""A gunicorn config file with an ``ssl_context`` hook: TLS 1.3 only."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any


def ssl_context(conf: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> Any:
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context
