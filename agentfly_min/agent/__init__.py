"""The agent: its record, the episode loop and trajectories."""

from .agent import Agent, Backend, RewardFn, Task
from .events import EpisodeDone, Event, ReasoningDelta, TextDelta, ToolCallEvent, ToolResultEvent, TurnEnd
from .loop import Tokenizer, run_agent, stream_agent, task_id, task_messages
from .rollout import Progress, rollout, rollout_stream
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
    "stream_agent",
    "Event",
    "TextDelta",
    "ReasoningDelta",
    "ToolCallEvent",
    "ToolResultEvent",
    "TurnEnd",
    "EpisodeDone",
    "rollout",
    "rollout_stream",
    "task_id",
    "task_messages",
]
