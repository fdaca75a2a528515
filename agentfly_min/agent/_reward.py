"""Rewarding a finished episode: the user's reward function, bounded in time,
whatever it raises recorded on the trajectory."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
import msgspec

from .._text import one_line
from .._user_code import escapes, run_in_daemon_thread
from .agent import RewardFn, Task
from .trajectory import Trajectory

__all__ = ["reward_trajectory"]

_log = logging.getLogger("agentfly_min.agent")


def _is_async(function: Callable[..., object]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None))


async def reward_trajectory(reward_fn: RewardFn | None, timeout: float | None, trajectory: Trajectory, task: Task) -> Trajectory:
    """``trajectory`` with its reward, or with ``reward_error`` saying why
    there is none; a failed episode is not rewarded. Never raises but for
    cancellation."""
    if reward_fn is None or trajectory.error is not None:
        return trajectory
    start = anyio.current_time()
    error: str | None = None
    reward: float | None = None
    with anyio.move_on_after(timeout) as deadline:
        try:
            value: Any
            if _is_async(reward_fn):
                value = await cast(Awaitable[float], reward_fn(trajectory, task))
            else:
                # Off the event loop: a synchronous reward (a grader, a test run)
                # may compute for seconds and would hold every other chain. Past
                # its timeout the thread is abandoned (a daemon: exit is not held).
                value = await run_in_daemon_thread(lambda: reward_fn(trajectory, task), name="agentfly_min reward")
                if inspect.isawaitable(value):
                    value = await value
            reward = float(value)
        except BaseException as exc:  # noqa: BLE001 - a reward is user code; its failure is recorded, not raised
            if escapes(exc):
                raise
            error = f"{type(exc).__name__}: {one_line(str(exc))}"
    if deadline.cancelled_caught:
        error = f"the reward did not return within {timeout:g} s (Agent.reward_timeout)"
    if reward is not None and not math.isfinite(reward):
        error, reward = f"the reward is {reward} (not a finite number)", None
    seconds = anyio.current_time() - start
    if error is not None:
        _log.warning("%s: reward failed: %s", trajectory.request_id, error)
        return msgspec.structs.replace(trajectory, reward_error=error, reward_seconds=seconds)
    return msgspec.structs.replace(trajectory, reward=reward, reward_seconds=seconds)
