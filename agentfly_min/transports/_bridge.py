"""Running asyncio-bound engines (vLLM, Ray) from any anyio event loop.

The engine gets an asyncio event loop on a thread of its own; callers on
asyncio or trio submit coroutines to it and wait without blocking their own
loop or tying up a worker thread per request: the engine thread wakes the
caller through anyio's event-loop token. Cancelling the caller cancels the
coroutine in the engine loop (which is how vLLM learns to abort a request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["AsyncioThread", "wait_future"]

T = TypeVar("T")


def _scheduler() -> Callable[[Callable[[], object]], object]:
    """A thread-safe "call this soon" for the running event loop.

    Through each loop's own public hook: anyio's cross-backend one
    (``backend_class.run_sync_soon``) is internal and missing from anyio 4.11,
    our floor, and ``anyio.from_thread.run_sync`` would block the engine's
    thread until the caller's loop gets round to it."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # not asyncio: anyio's only other backend is trio
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a future completed on another thread; cancel it if we are cancelled."""
    schedule = _scheduler()
    done = anyio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        try:
            schedule(done.set)
        except RuntimeError:  # asyncio's closed loop; trio's RunFinishedError is one too
            pass  # the caller's loop is gone; nobody is waiting any more

    future.add_done_callback(wake)
    try:
        await done.wait()
    except anyio.get_cancelled_exc_class():
        future.cancel()
        raise
    return future.result()


class AsyncioThread:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
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
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on this loop and await its result from any loop."""
        return await wait_future(self.submit(coroutine))

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
