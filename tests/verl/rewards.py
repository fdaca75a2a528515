"""Rewards that verl's Ray agent-loop workers import by path in the trainer
tests (the checkout is on their PYTHONPATH, see tests/conftest.py)."""

from __future__ import annotations

from agentfly_min import Trajectory
from agentfly_min.agent import Task


def answer_over_100(trajectory: Trajectory, task: Task) -> float:
    """The task's answer / 100, so each row's reward is known and distinct;
    a task with ``explode`` in its extra info makes the reward raise, with a
    coloured multi-line message like a remote traceback's."""
    if task.get("explode"):
        raise RuntimeError("\x1b[31mboom\x1b[0m\n  File 'x.py', line 1\nRuntimeError: boom")
    return float(task["answer"]) / 100


def one_unless_failing(trajectory: Trajectory, task: Task) -> float:
    """1.0 for every row (a group of correct answers), except that the reward
    raises (the row fails) for a row with ``explode`` in its extra info, or
    for the session with index 3 of a group on verl's v1 trainer (which
    passes each session's index to the loop)."""
    if task.get("explode") or task.get("session_id") == 3:
        raise RuntimeError("boom")
    return 1.0


def spread(trajectory: Trajectory, task: Task) -> float:
    """A reward that differs between samples of one prompt (from the sampled
    ids), so GRPO's advantages are not all zero and a policy step moves."""
    return (sum(trajectory.response_ids) % 7) / 6
