"""Routing a request before choosing its path, at the lowest cost.

The adapter must know a request's endpoint before any user code runs, to
pick the native path or the thread path.  A request that then takes the
thread path hands its match on to Flask's own ``wsgi_app`` (through
:class:`MatchedAdapter` and the class-level ``create_url_adapter`` hook), so
Flask does not bind and match again; the match itself is kept small:

* no ``Request`` or ``RequestContext`` is built: the URL map is bound to
  the environ directly, with the arguments ``Flask.create_url_adapter``
  would use (the trusted-hosts check, ``SERVER_NAME``, host and subdomain
  matching), so the result is the one Flask will find; the bound map
  adapter depends only on the scheme, host, server and script name, and is
  reused for requests that share them (the path and method are passed to
  ``match`` explicitly);
* a match to a rule without URL variables is remembered, in a bounded dict
  keyed by what the match depends on (method, scheme, host, server,
  script name and path).  Werkzeug tries static URL parts before
  converters, so such a match involved no converter and depends on nothing
  else.  The dict is emptied when the URL map or the routing settings
  change.

An app that overrides ``create_url_adapter`` is matched through its own
override, uncached.

A converter may need the application context (``current_app``, ``g``, a
database session), which does not exist yet: when matching raises anything
but an HTTP exception, the request takes the thread path, where Flask
matches it with its contexts pushed (and an async view runs on the loop
through ``ensure_sync``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, MapAdapter, Rule
from werkzeug.wsgi import get_host

log = logging.getLogger("flask_async_worker")

#: Most routing decisions remembered per application.
CACHE_SIZE = 1024

Match = tuple[Rule, dict[str, Any]]


class Router:
    """Match environs against one Flask app's URL map, as Flask would."""

    def __init__(self, app: Flask, size: int = CACHE_SIZE) -> None:
        self.app = app
        self.size = size
        self.cache: dict[tuple[str, ...], Match] = {}
        self.adapters: dict[tuple[str, ...], MapAdapter] = {}
        self._signature: tuple[Any, ...] | None = None
        self.direct = type(app).create_url_adapter is Flask.create_url_adapter
        # The cache reads two attributes of werkzeug's Map to notice changes.
        self.cacheable = self.direct and all(
            hasattr(app.url_map, name) for name in ("_remap", "_rules_by_endpoint")
        )
        self._reported_converter = False

    def match(self, environ: dict[str, Any]) -> Match | None:
        """The rule and view arguments of ``environ``, or None when Flask's
        own handling should answer it (no match, a redirect, a bad host, a
        converter that needs a context)."""
        if not self.cacheable or "HTTP_UPGRADE" in environ:
            # An overridden create_url_adapter, or a WebSocket handshake
            # (which werkzeug matches differently): bound afresh each time.
            return self._match(environ)
        self._check_signature()
        place = _place(environ)
        key = (environ["REQUEST_METHOD"], *place, environ.get("PATH_INFO", ""))
        hit = self.cache.get(key)
        if hit is not None:
            return hit[0], dict(hit[1])
        found = self._match(environ, place)
        if found is not None and _static(found[0]):
            _bounded_put(self.cache, key, (found[0], dict(found[1])), self.size)
        return found

    def url_adapter(
        self, environ: dict[str, Any], found: Match | None = None
    ) -> MapAdapter | None:
        """A map adapter for ``environ`` equal to what ``bind_to_environ``
        would make, from the one bound for its place by :meth:`match`
        (None if there is none: the caller binds afresh); holding ``found``,
        the match already made, when given."""
        if not self.cacheable or "HTTP_UPGRADE" in environ:
            return None
        bound = self.adapters.get(_place(environ))
        if bound is None:
            return None
        cls = MapAdapter if found is None else MatchedAdapter
        adapter = cls(
            bound.map,
            bound.server_name,
            bound.script_name,
            bound.subdomain,
            bound.url_scheme,
            _wsgi_text(environ.get("PATH_INFO", "")),
            environ["REQUEST_METHOD"],
            _wsgi_text(environ.get("QUERY_STRING", "")),
        )
        if found is not None:
            adapter._found = found  # type: ignore[attr-defined]
        return adapter

    def _check_signature(self) -> None:
        """Forget every decision when the map or a routing setting changed."""
        app = self.app
        url_map = app.url_map
        config = app.config
        trusted = config["TRUSTED_HOSTS"]
        signature = (
            url_map,
            len(url_map._rules_by_endpoint),
            config["SERVER_NAME"],
            None if trusted is None else tuple(trusted),
            app.subdomain_matching,
            url_map.host_matching,
            url_map.default_subdomain,
        )
        # _remap: a rule was added since the map was last sorted.
        if url_map._remap or signature != self._signature:
            self.cache.clear()
            self.adapters.clear()
            self._signature = signature

    def _match(
        self, environ: dict[str, Any], place: tuple[str, ...] | None = None
    ) -> Match | None:
        """Match ``environ``; with ``place`` (scheme, host, server, port,
        script name), through the map adapter bound for it."""
        try:
            if place is None:
                adapter = self._bind(environ)
                if adapter is None:
                    return None
                rule, args = adapter.match(return_rule=True)
            else:
                adapter = self.adapters.get(place)
                if adapter is None:
                    adapter = self._bind(environ)
                    _bounded_put(self.adapters, place, adapter, self.size)
                path = _wsgi_text(environ.get("PATH_INFO", ""))
                rule, args = adapter.match(path, environ["REQUEST_METHOD"], return_rule=True)
        except HTTPException:
            # 404, 405, redirects, an untrusted host: Flask answers them.
            return None
        except Exception as exc:
            self._report_converter(exc)
            return None
        return rule, dict(args)

    def _bind(self, environ: dict[str, Any]) -> Any:
        """``Flask.create_url_adapter`` for ``environ``, without a Request."""
        app = self.app
        if not self.direct:
            return app.create_url_adapter(app.request_class(environ))
        config = app.config
        trusted = config["TRUSTED_HOSTS"]
        if trusted is None:
            trusted = app.request_class.trusted_hosts
        if trusted is not None:
            get_host(environ, trusted)  # raises SecurityError (a 400) for others
        url_map: Map = app.url_map
        server_name = config["SERVER_NAME"]
        subdomain = None
        if url_map.host_matching:
            server_name = None
        elif not app.subdomain_matching:
            subdomain = url_map.default_subdomain or ""
        return url_map.bind_to_environ(environ, server_name=server_name, subdomain=subdomain)

    def _report_converter(self, exc: Exception) -> None:
        if not self._reported_converter:
            self._reported_converter = True
            log.info(
                "Matching a URL of %s outside a request raised %s: %s; such requests "
                "are matched by Flask on the thread path (a URL converter that needs "
                "the application context, for example)",
                self.app.name,
                type(exc).__name__,
                exc,
            )


def _place(environ: dict[str, Any]) -> tuple[str, ...]:
    """What a bound map adapter depends on besides the path and method."""
    return (
        environ["wsgi.url_scheme"],
        environ.get("HTTP_HOST", ""),
        environ.get("SERVER_NAME", ""),
        environ.get("SERVER_PORT", ""),
        environ.get("SCRIPT_NAME", ""),
    )


def _wsgi_text(value: str) -> str:
    """What ``bind_to_environ`` does with a WSGI string (latin-1 bytes)."""
    return value.encode("latin-1").decode(errors="replace") if not value.isascii() else value


def _static(rule: Rule) -> bool:
    """A rule without URL variables (``defaults`` do not count)."""
    converters = getattr(rule, "_converters", None)
    if converters is None:
        return not rule.arguments
    return not converters


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    if len(cache) >= size:
        del cache[next(iter(cache))]  # the oldest
    cache[key] = value


class MatchedAdapter(MapAdapter):
    """A map adapter that already holds its request's match.

    The router matched the request to choose between the loop and the pool.
    Flask's ``RequestContext.match_request`` then asks the adapter once more
    (``match(return_rule=True)``, nothing else given): that first plain call
    gets the router's answer instead of a second walk of the URL map.  Any
    other call, and any later one, matches as usual.
    """

    _found: Match | None = None

    def match(
        self,
        path_info: str | None = None,
        method: str | None = None,
        return_rule: bool = False,
        query_args: Any = None,
        websocket: bool | None = None,
    ) -> Any:
        found = self._found
        if (
            found is not None
            and path_info is None
            and method is None
            and query_args is None
            and websocket is None
        ):
            self._found = None
            rule, args = found
            return (rule, args) if return_rule else (rule.endpoint, args)
        return super().match(  # type: ignore[call-overload]
            path_info, method, return_rule, query_args, websocket
        )


#: The environ key that hands Flask the router's adapter for one request.
PREBOUND_KEY = "flask_async_worker.url_adapter"
_flask_create_url_adapter: Any = None


def _create_url_adapter(self: Flask, request: Any) -> MapAdapter | None:
    """``Flask.create_url_adapter``, taking the router's binding and match
    for a request the adapter sends down the thread path."""
    if request is not None:
        adapter = request.environ.pop(PREBOUND_KEY, None)
        if adapter is not None and adapter.map is self.url_map:
            # What Flask.create_url_adapter does to the request besides binding.
            trusted = self.config["TRUSTED_HOSTS"]
            if trusted is not None:
                request.trusted_hosts = trusted
            request.host = get_host(request.environ, request.trusted_hosts)
            return adapter  # type: ignore[no-any-return]
    return _flask_create_url_adapter(self, request)  # type: ignore[no-any-return]


def install_prebound_hook() -> None:
    """Let Flask's own ``wsgi_app`` reuse the match the router made.

    Installed on the class, once per process, like the ``async_to_sync``
    bridge: Flask's ``wsgi_app`` runs unchanged and binds through
    ``create_url_adapter``, which returns the router's adapter only for an
    environ the adapter marked (an app of the same URL map); everything else
    goes to the method as it was.
    """
    global _flask_create_url_adapter
    if _flask_create_url_adapter is None:
        _flask_create_url_adapter = Flask.create_url_adapter
        Flask.create_url_adapter = _create_url_adapter  # type: ignore[method-assign]
