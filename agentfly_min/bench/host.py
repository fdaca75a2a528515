"""How steady the host itself is: the noise floor under every ratio.

Pairing ours with raw round by round cancels what drifts slowly; it cannot
cancel a host whose speed moves from one second to the next (a shared VM,
frequency scaling, a neighbour's load), which widens every interval however
well the rounds are arranged. The bench times a fixed piece of pure-Python
work a number of times before any engine starts and after the last has
shut down, and reports the spread, so a reader can tell a wide interval on
a jittery host from a real difference between transports.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import msgspec

__all__ = ["HostSteadiness", "probe_host", "UNSTEADY"]

UNSTEADY = 0.05
"""A spread above this (5% coefficient of variation) is called unsteady:
on such a host a ±2% target takes far more rounds than a budget allows."""


class HostSteadiness(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``seconds``: the wall time of each repetition of the same work, in
    the order taken."""

    seconds: tuple[float, ...]

    @property
    def spread(self) -> float:
        """The coefficient of variation of ``seconds`` (0 for fewer than two)."""
        if len(self.seconds) < 2:
            return 0.0
        mean = statistics.fmean(self.seconds)
        return statistics.stdev(self.seconds) / mean if mean > 0 else 0.0

    @property
    def steady(self) -> bool:
        return self.spread <= UNSTEADY


def _fixed_work() -> None:
    # Integer arithmetic in the interpreter: no allocation worth the name,
    # no I/O, no library, so only the host's speed can move its time.
    total = 0
    for i in range(2_000_000):
        total += i * i


def probe_host(
    *,
    repeats: int = 15,
    work: Callable[[], None] = _fixed_work,
    clock: Callable[[], float] = time.perf_counter,
) -> HostSteadiness:
    """Time ``work`` ``repeats`` times in a row (about 0.1 s each here by default:
    the scale of a bench round, where jitter does not average out)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    taken = []
    for _ in range(repeats):
        started = clock()
        work()
        taken.append(clock() - started)
    return HostSteadiness(seconds=tuple(taken))
