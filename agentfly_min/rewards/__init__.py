"""Rewards: functions of a finished trajectory and its task's fields."""

from .math import extract_answer, math_reward_string_equal, normalize_answer

__all__ = ["math_reward_string_equal", "extract_answer", "normalize_answer"]
