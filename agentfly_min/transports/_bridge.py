"""Running asyncio-bound engines (vLLM, Ray) from any anyio event loop.

The engine gets an asyncio event loop on a thread of its own; callers on
asyncio or trio submit coroutines to it and wait without blocking their own
loop or tying up a worker thread per request: the engine thread wakes the
caller through the caller loop's own thread-safe hook. Cancelling the caller
cancels the coroutine in the engine loop (which is how vLLM learns to abort a
request).

Crossing threads costs a wake-up of the other loop, a socket write that is
dear where system calls are (a sandbox, a VM): with 16 requests finishing in
one engine step, that was 16 writes each way per step. Hand-offs are posted
to a :class:`_Mailbox` instead, which wakes its loop once per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import typing
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["AsyncioThread", "on_asyncio", "wait_future"]

T = TypeVar("T")


class _Mailbox:
    """Calls for one event loop, posted from any thread; the loop is woken
    once for all the calls posted before it gets round to them."""

    def __init__(self, schedule: Callable[[Callable[[], object]], object]) -> None:
        self._schedule = schedule
        self._lock = threading.Lock()
        self._calls: list[Callable[[], object]] = []

    def post(self, call: Callable[[], object]) -> None:
        with self._lock:
            self._calls.append(call)
            if len(self._calls) > 1:
                return  # a wake-up is already on its way
        try:
            self._schedule(self._drain)
        except RuntimeError:  # asyncio's closed loop; trio's RunFinishedError is one too
            with self._lock:
                self._calls.clear()  # the loop is gone; nobody is waiting any more

    def _drain(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call()


def on_asyncio() -> bool:
    """Whether the caller runs on an asyncio loop (else on trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio: no asyncio loop runs here
        return False
    return True


def _current_loop() -> tuple[object, Callable[[Callable[[], object]], object]]:
    """The running event loop (as a key) and its thread-safe "call this soon".

    Through each loop's own public hook: anyio's cross-backend one
    (``backend_class.run_sync_soon``) is internal and missing from anyio 4.11,
    our floor, and ``anyio.from_thread.run_sync`` would block the engine's
    thread until the caller's loop gets round to it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's only other backend is trio
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, token.run_sync_soon
    return loop, loop.call_soon_threadsafe


async def wait_future(future: concurrent.futures.Future[T], mailbox: _Mailbox | None = None) -> T:
    """Await a future completed on another thread; cancel it if we are
    cancelled. ``mailbox`` (for the running loop) coalesces the wake-ups of
    many waiters."""
    if mailbox is None:
        mailbox = _Mailbox(_current_loop()[1])
    done = anyio.Event()
    future.add_done_callback(lambda _: mailbox.post(done.set))
    try:
        await done.wait()
    except anyio.get_cancelled_exc_class():
        future.cancel()
        raise
    return future.result()


def _settle(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        future.cancel()
    if not future.set_running_or_notify_cancel():
        return
    exception = task.exception()
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(task.result())


class _Hop(Generic[T]):
    """One call across to the asyncio thread: ``start`` and ``cancel`` run
    there (posted to one inbox, so ``cancel`` always comes after ``start``),
    the caller reads ``outcome`` once woken."""

    __slots__ = ("_coroutine", "_error", "_mailbox", "_task", "_value", "_wake")

    def __init__(self, coroutine: Coroutine[Any, Any, T], mailbox: _Mailbox, wake: Callable[[], object]) -> None:
        self._coroutine = coroutine
        self._mailbox = mailbox
        self._wake = wake
        self._task: asyncio.Task[T] | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._coroutine)
        self._task.add_done_callback(self._settle)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _settle(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            # Not the caller's doing (it is gone by now): the thread stopped.
            self._error = concurrent.futures.CancelledError()
        else:
            self._error = task.exception()
            if self._error is None:
                self._value = task.result()
        self._mailbox.post(self._wake)

    def outcome(self) -> T:
        error, self._error = self._error, None  # no cycle through the traceback
        if error is not None:
            raise error
        return typing.cast(T, self._value)


class AsyncioThread:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._inbox = _Mailbox(self._loop.call_soon_threadsafe)
        self._callers: weakref.WeakKeyDictionary[object, _Mailbox] = weakref.WeakKeyDictionary()
        self._callers_lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on this loop; cancelling the future cancels it.
        (``asyncio.run_coroutine_threadsafe`` semantics, with wake-ups batched.)"""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if future.cancelled():
                coroutine.close()
                return
            task = self._loop.create_task(coroutine)
            task.add_done_callback(lambda t: _settle(future, t))

            def propagate(done: concurrent.futures.Future[T]) -> None:
                if done.cancelled() and not task.done():
                    if threading.get_ident() == self._thread.ident:
                        task.cancel()
                    else:
                        self._loop.call_soon_threadsafe(task.cancel)

            future.add_done_callback(propagate)

        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this event loop thread has stopped")
        self._inbox.post(start)
        return future

    def _mailbox(self) -> _Mailbox:
        key, schedule = _current_loop()
        with self._callers_lock:
            mailbox = self._callers.get(key)
            if mailbox is None:
                mailbox = self._callers[key] = _Mailbox(schedule)
        return mailbox

    def on_this_loop(self) -> bool:
        """Whether the caller runs on this thread's loop (no hop needed)."""
        return threading.get_ident() == self._thread.ident

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on this loop and await its result from any loop
        (from this loop itself, directly: no hop, no wake-ups).

        The hot path of every bridged call, so it skips what :meth:`submit`
        needs for blocking callers (a ``concurrent.futures.Future``, its
        condition variable and locks): the task's done-callback stores the
        outcome in a :class:`_Hop` and posts the caller's wake-up."""
        if self.on_this_loop():
            return await coroutine
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this event loop thread has stopped")
        done = anyio.Event()
        hop = _Hop(coroutine, self._mailbox(), done.set)
        self._inbox.post(hop.start)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            self._inbox.post(hop.cancel)
            raise
        return hop.outcome()

    def run_blocking(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on this loop from synchronous code and wait."""
        return self.submit(coroutine).result(timeout)

    def call_blocking(self, function: Callable[[], T], timeout: float | None = None) -> T:
        """Call a synchronous function on this loop's thread and wait."""

        async def call() -> T:
            return function()

        return self.run_blocking(call(), timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop (cancelling what still runs on it) and join the thread."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
