"""The lean loop-to-pool hop behaves as run_in_executor does."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flask_async_worker.pool import run_in_pool

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("pool_test", default="unset")


async def test_result_thread_and_context() -> None:
    with ThreadPoolExecutor(2, thread_name_prefix="lean") as pool:
        VAR.set("request")
        ctx = contextvars.copy_context()
        name, value = await run_in_pool(
            pool, ctx.run, lambda: (threading.current_thread().name, VAR.get())
        )
    assert name.startswith("lean") and value == "request"


async def test_exceptions_reach_the_awaiting_task() -> None:
    def boom() -> None:
        raise KeyError("x")

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(KeyError):
            await run_in_pool(pool, boom)
        # StopIteration would hang an asyncio future: it arrives wrapped.
        with pytest.raises(RuntimeError) as info:
            await run_in_pool(pool, next, iter(()))
        assert isinstance(info.value.__cause__, StopIteration)


async def test_pool_size_is_respected_and_work_runs_concurrently() -> None:
    with ThreadPoolExecutor(4) as pool:
        seen: set[int] = set()

        def work() -> None:
            seen.add(threading.get_ident())
            time.sleep(0.1)

        started = time.monotonic()
        await asyncio.gather(*(run_in_pool(pool, work) for _ in range(8)))
        elapsed = time.monotonic() - started
        assert len(seen) == 4
        assert len(pool._threads) == 4
    assert elapsed < 0.8  # two rounds of four, not eight in a row


async def test_shutdown_cancels_queued_work() -> None:
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    first = asyncio.ensure_future(run_in_pool(pool, gate.wait, 5))
    queued = asyncio.ensure_future(run_in_pool(pool, lambda: "never"))
    await asyncio.sleep(0.05)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert await first is True
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError):
        await run_in_pool(pool, lambda: None)


async def test_cancelled_before_it_starts_is_skipped() -> None:
    with ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        ran: list[str] = []
        blocker = asyncio.ensure_future(run_in_pool(pool, gate.wait, 5))
        waiting = asyncio.ensure_future(run_in_pool(pool, ran.append, "ran"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        gate.set()
        await blocker
        await asyncio.sleep(0.05)
    assert ran == []


async def test_other_executors_use_run_in_executor() -> None:
    class Custom(ThreadPoolExecutor):
        pass

    with Custom(1) as pool:
        assert await run_in_pool(pool, lambda: 42) == 42
    assert await run_in_pool(None, lambda: 7) == 7
