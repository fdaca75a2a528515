"""The bridge to an asyncio thread (vLLM's engine, Ray, aiohttp on trio):
results, cancellation, and one wake-up per batch rather than per call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from agentfly_min.transports._bridge import AsyncioThread, _Mailbox, wait_future

pytestmark = pytest.mark.anyio


@pytest.fixture
def thread() -> Iterator[AsyncioThread]:
    thread = AsyncioThread("test-bridge")
    yield thread
    thread.stop()


def _count_wakeups(mailbox: _Mailbox) -> list[int]:
    """Count the times ``mailbox`` wakes its loop (a socket write each)."""
    schedule = mailbox._schedule
    count = [0]

    def counting(call: Callable[[], object]) -> object:
        count[0] += 1
        return schedule(call)

    mailbox._schedule = counting
    return count


async def test_calls_made_in_one_pass_wake_the_thread_once_though_the_gil_is_let_go(thread: AsyncioThread) -> None:
    """Between two calls a caller's task lets the GIL go (here a blocking
    sleep, in a real loop tokenising or a C extension): the thread, on the
    other core, woke and drained each call alone, 20 writes for 20 calls."""
    engine_wakeups = _count_wakeups(thread._inbox)
    results: dict[int, int] = {}

    async def square(i: int) -> int:
        return i * i

    async def one(i: int) -> None:
        time.sleep(0.002)
        results[i] = await thread.run(square(i))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert results == {i: i * i for i in range(20)}
    assert engine_wakeups[0] <= 2


@pytest.mark.parametrize(("calls", "let_go"), [(200, False), (20, True)])
async def test_results_of_one_engine_pass_wake_the_caller_once(thread: AsyncioThread, calls: int, let_go: bool) -> None:
    """Results finishing in one pass of the thread's loop wake the caller
    once, not once per result; also when work that lets the GIL go runs
    between their done-callbacks there (Ray's or vLLM's), which let the
    caller, on the other core, wake and drain each result alone."""
    gate = thread.call_blocking(asyncio.Event)
    caller_wakeups = _count_wakeups(thread._mailbox())
    results: dict[int, int] = {}

    async def after_gate(i: int) -> int:
        await gate.wait()
        if let_go:
            asyncio.get_running_loop().call_soon(time.sleep, 0.002)  # runs just before this task's done-callback
        return i * i

    async def one(i: int) -> None:
        results[i] = await thread.run(after_gate(i))

    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
        while thread.call_blocking(lambda: len(gate._waiters)) < calls:
            await anyio.sleep(0.01)
        before = caller_wakeups[0]
        thread.call_blocking(gate.set)  # all of them finish in one pass of the thread's loop
    assert results == {i: i * i for i in range(calls)}
    assert 1 <= caller_wakeups[0] - before <= 2


async def test_a_hop_the_stopping_thread_never_took_fails_rather_than_hangs(thread: AsyncioThread) -> None:
    """The loop closed between the caller's check and the post of its call
    (which waits for the end of the caller's pass): the call is refused."""
    inbox = thread._inbox

    def closed(call: Callable[[], object]) -> object:
        raise RuntimeError("Event loop is closed")

    inbox._schedule = closed
    coroutine = asyncio.sleep(0)
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="stopped"):
        await thread.run(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


async def test_a_stopped_thread_leaves_nothing_in_the_callers_loop(anyio_backend: str) -> None:
    """On trio the outbox is an instrument called every scheduler pass; a
    trio run that opens and closes many transports must not keep them all."""
    thread = AsyncioThread("test-bridge-leaves")

    async def one() -> int:
        return 1

    assert await thread.run(one()) == 1
    outbox = thread._caller()[1]
    calls = [0]
    hook = outbox.before_io_wait

    def counting(timeout: float) -> None:
        calls[0] += 1
        hook(timeout)

    outbox.before_io_wait = counting  # type: ignore[method-assign]
    await anyio.sleep(0.01)
    if anyio_backend == "trio":
        assert calls[0] >= 1  # registered: called as the loop goes idle
    await anyio.to_thread.run_sync(thread.stop)
    for _ in range(3):
        await anyio.sleep(0.01)
    settled = calls[0]
    for _ in range(5):
        await anyio.sleep(0.01)
    assert calls[0] == settled  # no longer called
    assert not outbox._calls


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
