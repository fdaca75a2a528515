"""Telling the failure of user code from a cancellation that must go on.

User code (tools, rewards, transports, middleware, callbacks, the model's own
code run by a tool) may raise anything, ``BaseException`` subclasses
included, and each is that code's failure, recorded where it happened. Two
kinds escape: a cancellation of the running task (a deadline, a task group
shutting down, the caller cancelling) and ``KeyboardInterrupt`` (Ctrl-C).
``SystemExit`` is recorded: a tool running model-written code that calls
``exit()`` must not end the run.

On asyncio, ``CancelledError`` is an ordinary class that code can raise by
itself (``raise asyncio.CancelledError``, a library leaking one from a task
it cancelled). Caught bare, it would cancel the task group and lose every
chain with no error. It is a cancellation of this task exactly when the task
has one pending: ``Task.cancelling()``, which anyio's cancel scopes and a
plain ``Task.cancel()`` both raise and only leaving the cancelled scope lowers.
On trio, ``trio.Cancelled`` cannot be raised by user code at all.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["escapes", "run_in_daemon_thread"]

T = TypeVar("T")


def escapes(exc: BaseException) -> bool:
    """Whether ``exc``, caught around user code, must propagate (a
    cancellation of this task, an interrupt) rather than be recorded."""
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(escapes(inner) for inner in exc.exceptions)
    cancelled = anyio.get_cancelled_exc_class()
    if not isinstance(exc, cancelled):
        return False
    if cancelled is asyncio.CancelledError:
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0
    return True


async def run_in_daemon_thread(function: Callable[[], T], *, name: str) -> T:
    """``function()`` on a daemon thread of its own (with the caller's
    context variables), awaited without blocking the event loop.

    Cancelling the wait abandons the thread: threads cannot be stopped, so
    it runs on, but as a daemon it never holds the interpreter at exit.
    anyio's worker threads on asyncio are not daemons: a synchronous tool
    hung past its timeout kept the process from exiting until it returned.
    """
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    results: list[T] = []
    failures: list[BaseException] = []
    context = contextvars.copy_context()

    def work() -> None:
        try:
            results.append(context.run(function))
        except BaseException as exc:  # noqa: BLE001 - carried to the awaiting task, which decides
            failures.append(exc)
        try:
            anyio.from_thread.run_sync(done.set, token=token)
        except RuntimeError:  # the loop has ended (the wait was abandoned); trio's RunFinishedError is one too
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    await done.wait()
    if failures:
        raise failures[0]
    return results[0]
