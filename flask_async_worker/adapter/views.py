"""Which endpoints the adapter may serve natively on the loop.

A request is served natively when its view is a coroutine function, or a
chain of sync wrappers around one in which every wrapper hands the view's
result straight back to its caller.  Only then can the adapter let the
wrapper run on the loop, hand it the view's coroutine un-awaited (see
``bridge.py``) and await what the wrapper returns.

A wrapper that *uses* the view's result — ``make_response(view(...))``,
caching it, timing it — needs the result itself, synchronously; on the loop
that would mean blocking it.  Such a request takes the thread path, where
the wrapper runs in a pool thread and ``ensure_sync`` runs the view on the
loop while the thread waits, as Flask itself would run it.

"Hands the result straight back" is decided from the wrapper's source:
``functools.wraps`` gives the wrapped function (``__wrapped__``); the
wrapper's closure tells which of its free variables holds it; and every use
of that variable must be ``return view(...)`` or
``return <...>.ensure_sync(view)(...)``, outside any ``try`` or ``with``
(whose handlers and clean-up are meant to surround the view's execution) —
Flask-Login's ``login_required`` and Flask's tutorial ``login_required``
are of this shape.  Anything the
check cannot read (no source, no ``functools.wraps``, a class instance)
is not assumed to pass the result through.  Flask's own class-based views
(``View.as_view``, ``MethodView.dispatch_request``) are known to.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

from flask.views import MethodView, View

#: How many wrappers deep a view is followed.
MAX_DEPTH = 10

_NON_PLAIN_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_BRIDGE_NAMES = frozenset(("ensure_sync", "async_to_sync"))
_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.Try,
    ast.TryStar,
    ast.With,
    ast.AsyncWith,
)


def _as_view_codes() -> frozenset[Any]:
    """The code objects of the functions ``View.as_view`` generates (one per
    ``init_every_request`` setting), to recognise them in a wrapper chain."""
    codes = set()
    for every in (True, False):
        probe: type[View] = type("_Probe", (View,), {"init_every_request": every})
        codes.add(probe.as_view("flask_async_worker_probe").__code__)
    return frozenset(codes)


AS_VIEW_CODES = _as_view_codes()


def wraps_coroutine(func: Any, depth: int = MAX_DEPTH) -> bool:
    """True when ``func`` is, or wraps (``__wrapped__``), a coroutine function."""
    while func is not None and depth > 0:
        if inspect.iscoroutinefunction(func):
            return True
        func = getattr(func, "__wrapped__", None)
        depth -= 1
    return False


def maybe_async(view: Any) -> bool:
    """A cheap first filter: could a request to ``view`` be served natively?"""
    return wraps_coroutine(view) or getattr(view, "view_class", None) is not None


def endpoint_is_async(view: Any, method: str) -> bool:
    """Serve a ``method`` request to ``view`` natively on the loop?"""
    func = view
    for _ in range(MAX_DEPTH):
        if inspect.iscoroutinefunction(func):
            return True
        code = getattr(func, "__code__", None)
        if code is not None and code in AS_VIEW_CODES:
            view_class = getattr(view, "view_class", None)
            return view_class is not None and class_view_is_async(view_class, method)
        inner = getattr(func, "__wrapped__", None)
        if inner is None or not passes_result_through(func, inner):
            return False
        func = inner
    return False


def class_view_is_async(view_class: type[Any], method: str) -> bool:
    """A ``View`` whose ``dispatch_request`` is async, or a ``MethodView``
    (with Flask's ``dispatch_request``) whose handler for ``method`` is."""
    dispatch = getattr(view_class, "dispatch_request", None)
    if inspect.iscoroutinefunction(dispatch):
        return True
    if dispatch is not MethodView.dispatch_request:
        return False  # a sync override: what it does with the handler's result is unknown
    handler = getattr(view_class, method.lower(), None)
    if handler is None and method == "HEAD":
        handler = getattr(view_class, "get", None)
    return handler is not None and inspect.iscoroutinefunction(handler)


def view_coroutine_functions(view: Any, method: str) -> frozenset[Any]:
    """The coroutine functions a sync ``view`` wraps: along ``__wrapped__``,
    and a ``view_class``'s handler for ``method`` and ``dispatch_request``.
    While the adapter calls ``view`` on the loop, ``ensure_sync`` hands their
    coroutines back un-awaited."""
    found: set[Any] = set()
    func, depth = view, MAX_DEPTH
    while func is not None and depth > 0:
        if inspect.iscoroutinefunction(func):
            found.add(getattr(func, "__func__", func))
        func = getattr(func, "__wrapped__", None)
        depth -= 1
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        names = [method.lower(), "dispatch_request"]
        if method == "HEAD":
            names.append("get")
        for name in names:
            handler = getattr(view_class, name, None)
            if handler is not None and inspect.iscoroutinefunction(handler):
                found.add(getattr(handler, "__func__", handler))
    return frozenset(found)


@functools.lru_cache(maxsize=4096)
def passes_result_through(wrapper: Any, inner: Any) -> bool:
    """Does sync ``wrapper`` return whatever calling ``inner`` returns,
    untouched, and use ``inner`` in no other way?"""
    code = getattr(wrapper, "__code__", None)
    closure = getattr(wrapper, "__closure__", None)
    if code is None or not closure or code.co_flags & _NON_PLAIN_FLAGS:
        return False
    names = {
        name
        for name, cell in zip(code.co_freevars, closure, strict=False)
        if _cell_contents(cell) is inner
    }
    if not names:
        return False
    try:
        # The code object, not the function: inspect would follow
        # __wrapped__ and return the wrapped view's source.
        source = textwrap.dedent(inspect.getsource(code))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return False
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef) or node.name != code.co_name:
        return False
    return _only_returned(node, names)


def _cell_contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _only_returned(func: ast.FunctionDef, names: set[str]) -> bool:
    """Every load of ``names`` in ``func``'s body is the callee of a call
    that is returned as is — ``return f(...)`` or
    ``return x.ensure_sync(f)(...)`` — outside any ``try`` or ``with``."""
    allowed: set[int] = set()
    uses: list[ast.Name] = []

    def visit(node: ast.AST, nested: bool) -> None:
        if not nested and isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
            target = _returned_target(node.value, names)
            if target is not None:
                allowed.add(id(target))
        if isinstance(node, ast.Name) and node.id in names:
            uses.append(node)
        # Inside a nested function or class, a returned call is not the
        # wrapper's own return value.  Inside try/with, the wrapper means
        # its handlers and clean-up to surround the view's execution, which
        # on the loop would only start after the wrapper has returned.
        nested = nested or isinstance(node, _SCOPES)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    for statement in func.body:
        visit(statement, False)
    return bool(allowed) and all(id(use) in allowed for use in uses)


def _returned_target(call: ast.Call, names: set[str]) -> ast.Name | None:
    callee = call.func
    if isinstance(callee, ast.Name) and callee.id in names:
        return callee  # return view(*args, **kwargs)
    if (
        isinstance(callee, ast.Call)
        and len(callee.args) == 1
        and not callee.keywords
        and isinstance(callee.args[0], ast.Name)
        and callee.args[0].id in names
        and _bridge_name(callee.func)
    ):
        return callee.args[0]  # return current_app.ensure_sync(view)(*args, **kwargs)
    return None


def _bridge_name(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _BRIDGE_NAMES
    return isinstance(node, ast.Attribute) and node.attr in _BRIDGE_NAMES
