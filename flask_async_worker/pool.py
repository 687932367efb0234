"""The hop from the event loop to a pool thread and back, made lean.

``loop.run_in_executor`` builds a ``concurrent.futures.Future`` (with its
own condition variable and lock), chains it to an asyncio future through
done-callbacks, and takes the executor's shutdown locks on every call.  A
sync view pays that once per request, and on one core it is a measurable
share of the request.  :func:`run_in_pool` puts a small work item straight
on a ``ThreadPoolExecutor``'s queue instead: the pool thread runs it and
hands the result to the loop with one ``call_soon_threadsafe``.  Pool
threads, their count and their shutdown stay the executor's own; any other
executor (or one whose internals differ) goes through ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def _lean(executor: Executor | None) -> bool:
    return (
        type(executor) is ThreadPoolExecutor
        and hasattr(executor, "_work_queue")
        and hasattr(executor, "_adjust_thread_count")
        and hasattr(executor, "_shutdown")
        and hasattr(executor, "_shutdown_lock")
    )


class _Cancel:
    """What ``ThreadPoolExecutor.shutdown(cancel_futures=True)`` calls on
    a queued item's ``future``: the awaiting coroutine sees a cancellation."""

    __slots__ = ("item",)

    def __init__(self, item: _Item) -> None:
        self.item = item

    def cancel(self) -> bool:
        item = self.item
        if not item.loop.is_closed():
            item.loop.call_soon_threadsafe(_cancel, item.waiter)
        return True


class _Item:
    """A work item for a ``ThreadPoolExecutor``'s worker threads."""

    __slots__ = ("args", "fn", "loop", "waiter")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.waiter = waiter
        self.fn = fn
        self.args = args

    @property
    def future(self) -> _Cancel:
        return _Cancel(self)

    def run(self) -> None:
        if self.waiter.cancelled():
            return  # the awaiting task was cancelled before the call started
        try:
            result = self.fn(*self.args)
        except BaseException as exc:
            if isinstance(exc, StopIteration):
                # An asyncio future refuses StopIteration: the awaiting task
                # would never wake up.
                wrapped = RuntimeError("StopIteration raised in a pool thread")
                wrapped.__cause__ = exc
                exc = wrapped
            self._deliver(_set_exception, exc)
        else:
            self._deliver(_set_result, result)

    def _deliver(self, setter: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(setter, self.waiter, value)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def _set_result(waiter: asyncio.Future[Any], value: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)


def _set_exception(waiter: asyncio.Future[Any], exc: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(exc)


def _cancel(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.cancel()


async def run_in_pool(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """``await loop.run_in_executor(executor, fn, *args)``, leaner for a
    ``ThreadPoolExecutor``.  Context is not copied (as with
    ``run_in_executor``): pass ``ctx.run`` and the function to carry one."""
    loop = asyncio.get_running_loop()
    if not _lean(executor):
        return await loop.run_in_executor(executor, fn, *args)
    pool: Any = executor
    waiter: asyncio.Future[T] = loop.create_future()
    with pool._shutdown_lock:  # as submit() does: one check, one thread spawn
        if pool._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        pool._work_queue.put(_Item(loop, waiter, fn, args))
        pool._adjust_thread_count()
    return await waiter
