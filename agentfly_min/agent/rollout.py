"""Running many episodes: :func:`rollout` (every trajectory, in order) and
:func:`rollout_stream` (trajectories as they finish, for rollouts too large
to hold in memory). Every chain ends in a trajectory; only cancellation
propagates."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Container, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._user_code import escapes
from ..errors import ConfigError
from ..records import Generate
from ._tokens import Tokenizer
from .agent import Agent, Task
from .loop import run_agent, task_id
from .trajectory import Trajectory

__all__ = ["Progress", "rollout", "rollout_stream"]

_log = logging.getLogger("agentfly_min.agent")

Progress = Callable[[int, int, Trajectory], None]
"""``progress(done, total, trajectory)``, called as each trajectory finishes."""


def _check_ids(tasks: Sequence[Task]) -> list[str]:
    ids = [task_id(task, index) for index, task in enumerate(tasks)]
    counts = Counter(ids)
    repeated = sorted(ident for ident, count in counts.items() if count > 1)
    if repeated:
        shown = ", ".join(repr(ident) for ident in repeated[:5]) + (" ..." if len(repeated) > 5 else "")
        raise ConfigError("rollout tasks", f"task ids must be unique (they name groups); repeated: {shown}")
    return ids


async def rollout(
    agent: Agent[Any],
    generate: Generate,
    tasks: Sequence[Task],
    *,
    n: int = 1,
    concurrency: int | None = None,
    tokenizer: Tokenizer | None = None,
    progress: Progress | None = None,
    skip: Container[tuple[str, int]] = (),
) -> list[Trajectory]:
    """Run ``n`` chains of ``agent`` on every task; return every trajectory,
    ordered by task then chain. Chains named in ``skip`` as ``(task id,
    chain index)`` (already done, say) are not run and not returned.

    Chains of one task share ``group_id`` (the task's id, see
    :func:`task_id`); repeated ids are refused before anything runs. At most
    ``concurrency`` chains run at once. Every chain returns a trajectory,
    failed ones with their reason; a ``progress`` callback that raises is
    logged and the rollout goes on; cancelling the rollout cancels every
    chain. For rollouts too large to keep in memory, see :func:`rollout_stream`.
    """
    ids = _check_ids(tasks)
    order = {ident: index for index, ident in enumerate(ids)}
    total = sum(1 for ident in ids for chain in range(n) if (ident, chain) not in skip) if n >= 1 else 0
    finished: list[Trajectory] = []
    async with rollout_stream(
        agent, generate, tasks, n=n, concurrency=concurrency or max(total, 1), tokenizer=tokenizer, skip=skip
    ) as trajectories:
        async for trajectory in trajectories:
            finished.append(trajectory)
            if progress is not None:
                try:
                    progress(len(finished), total, trajectory)
                except BaseException as exc:  # noqa: BLE001 - a progress callback is user code; it must not stop the rollout
                    if escapes(exc):
                        raise
                    _log.warning("the progress callback raised; the rollout goes on", exc_info=True)
    finished.sort(key=lambda t: (order[t.task_id], t.chain_index))
    return finished


async def _each(tasks: Iterable[Task] | AsyncIterable[Task]) -> AsyncIterator[Task]:
    if isinstance(tasks, AsyncIterable):
        async for task in tasks:
            yield task
    else:
        for task in tasks:
            yield task


@asynccontextmanager
async def rollout_stream(
    agent: Agent[Any],
    generate: Generate,
    tasks: Iterable[Task] | AsyncIterable[Task],
    *,
    n: int = 1,
    concurrency: int = 64,
    tokenizer: Tokenizer | None = None,
    skip: Container[tuple[str, int]] = (),
    check_repeats: bool = True,
) -> AsyncIterator[MemoryObjectReceiveStream[Trajectory]]:
    """Run ``n`` chains per task with at most ``concurrency`` alive, and hand
    out trajectories as they finish::

        async with rollout_stream(agent, generate, read_tasks(path)) as trajectories:
            async for trajectory in trajectories:
                write(trajectory)

    ``tasks`` is read lazily (a generator over a file is fine) and nothing is
    kept of a finished chain, so memory is bounded by ``concurrency``, not by
    the number of tasks. A chain waits for the consumer before it frees its
    slot. With ``check_repeats`` a task whose id was seen before gets
    trajectories with ``error`` set instead of running (the list form,
    :func:`rollout`, refuses such tasks up front); that check keeps every id
    seen, about 130 bytes a task: turn it off when the ids are known to be
    unique and memory must not grow at all. Leaving the block early cancels
    the chains still running.
    """
    if n < 1:
        raise ConfigError("rollout n", f"needs n >= 1, got {n}")
    if concurrency < 1:
        raise ConfigError("rollout concurrency", f"needs concurrency >= 1, got {concurrency}")
    send, receive = anyio.create_memory_object_stream[Trajectory](max_buffer_size=concurrency)
    slots = anyio.Semaphore(concurrency, fast_acquire=True)  # every chain yields in its first call

    async def chain(out: MemoryObjectSendStream[Trajectory], task: Task, ident: str, index: int, duplicate: int | None) -> None:
        async with out:
            try:
                if duplicate is None:
                    trajectory = await run_agent(agent, generate, task, tokenizer=tokenizer, task_id=ident, chain_index=index)
                else:
                    trajectory = Trajectory(
                        task_id=ident, group_id=ident, chain_index=index, request_id=f"{ident}-{index}-duplicate",
                        messages=(), finish_reason="error", num_turns=0, token_level=False,
                        error=f"task id {ident!r} repeats the task at position {duplicate}; ids name groups, so it was not run",
                    )  # fmt: skip
                await out.send(trajectory)
            finally:
                slots.release()

    async with anyio.create_task_group() as tg:

        async def produce() -> None:
            first_seen: dict[str, int] = {}
            async with send:
                index = 0
                async for task in _each(tasks):
                    ident = task_id(task, index)
                    duplicate = first_seen.get(ident)
                    if duplicate is None and check_repeats:
                        first_seen[ident] = index
                    for chain_index in range(n):
                        if (ident, chain_index) in skip:
                            continue
                        await slots.acquire()
                        tg.start_soon(chain, send.clone(), task, ident, chain_index, duplicate)
                    index += 1

        tg.start_soon(produce)
        try:
            yield receive
        finally:
            tg.cancel_scope.cancel()  # the consumer left: chains still running have no one to hand to
            receive.close()
