"""What one bench run measures and how long it may take, checked when built."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .._validation import check_fields
from ..errors import ConfigError
from .report import TransportName
from .workload import Workload

__all__ = ["BenchOptions", "split_rounds"]


class BenchOptions(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    random_weights: bool
    transports: tuple[TransportName, ...]
    workload: Workload
    concurrency_levels: tuple[int, ...]
    loop: Literal["asyncio", "trio"]
    work_dir: str
    target: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.05
    budget_seconds: Annotated[float, Meta(gt=0.0)] = 30.0
    # A bootstrap over two or three rounds is too narrow to trust; with one
    # start, six give each order three rounds (t with 4 degrees of freedom).
    min_rounds: Annotated[int, Meta(ge=2)] = 6
    max_rounds: Annotated[int, Meta(ge=2)] = 50
    device: Literal["cpu", "cuda"] = "cpu"
    servers: int = 2
    # Starts of each transport's stack; each runs every row for its share of
    # the budget and rounds (see stats: rounds on one start share its state).
    stacks: Annotated[int, Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        check_fields(self)
        if self.min_rounds > self.max_rounds:
            raise ConfigError("BenchOptions.min_rounds", f"{self.min_rounds} is more than max_rounds ({self.max_rounds})")
        split_rounds(self.min_rounds, self.max_rounds, self.stacks)

    def share(self) -> tuple[float, int, int]:
        """One start's share of a row: (budget seconds, min rounds, max rounds)."""
        return (self.budget_seconds / self.stacks, *split_rounds(self.min_rounds, self.max_rounds, self.stacks))


def split_rounds(min_rounds: int, max_rounds: int, stacks: int) -> tuple[int, int]:
    """Each start's least and most rounds when a row's are split among
    ``stacks`` starts: at least two (an interval needs them), the least
    rounded up and the most rounded down, so the row keeps within both; a
    split that cannot is refused."""
    least = max(2, -(-min_rounds // stacks))
    most = max_rounds // stacks
    if least > most:
        raise ConfigError(
            "BenchOptions.stacks",
            f"{stacks} starts split a row's rounds: each needs at least {least}, but at most {max_rounds} "
            f"rounds a row leave {most} each; allow {least * stacks} or start fewer stacks",
        )
    return least, most


