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

__all__ = ["HostSteadiness", "probe_host", "UNSTEADY", "STALL"]

UNSTEADY = 0.05
"""A spread above this (5%, read as a coefficient of variation) is called unsteady:
on such a host a ±2% target takes far more rounds than a budget allows."""

STALL = 1.5
"""A repetition slower than this many times the median is a stall."""

_IQR_TO_SIGMA = 1.349  # the interquartile range of a normal sample, in sigmas


class HostSteadiness(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``seconds``: the wall time of each repetition of the same work, in
    the order taken."""

    seconds: tuple[float, ...]

    @property
    def spread(self) -> float:
        """How much the repetitions vary: the interquartile range over the
        median, divided by 1.349 so that it reads as a coefficient of
        variation for normal noise (0 for fewer than two). Robust on
        purpose: one stalled repetition (a process exiting as the probe
        runs) is a stall, counted in :attr:`stalls`, not a host whose speed
        moves; with the plain coefficient of variation one 0.39 s repetition
        among fourteen of 0.08-0.09 s read as 75%."""
        if len(self.seconds) < 2:
            return 0.0
        low, middle, high = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return (high - low) / _IQR_TO_SIGMA / middle if middle > 0 else 0.0

    @property
    def stalls(self) -> int:
        """Repetitions that took more than :data:`STALL` times the median."""
        if not self.seconds:
            return 0
        middle = statistics.median(self.seconds)
        return sum(1 for s in self.seconds if s > STALL * middle)

    @property
    def worst(self) -> float:
        """The slowest repetition over the median (1.0 for none)."""
        if not self.seconds:
            return 1.0
        middle = statistics.median(self.seconds)
        return max(self.seconds) / middle if middle > 0 else 1.0

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
