"""Rewards that verl's Ray agent-loop workers import by path in the trainer
tests (the tests folder is on their PYTHONPATH, see conftest)."""

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
