"""The bridge to an asyncio thread (vLLM's engine, Ray, aiohttp on trio):
results, cancellation, and one wake-up per batch rather than per call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Iterator

import anyio
import pytest

from agentfly_min.transports._bridge import AsyncioThread, wait_future

pytestmark = pytest.mark.anyio


@pytest.fixture
def thread() -> Iterator[AsyncioThread]:
    thread = AsyncioThread("test-bridge")
    yield thread
    thread.stop()


async def test_many_results_at_once_wake_the_caller_once_per_batch(thread: AsyncioThread) -> None:
    gate = thread.call_blocking(asyncio.Event)

    async def after_gate(i: int) -> int:
        await gate.wait()
        return i * i

    # Count the caller's wake-ups: each one is a socket write into its loop.
    mailbox = thread._mailbox()
    schedule = mailbox._schedule
    wakeups = 0

    def counting(call: Callable[[], object]) -> object:
        nonlocal wakeups
        wakeups += 1
        return schedule(call)

    mailbox._schedule = counting
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await thread.run(after_gate(i))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
        while thread.call_blocking(lambda: len(gate._waiters)) < 200:
            await anyio.sleep(0.01)
        thread.call_blocking(gate.set)  # all 200 finish in one pass of the thread's loop
    assert results == {i: i * i for i in range(200)}
    assert 1 <= wakeups <= 10  # not 200


async def test_cancelling_the_caller_cancels_the_coroutine_on_the_thread(thread: AsyncioThread) -> None:
    started, cancelled = anyio.Event(), list[bool]()

    async def forever() -> None:
        thread_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    thread_started = thread.call_blocking(asyncio.Event)
    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                started.set()
                await thread.run(forever())

            tg.start_soon(caller)
            await started.wait()
            while not thread_started.is_set():
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    with anyio.fail_after(5):
        while not thread.call_blocking(lambda: bool(cancelled)):
            await anyio.sleep(0.01)


async def test_errors_cross_the_bridge_as_they_are(thread: AsyncioThread) -> None:
    async def fails() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        await thread.run(fails())
    assert await wait_future(thread.submit(asyncio.sleep(0, result="plain"))) == "plain"


def test_a_caller_on_the_threads_own_loop_does_not_hop(thread: AsyncioThread) -> None:
    async def inner() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    async def outer() -> bool:
        return await thread.run(inner()) is asyncio.current_task()  # same task: run directly

    assert thread.run_blocking(outer()) is True


def test_a_stopped_thread_refuses_work() -> None:
    thread = AsyncioThread("test-bridge-stopped")
    thread.stop()
    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="stopped"):
        thread.submit(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # closed, so no "never awaited" warning


async def test_a_stopped_thread_refuses_a_hop() -> None:
    thread = AsyncioThread("test-bridge-stopped-hop")
    thread.stop()
    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="stopped"):
        await thread.run(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


async def test_a_call_in_flight_when_the_thread_stops_ends_in_an_error_not_a_hang() -> None:
    thread = AsyncioThread("test-bridge-stopping")
    started = anyio.Event()
    outcome: list[BaseException] = []

    mailbox = thread._mailbox()

    async def waits_forever() -> None:
        mailbox.post(started.set)
        await asyncio.Event().wait()

    async def call() -> None:
        try:
            await thread.run(waits_forever())
        except concurrent.futures.CancelledError as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await started.wait()
            await anyio.to_thread.run_sync(thread.stop)
    assert len(outcome) == 1
