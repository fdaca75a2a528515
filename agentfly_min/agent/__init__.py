"""The agent: its record, the episode loop and trajectories."""

from .agent import Agent, Backend, RewardFn, Task
from .loop import Progress, Tokenizer, rollout, rollout_stream, run_agent, task_id, task_messages
from .trajectory import EpisodeEnd, Trajectory

__all__ = [
    "Agent",
    "Backend",
    "RewardFn",
    "Task",
    "Trajectory",
    "EpisodeEnd",
    "Tokenizer",
    "Progress",
    "run_agent",
    "rollout",
    "rollout_stream",
    "task_id",
    "task_messages",
]
