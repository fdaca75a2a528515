"""The interval of a ratio measured in paired rounds (see ``stats``).

A plain percentile bootstrap over a handful of rounds is too narrow (over 5
rounds its "95%" interval held the truth 85% of the time in a simulation
here: it uses normal quantiles and the spread of the sample as if they were
known). So the interval is *expanded* (after T. Hesterberg, "What Teachers
Should Know About the Bootstrap", The American Statistician 69(4), 2015):
the bootstrap's 2.5% and 97.5% draws, each one's distance from the ratio
(in the log) stretched from the normal quantile to Student's t, and by
sqrt(n / (n - 1)) for a bootstrap over n units, which sees (n - 1) / n of
their variance. What counts as a unit, and how many degrees of freedom the
spread has, follows how the rounds were drawn: with one start, each order
is resampled apart, so n is an order's rounds and the degrees of freedom
are the two orders' (n/2 - 1 each).

Rounds on one start of an engine or server share its state, and that
state moves the ratio: on this project's verl stack one run read 0.96x
[0.94, 0.98] and the next, on the same code, 1.00x [0.98, 1.02], so an
interval from one start's rounds is too narrow for what a reader will see
on another. The bench therefore starts each stack several times
(``Sample.stack``), and the interval resamples starts: K starts are K units
with K - 1 degrees of freedom, however many rounds each ran. (Reading
Student's t with the rounds' degrees of freedom, as this module did before,
held the truth 87% of the time at four starts of 12 rounds whose own ratios
differ by 8%; drawing rounds again within the drawn starts counted their
noise twice, 97%. Both the fixed path and these settings are simulated
through ``measure_pairs`` and ``combine_stacks`` in
``tests/test_bench_stats.py``.) The price is width: with three starts the
interval reads t with 2 degrees of freedom, 4.30 where 48 rounds would read
2.01, so a narrow interval wants more starts, not more rounds.

Between rounds only a linear-time estimate of the interval's width (the
delta method) is taken; the bootstrap, which costs thousands of passes
over the rounds, runs when that estimate says narrow, and at the end. Run
after every round, it kept the engine idle for a fifth of a second between
rounds once there were a hundred of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal, TypeAlias

import msgspec


__all__ = ["Sample", "Verdict", "approximate_half_width", "point_ratio", "ratio_interval", "verdict"]

Verdict: TypeAlias = Literal["faster", "slower", "no measurable difference"]


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One timed run: ``work`` units (tokens, requests, turns) in
    ``seconds``, and the CPU seconds this process spent in it; ``first``
    says whether it ran first in its round; ``stack`` numbers the start of
    the engine or server it ran on (rounds on one start share its state)."""

    work: float
    seconds: float
    cpu_seconds: float = 0.0
    first: bool = False
    stack: int = 0

    @property
    def rate(self) -> float:
        return self.work / self.seconds if self.seconds > 0 else 0.0


class _Columns:
    """The samples' work and seconds as flat lists, for sums over picks."""

    def __init__(self, ours: Sequence[Sample], raw: Sequence[Sample]) -> None:
        self.ours_work = [s.work for s in ours]
        self.ours_seconds = [s.seconds for s in ours]
        self.raw_work = [s.work for s in raw]
        self.raw_seconds = [s.seconds for s in raw]
        first = [i for i, s in enumerate(ours) if s.first]
        second = [i for i, s in enumerate(ours) if not s.first]
        self.first = frozenset(first)
        # Rounds with ours first, and the others: resampled apart, each keeping its count.
        self.strata = [group for group in (first, second) if group]
        # The same split within each start of the stack, for the hierarchical draw.
        self.stacks = {
            stack: [[i for i in group if ours[i].stack == stack] for group in self.strata]
            for stack in sorted({s.stack for s in ours})
        }

    def pooled_ratio(self, picks: Sequence[int]) -> float:
        # Rates pooled over the rounds (total work over total time), not a mean
        # of per-round ratios, which a single short round could dominate.
        ours_seconds = sum(map(self.ours_seconds.__getitem__, picks))
        raw_seconds = sum(map(self.raw_seconds.__getitem__, picks))
        raw_work = sum(map(self.raw_work.__getitem__, picks))
        if ours_seconds <= 0 or raw_seconds <= 0 or raw_work <= 0:
            return 0.0
        return (sum(map(self.ours_work.__getitem__, picks)) / ours_seconds) / (raw_work / raw_seconds)

    def ratio(self, picks: Sequence[Sequence[int]]) -> float:
        """The ratio over ``picks``, one list of rounds per order: the
        geometric mean of the orders' pooled ratios, so that a penalty for
        running first cancels however unequally often each side led."""
        product = 1.0
        for group in picks:
            product *= self.pooled_ratio(group)
        return product ** (1 / len(picks)) if product > 0 else 0.0


def point_ratio(ours: Sequence[Sample], raw: Sequence[Sample]) -> float:
    """The ratio of ``ours`` over ``raw`` without its interval (as
    :func:`ratio_interval` reads it)."""
    columns = _Columns(ours, raw)
    return columns.ratio(columns.strata)


def _student_t_quantile(p: float, df: int) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, else the
    Cornish-Fisher expansion around the normal one (Abramowitz & Stegun
    26.7.5; within 0.004 of the tables from 3 degrees of freedom on).
    Hand-written: the alternative is SciPy, a large dependency for six lines."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def ratio_interval(
    ours: Sequence[Sample], raw: Sequence[Sample], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The ratio of ``ours`` over ``raw`` (paired by round; work and time
    pooled over the rounds of each order, ``Sample.first`` of ``ours``, and
    the orders' ratios averaged geometrically) and its expanded percentile
    bootstrap interval at ``confidence``, resampling rounds within each
    order; with rounds from more than one start (``Sample.stack`` of
    ``ours``), starts, with the starts' degrees of freedom (see the
    module's text)."""
    if len(ours) != len(raw) or not ours:
        raise ValueError("ours and raw need the same number of rounds, at least one")
    rounds = len(ours)
    columns = _Columns(ours, raw)
    strata = columns.strata
    point = columns.ratio(strata)
    if rounds == 1:
        return point, 0.0, float("inf")
    rng = random.Random(seed)
    starts = list(columns.stacks.values())
    if len(starts) == 1:
        draws = sorted(columns.ratio(_within(columns, strata, rng)) for _ in range(resamples))
        sizes = [len(group) for group in strata]
        if min(sizes) >= 2:
            # Each order is resampled apart: its bootstrap variance is short
            # by (m - 1) / m for its m rounds, and the orders' estimates of
            # variance carry m - 1 degrees of freedom each.
            units, df = min(sizes), sum(size - 1 for size in sizes)
        else:  # an order of one round: the rounds are resampled together
            units, df = rounds, rounds - 1
    else:
        # Starts are the top units: K of them, K - 1 degrees of freedom,
        # however many rounds each ran.
        draws = sorted(_hierarchical_draw(columns, starts, rng) for _ in range(resamples))
        units, df = len(starts), len(starts) - 1
    if point <= 0 or draws[0] <= 0:
        return point, 0.0, float("inf")
    low, high = _expanded(point, draws, units, df, confidence)
    return point, low, high


def _expanded(point: float, draws: Sequence[float], units: int, df: int, confidence: float) -> tuple[float, float]:
    """The percentile interval of ``draws`` (sorted) with each side's
    distance from ``point`` (in the log) stretched from the normal quantile
    to Student's t with ``df`` degrees of freedom, and by sqrt(n / (n - 1))
    for a bootstrap over ``units`` units, which sees (n - 1) / n of their
    variance. The tails are read at 2.5% and 97.5% (at 95%), where 2,000
    draws place them well, and stretched, rather than read at the far
    levels Hesterberg's expansion would name for few units (0.01% for four
    starts: the smallest of the draws)."""
    count = len(draws)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    stretch = math.sqrt(units / (units - 1)) * _student_t_quantile(0.5 + confidence / 2, df) / z
    tail = (1.0 - confidence) / 2
    low = draws[math.floor(tail * (count - 1))]
    high = draws[math.ceil((1.0 - tail) * (count - 1))]
    return point * (low / point) ** stretch, point * (high / point) ** stretch


def _within(columns: _Columns, groups: Sequence[Sequence[int]], rng: random.Random) -> list[list[int]]:
    """One draw of a start's rounds, one list per order: each order's
    rounds resampled apart, or, when an order has a single round (whose
    draw is always itself, so its noise would not show), all of them
    together, split by order after."""
    present = [group for group in groups if group]
    if all(len(group) >= 2 for group in present):
        return [rng.choices(group, k=len(group)) for group in present]
    rounds = [i for group in present for i in group]
    drawn = rng.choices(rounds, k=len(rounds))
    first = columns.first
    return [pick for pick in ([i for i in drawn if i in first], [i for i in drawn if i not in first]) if pick]


def _hierarchical_draw(columns: _Columns, starts: list[list[list[int]]], rng: random.Random) -> float:
    picks: list[list[int]] = [[], []]
    # Starts only: their ratios already carry their rounds' noise, and
    # drawing rounds again inside each start counted it twice (a 95%
    # interval held the truth 97% of the time).
    for start in rng.choices(starts, k=len(starts)):
        for i in (i for group in start for i in group):
            picks[0 if i in columns.first else 1].append(i)
    return columns.ratio([pick for pick in picks if pick])


def approximate_half_width(ours: Sequence[Sample], raw: Sequence[Sample], *, confidence: float = 0.95) -> float:
    """The delta method's estimate of the interval's half-width over the
    ratio, in one pass (``inf`` while an order has fewer than two rounds):
    the log of an order's pooled ratio moves with each round's share of its
    four sums, and the spread of those shares is what is summed here."""
    columns = _Columns(ours, raw)
    if len(ours) < 3 or any(len(group) < 2 for group in columns.strata):
        return float("inf")
    variance = 0.0
    for group in columns.strata:
        sums = [sum(c[i] for i in group) for c in (columns.ours_work, columns.ours_seconds, columns.raw_work, columns.raw_seconds)]
        if min(sums) <= 0:
            return float("inf")
        ow, os_, rw, rs = sums
        shares = [
            columns.ours_work[i] / ow - columns.ours_seconds[i] / os_ - columns.raw_work[i] / rw + columns.raw_seconds[i] / rs
            for i in group
        ]
        mean = sum(shares) / len(shares)
        variance += sum((x - mean) ** 2 for x in shares) * len(shares) / (len(shares) - 1)
    variance /= len(columns.strata) ** 2  # the orders' logs are averaged
    t = _student_t_quantile(0.5 + confidence / 2, sum(len(group) - 1 for group in columns.strata))
    return math.expm1(t * math.sqrt(variance))


def verdict(low: float, high: float) -> Verdict:
    """"no measurable difference" when the interval holds 1.0."""
    if low > 1.0:
        return "faster"
    if high < 1.0:
        return "slower"
    return "no measurable difference"


