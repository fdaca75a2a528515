"""Ratios a reader can trust: paired rounds, a bootstrap interval, and
rounds added until the interval is narrow enough or the time is up.

A round measures ours and the raw counterpart back to back, so slow drift
of the machine (thermal state, a neighbour's load) lands on both sides and
the pairing keeps it out of the ratio. Rounds come in blocks of two, one in
each order, which comes first drawn per block. Whichever side runs first
in a round can pay for it (in the vLLM suite on this host the first run of
a round was up to 7% slower, the more so the more rounds there were, while
the interval was computed between rounds), and an order drawn per round
leads with one side more often than the other, which tilts the ratio. The
ratio pools work and time over the rounds of each order and averages the
two orders geometrically, so such a cost cancels however the leads fell;
the interval resamples whole rounds (both sides of a round together)
within each order, so it is as wide as the round-to-round noise really
is, not as wide as the cost of leading.

The interval itself, what counts as a unit of it and why, is in
``interval``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Annotated, Literal, TypeAlias

import msgspec
from msgspec import Meta

from .._validation import require
from .interval import Sample, Verdict, approximate_half_width, point_ratio, ratio_interval, verdict

__all__ = [
    "Sample",
    "RatioEstimate",
    "Verdict",
    "Stopped",
    "ratio_interval",
    "approximate_half_width",
    "verdict",
    "measure_pairs",
    "combine_stacks",
    "stack_ratios",
    "describe",
]

Stopped: TypeAlias = Literal["narrow", "budget", "max rounds"]


class RatioEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Ours over raw (rate / rate: above 1, ours is faster) with its
    interval, and every sample behind it, so anyone can recompute.
    ``half_width`` is half the interval over the ratio (0.05: +/-5%)."""

    ratio: float
    low: float
    high: float
    confidence: float
    rounds: int
    stopped: Stopped
    seconds: float
    verdict: Verdict
    ours: list[Sample]
    raw: list[Sample]
    warmup_ours: list[Sample] = []
    warmup_raw: list[Sample] = []

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 / self.ratio if self.ratio > 0 else float("inf")


def measure_pairs(
    ours: Callable[[], Sample],
    raw: Callable[[], Sample],
    *,
    target: float = 0.05,
    budget_seconds: float = 60.0,
    min_rounds: int = 5,
    max_rounds: int = 200,
    warmup_rounds: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
    clock: Callable[[], float] | None = None,
    on_round: Callable[[int], None] | None = None,
) -> RatioEstimate:
    """Run paired rounds of ``ours`` and ``raw`` (each returns one
    :class:`Sample`), in blocks of two rounds, one in each order, until the
    interval's half-width is within ``target`` of the ratio, or
    ``budget_seconds`` have passed, or ``max_rounds``; never before
    ``min_rounds`` (so a row with long rounds runs past its budget rather
    than end on a few), and, but for ``max_rounds``, only at the end of a
    block. The first ``warmup_rounds`` are measured and kept apart, not
    counted."""
    import time

    require("measure_pairs.target", target, Annotated[float, Meta(ge=0.0, lt=1.0)])  # 0: until budget or max_rounds
    require("measure_pairs.budget_seconds", budget_seconds, Annotated[float, Meta(gt=0.0)])
    require("measure_pairs.min_rounds", min_rounds, Annotated[int, Meta(ge=2)])  # an interval needs two
    require("measure_pairs.max_rounds", max_rounds, Annotated[int, Meta(ge=min_rounds)])
    require("measure_pairs.warmup_rounds", warmup_rounds, Annotated[int, Meta(ge=0)])
    now = clock or time.perf_counter
    rng = random.Random(seed)
    started = now()
    warm_ours: list[Sample] = []
    warm_raw: list[Sample] = []
    mine: list[Sample] = []
    theirs: list[Sample] = []

    def one_round(ours_first: bool) -> tuple[Sample, Sample]:
        if ours_first:
            a = ours()
            b = raw()
            return msgspec.structs.replace(a, first=True), b
        b = raw()
        a = ours()
        return a, msgspec.structs.replace(b, first=True)

    for _ in range(warmup_rounds):
        a, b = one_round(rng.random() < 0.5)
        warm_ours.append(a)
        warm_raw.append(b)
    # The budget covers the counted rounds: warm-up can be long (first kernels).
    counted_from = now()
    stopped: Stopped = "max rounds"
    interval: tuple[float, float, float] | None = None  # the bootstrap, once taken for the stop
    ours_first = False
    while len(mine) < max_rounds:
        ours_first = rng.random() < 0.5 if len(mine) % 2 == 0 else not ours_first
        a, b = one_round(ours_first)
        mine.append(a)
        theirs.append(b)
        if on_round is not None:
            on_round(len(mine))
        if len(mine) < min_rounds or len(mine) % 2:
            continue
        if approximate_half_width(mine, theirs, confidence=confidence) <= target:
            point, low, high = ratio_interval(mine, theirs, confidence=confidence, seed=seed)
            if point > 0 and (high - low) / 2 / point <= target:
                stopped = "narrow"
                interval = point, low, high
                break
        # min_rounds bounds this stop too: a row whose rounds are long (one
        # chain in flight) must not end on an interval from two or three.
        if now() - counted_from >= budget_seconds:
            stopped = "budget"
            break
    if interval is None:
        interval = ratio_interval(mine, theirs, confidence=confidence, seed=seed) if len(mine) >= 2 else (0.0, 0.0, float("inf"))
    return _estimate(interval, confidence, stopped, now() - started, (mine, theirs), (warm_ours, warm_raw))


def _estimate(
    interval: tuple[float, float, float],
    confidence: float,
    stopped: Stopped,
    seconds: float,
    counted: tuple[list[Sample], list[Sample]],
    warmup: tuple[list[Sample], list[Sample]],
) -> RatioEstimate:
    point, low, high = interval
    return RatioEstimate(
        ratio=point,
        low=low,
        high=high,
        confidence=confidence,
        rounds=len(counted[0]),
        stopped=stopped,
        seconds=seconds,
        verdict=verdict(low, high),
        ours=counted[0],
        raw=counted[1],
        warmup_ours=warmup[0],
        warmup_raw=warmup[1],
    )


def combine_stacks(estimates: Sequence[RatioEstimate], *, seed: int = 0) -> RatioEstimate:
    """One row's estimate from its measurements on several starts of the
    stack, each :func:`measure_pairs`' answer over samples stamped with
    their start (``Sample.stack``): the ratio pools every round, the
    interval resamples starts and then rounds (:func:`ratio_interval`). It
    stopped "narrow" only if every start did, else for the first other
    reason."""
    if not estimates:
        raise ValueError("combine_stacks needs at least one estimate")
    if len({e.confidence for e in estimates}) != 1:
        raise ValueError("the estimates were taken at different confidences")
    ours = [s for e in estimates for s in e.ours]
    raw = [s for e in estimates for s in e.raw]
    confidence = estimates[0].confidence
    if len(ours) >= 2:
        interval = ratio_interval(ours, raw, confidence=confidence, seed=seed)
    else:
        interval = estimates[0].ratio, estimates[0].low, estimates[0].high
    narrow: Stopped = "narrow"
    stopped = next((e.stopped for e in estimates if e.stopped != "narrow"), narrow)
    warmup = [s for e in estimates for s in e.warmup_ours], [s for e in estimates for s in e.warmup_raw]
    return _estimate(interval, confidence, stopped, sum(e.seconds for e in estimates), (ours, raw), warmup)


def stack_ratios(estimate: RatioEstimate) -> list[float]:
    """The ratio on each start of the stack, in the order they ran (one
    number for a row measured on one start)."""
    starts = sorted({s.stack for s in estimate.ours})
    ratios = []
    for start in starts:
        picks = [i for i, s in enumerate(estimate.ours) if s.stack == start]
        ratios.append(point_ratio([estimate.ours[i] for i in picks], [estimate.raw[i] for i in picks]))
    return ratios


def describe(estimate: RatioEstimate) -> str:
    """One line: the ratio, its interval, the verdict and why it stopped."""
    interval = f"{estimate.ratio:.2f}x [{estimate.low:.2f}, {estimate.high:.2f}]"
    why = {
        "narrow": f"interval within +/-{estimate.half_width:.0%} after {estimate.rounds} rounds",
        "budget": f"time budget spent after {estimate.rounds} rounds (+/-{estimate.half_width:.0%})",
        "max rounds": f"{estimate.rounds} rounds (+/-{estimate.half_width:.0%})",
    }[estimate.stopped]
    return f"{interval} {estimate.verdict}; {why}"
