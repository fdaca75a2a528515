"""The agent: its record, the episode loop and trajectories."""

from .agent import Agent, Backend, RewardFn, Task
from .loop import Progress, Tokenizer, rollout, run_agent, task_messages
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
    "task_messages",
]
