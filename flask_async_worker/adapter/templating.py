"""Jinja's async rendering for async views.

Flask's ``render_template`` works in an async view as it is: it renders on
the loop, and an async context processor is run by the bridge as long as it
finishes without waiting.  What it cannot do is *wait* while rendering — a
context processor that awaits a database, a template that iterates an async
generator of rows, a stream that yields while the next rows are fetched.
Jinja can (``enable_async``); these functions give Flask's rendering that
ability: context processors and signal receivers may be coroutine functions
and are awaited, templates may call coroutines and ``{% for %}`` over async
iterables, and nothing blocks the loop while they wait.

The async environment is an overlay of ``app.jinja_env``: it shares the
loader, globals, filters and tests (so ``url_for``, ``get_flashed_messages``
and every extension's additions are there) and keeps its own compiled
template cache, because Jinja compiles a template differently for async
rendering.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from itertools import chain
from typing import Any

from flask import Flask, current_app, request
from flask.signals import before_render_template, template_rendered
from jinja2 import Environment, Template

from .extension import stream_with_context

_KEY = "flask_async_worker.jinja_async"

TemplateName = str | Template | list[str | Template]


def async_environment(app: Flask) -> Environment:
    """The app's Jinja environment with ``enable_async``, made once per
    environment (an app that replaces ``jinja_env`` gets a new overlay)."""
    base = app.jinja_env
    cached = app.extensions.get(_KEY)
    if cached is not None and cached[0] is base:
        return cached[1]  # type: ignore[no-any-return]
    env = base.overlay(enable_async=True)
    app.extensions[_KEY] = (base, env)
    return env


async def _update_context(app: Flask, context: dict[str, Any]) -> None:
    """Flask's ``update_template_context``, awaiting async processors."""
    if type(app).update_template_context is not Flask.update_template_context:
        app.update_template_context(context)  # an override keeps its meaning
        return
    names: Any = (None,)
    if request:
        names = chain(names, reversed(request.blueprints))
    original = context.copy()
    for name in names:
        for func in app.template_context_processors.get(name, ()):
            rv = func()
            if inspect.isawaitable(rv):
                rv = await rv
            context.update(rv)
    # Values passed to render win over processors, as in Flask.
    context.update(original)


def _sync_wrapper(func: Any) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call


async def _signal(signal: Any, app: Flask, template: Template, context: dict[str, Any]) -> None:
    if signal.receivers:
        await signal.send_async(
            app, _sync_wrapper=_sync_wrapper, template=template, context=context
        )


async def _prepare(
    app: Flask, name: TemplateName | None, source: str | None, context: dict[str, Any]
) -> Template:
    env = async_environment(app)
    target = name if name is not None else ""
    template = (
        env.from_string(source) if source is not None else env.get_or_select_template(target)
    )
    await _update_context(app, context)
    await _signal(before_render_template, app, template, context)
    return template


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


async def render_template_async(template_name_or_list: TemplateName, **context: Any) -> str:
    """``render_template`` for async views: awaits async context processors,
    signal receivers and whatever the template awaits."""
    app = _app()
    template = await _prepare(app, template_name_or_list, None, context)
    rv: str = await template.render_async(context)
    await _signal(template_rendered, app, template, context)
    return rv


async def render_template_string_async(source: str, **context: Any) -> str:
    """``render_template_string`` for async views."""
    app = _app()
    template = await _prepare(app, None, source, context)
    rv: str = await template.render_async(context)
    await _signal(template_rendered, app, template, context)
    return rv


def stream_template_async(
    template_name_or_list: TemplateName, **context: Any
) -> AsyncIterator[str]:
    """``stream_template`` for async views: an async iterator of rendered
    pieces, to return as a response body (``Response(stream_template_async(
    "rows.html", rows=fetch_rows()))``).  The request context stays
    available while it runs, as with Flask's ``stream_template``; rendering
    starts when the response is sent."""
    app = _app()

    async def generate() -> AsyncIterator[str]:
        template = await _prepare(app, template_name_or_list, None, context)
        async for piece in template.generate_async(context):
            yield piece
        await _signal(template_rendered, app, template, context)

    body = generate()
    if request:
        wrapped: AsyncIterator[str] = stream_with_context(body)
        return wrapped
    return body
