"""Running an agent this project never imports against a gateway: an async
function given a base URL and the task, or a command with the URL in its
environment. Whatever the agent does or raises, its session ends in
trajectories."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio

from .._text import one_line
from .._user_code import escapes
from ..agent import Trajectory
from ..agent.agent import Task
from ..agent.loop import task_id
from .server import Gateway

__all__ = ["ExternalAgent", "run_external", "rollout_external", "command_agent"]

_log = logging.getLogger("agentfly_min.gateway")

ExternalAgent = Callable[[str, Task], Awaitable[object]]
"""``agent(base_url, task)``: runs one episode with any OpenAI-compatible
client pointed at ``base_url`` (what it returns is ignored)."""


async def run_external(
    gateway: Gateway, agent: ExternalAgent, task: Task, *, chain_index: int = 0, timeout: float | None = None
) -> list[Trajectory]:
    """One episode of ``agent`` on ``task`` through its own session; the
    session's trajectories. An agent that raises (or overruns ``timeout``
    seconds) has its error recorded on the last one; only cancellation
    propagates."""
    session = gateway.open_session(task, chain_index=chain_index)
    error: str | None = None
    try:
        with anyio.fail_after(timeout):
            await agent(session.base_url, task)
    except TimeoutError:
        error = f"the agent did not finish within {timeout:g} s"
    except BaseException as exc:  # noqa: BLE001 - the agent is user code; its failure is recorded
        if escapes(exc):
            with anyio.CancelScope(shield=True):
                await gateway.end_session(session.id)
            raise
        error = f"the agent raised {type(exc).__name__}: {one_line(str(exc))}"
    if error is not None:
        _log.warning("%s: %s", session.id, error)
    return await gateway.end_session(session.id, error=error)


async def rollout_external(
    gateway: Gateway, agent: ExternalAgent, tasks: Sequence[Task], *, n: int = 1, concurrency: int = 64, timeout: float | None = None
) -> list[Trajectory]:
    """``n`` episodes of ``agent`` per task, at most ``concurrency`` at once;
    every session's trajectories, ordered by task then chain. A chain's
    ``group_id`` is its task's id (see :func:`~agentfly_min.agent.task_id`)."""
    slots = anyio.Semaphore(concurrency)
    found: dict[tuple[int, int], list[Trajectory]] = {}

    async def one(index: int, chain: int) -> None:
        async with slots:
            task = {**tasks[index], "id": task_id(tasks[index], index)}
            found[index, chain] = await run_external(gateway, agent, task, chain_index=chain, timeout=timeout)

    async with anyio.create_task_group() as tg:
        for index in range(len(tasks)):
            for chain in range(n):
                tg.start_soon(one, index, chain)
    return [t for key in sorted(found) for t in found[key]]


def command_agent(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> ExternalAgent:
    """An agent that is a program: ``argv`` runs with ``OPENAI_BASE_URL``
    set to the session's URL (and ``OPENAI_API_KEY`` to a placeholder, which
    the SDK insists on), the task as JSON in ``AGENTFLY_TASK`` and on stdin.
    A non-zero exit is the agent's error, with the end of its stderr."""

    async def agent(base_url: str, task: Task) -> object:
        text = json.dumps(dict(task))
        environment = {**os.environ, **(env or {}), "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "agentfly", "AGENTFLY_TASK": text}
        done = await anyio.run_process(list(argv), input=text.encode(), env=environment, check=False)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-500:]
            raise RuntimeError(f"{argv[0]} exited with {done.returncode}: {tail}")
        return done.stdout

    return agent
