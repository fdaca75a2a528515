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

On two cores a mailbox alone batches little: the other thread wakes on the
first post, drains it, and the next post wakes it again, each time taking
the GIL from the thread that is still busy posting. So each side holds its
posts back until its own loop is about to sleep: the engine thread's loop
through its selector (:class:`_FlushingSelector`), a caller's loop through
an :class:`_Outbox`. A pass of either loop then wakes the other at most once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import selectors
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
        self.post_all((call,))

    def post_all(self, calls: typing.Iterable[Callable[[], object]]) -> bool:
        """Post ``calls`` in order; False if the loop is gone (they are dropped)."""
        with self._lock:
            waiting = bool(self._calls)
            self._calls.extend(calls)
            if waiting or not self._calls:
                return True  # a wake-up is already on its way (or nothing to do)
        try:
            self._schedule(self._drain)
        except RuntimeError:  # asyncio's closed loop; trio's RunFinishedError is one too
            with self._lock:
                self._calls.clear()  # the loop is gone; nobody is waiting any more
            return False
        return True

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
    the caller reads ``outcome`` once woken. The finished hop goes to
    ``replies``, which the thread's loop sends back before it sleeps."""

    __slots__ = ("_coroutine", "_error", "_mailbox", "_replies", "_task", "_value", "_wake")

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, T],
        mailbox: _Mailbox,
        wake: Callable[[], object],
        replies: list[_Hop[Any]],
    ) -> None:
        self._coroutine = coroutine
        self._mailbox = mailbox
        self._wake = wake
        self._replies = replies
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
        self._replies.append(self)

    def refused(self) -> None:
        """The thread's loop was gone before ``start`` reached it: fail the
        caller (from the caller's own thread) rather than leave it waiting."""
        self._coroutine.close()
        self._error = RuntimeError("this event loop thread has stopped")
        self._mailbox.post(self._wake)

    def outcome(self) -> T:
        error, self._error = self._error, None  # no cycle through the traceback
        if error is not None:
            raise error
        return typing.cast(T, self._value)


def _send_replies(replies: list[_Hop[Any]]) -> None:
    """Wake the callers of the hops that finished, one post per caller loop."""
    if not replies:
        return
    done = replies[:]
    replies.clear()  # the same list object: the hops hold it
    by_loop: dict[_Mailbox, list[Callable[[], object]]] = {}
    for hop in done:
        by_loop.setdefault(hop._mailbox, []).append(hop._wake)
    for mailbox, wakes in by_loop.items():
        mailbox.post_all(wakes)


class _FlushingSelector(selectors.DefaultSelector):
    """The engine loop's selector: before the loop waits for I/O (the end of
    each of its passes), the callers of every hop that finished in that pass
    are woken, once per caller loop."""

    def __init__(self, replies: list[_Hop[Any]]) -> None:
        super().__init__()
        self._replies = replies

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        _send_replies(self._replies)
        return super().select(timeout)


class _Outbox:
    """One caller loop's hops to one engine thread, held back until that loop
    has run what was ready and then posted together. On asyncio the first
    hop of a pass queues :meth:`flush` behind the callbacks already ready; on
    trio the outbox is an instrument whose ``before_io_wait`` (called once
    per scheduler pass) flushes it, and which leaves once the thread has
    stopped (a long trio run outlives many transports)."""

    def __init__(
        self,
        inbox: _Mailbox,
        *,
        kick: Callable[[Callable[[], None]], object] | None = None,
        stopped: Callable[[], bool] = lambda: False,
        leave: Callable[[_Outbox], None] | None = None,
    ) -> None:
        self._inbox = inbox
        self._kick = kick
        self._stopped = stopped
        self._leave = leave
        self._starts: list[_Hop[Any]] = []
        self._calls: list[Callable[[], object]] = []

    def _add(self, call: Callable[[], object]) -> None:
        if not self._calls and self._kick is not None:
            self._kick(self.flush)
        self._calls.append(call)

    def start(self, hop: _Hop[Any]) -> None:
        self._add(hop.start)
        self._starts.append(hop)

    def cancel(self, hop: _Hop[Any]) -> None:
        self._add(hop.cancel)  # after its start, in the same list

    def flush(self) -> None:
        calls, starts = self._calls, self._starts
        self._calls, self._starts = [], []
        if calls and not self._inbox.post_all(calls):
            for hop in starts:
                hop.refused()

    def before_io_wait(self, timeout: float) -> None:
        if self._calls:
            self.flush()
        elif self._leave is not None and self._stopped():
            self._leave(self)


def _caller_outbox(loop: object, inbox: _Mailbox, stopped: Callable[[], bool]) -> _Outbox:
    """An :class:`_Outbox` for the running loop (``loop`` as
    :func:`_current_loop` gives it), on trio registered as an instrument."""
    if isinstance(loop, asyncio.AbstractEventLoop):
        return _Outbox(inbox, kick=loop.call_soon)
    import trio

    class TrioOutbox(_Outbox, trio.abc.Instrument):
        pass

    leave = typing.cast("Callable[[_Outbox], None]", trio.lowlevel.remove_instrument)
    outbox = TrioOutbox(inbox, stopped=stopped, leave=leave)
    trio.lowlevel.add_instrument(outbox)
    return outbox


class AsyncioThread:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self, name: str) -> None:
        # Hops that finished, touched only on this thread (their done-callbacks
        # and the selector run there).
        self._replies: list[_Hop[Any]] = []
        self._loop = asyncio.SelectorEventLoop(_FlushingSelector(self._replies))
        # Calls posted from a trio caller would otherwise run in a copy of
        # the caller's context, where sniffio's variable says "trio": anyio
        # code on this loop (the client's middleware) then took itself for
        # trio. They run in this thread's own context instead.
        context = contextvars.Context()
        self._inbox = _Mailbox(lambda call: self._loop.call_soon_threadsafe(call, context=context))
        self._callers: weakref.WeakKeyDictionary[object, tuple[_Mailbox, _Outbox]] = weakref.WeakKeyDictionary()
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
            _send_replies(self._replies)  # the last pass's, which no select followed
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

    def _caller(self) -> tuple[_Mailbox, _Outbox]:
        """The running loop's mailbox, and its outbox to this thread."""
        key, schedule = _current_loop()
        with self._callers_lock:
            caller = self._callers.get(key)
            if caller is None:
                outbox = _caller_outbox(key, self._inbox, self._loop.is_closed)
                caller = self._callers[key] = (_Mailbox(schedule), outbox)
        return caller

    def _mailbox(self) -> _Mailbox:
        return self._caller()[0]

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
        mailbox, outbox = self._caller()
        hop = _Hop(coroutine, mailbox, done.set, self._replies)
        outbox.start(hop)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            outbox.cancel(hop)
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
