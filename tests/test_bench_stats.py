"""The bench's statistics: paired rounds in a random order, the bootstrap
interval of the ratio, the verdict, and when it stops adding rounds."""

from __future__ import annotations

import functools
import math
import random
from typing import Any

import msgspec
import pytest

from agentfly_min import ConfigError
from agentfly_min.bench.interval import _student_t_quantile
from agentfly_min.bench.stats import (
    RatioEstimate,
    approximate_half_width,
    Sample,
    combine_stacks,
    describe,
    measure_pairs,
    ratio_interval,
    stack_ratios,
    verdict,
)


def noisy(rate: float, noise: float, rng: random.Random, work: float = 100.0) -> Sample:
    return Sample(work=work, seconds=work / (rate * (1 + rng.uniform(-noise, noise))))


def test_the_interval_holds_the_true_ratio_and_shrinks_with_rounds() -> None:
    rng = random.Random(1)
    few = [noisy(120, 0.2, rng) for _ in range(5)], [noisy(100, 0.2, rng) for _ in range(5)]
    many = [noisy(120, 0.2, rng) for _ in range(80)], [noisy(100, 0.2, rng) for _ in range(80)]
    point_few, low_few, high_few = ratio_interval(*few)
    point, low, high = ratio_interval(*many)
    assert low < 1.2 < high and low_few < 1.2 < high_few
    assert high - low < (high_few - low_few) / 2
    assert point == pytest.approx(1.2, rel=0.05)


@pytest.mark.parametrize(
    ("df", "table"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (19, 2.093), (100, 1.984)]
)
def test_the_t_quantile_matches_the_tables(df: int, table: float) -> None:
    assert _student_t_quantile(0.975, df) == pytest.approx(table, abs=0.004)


def test_the_interval_over_five_rounds_holds_the_truth_about_as_often_as_it_says() -> None:
    # The plain percentile bootstrap held it 85% of the time here, not 95%.
    rng = random.Random(7)

    def side(rate: float) -> Sample:
        return Sample(work=100, seconds=100 / (rate * math.exp(rng.gauss(0, 0.15))))

    trials = 300
    held = 0
    for _ in range(trials):
        _, low, high = ratio_interval([side(95) for _ in range(5)], [side(100) for _ in range(5)], resamples=1000)
        held += low <= 0.95 <= high
    assert held / trials >= 0.89


def test_the_ratio_pools_work_and_time_over_rounds() -> None:
    ours = [Sample(work=100, seconds=1.0), Sample(work=100, seconds=3.0)]
    raw = [Sample(work=100, seconds=2.0), Sample(work=100, seconds=2.0)]
    point, _, _ = ratio_interval(ours, raw)
    assert point == pytest.approx(1.0)  # 200 in 4 s both ways, not the mean of 2.0 and 0.67


def test_the_verdict_says_no_difference_when_the_interval_holds_one() -> None:
    assert verdict(0.97, 1.02) == "no measurable difference"
    assert verdict(1.01, 1.08) == "faster"
    assert verdict(0.80, 0.95) == "slower"


def test_rounds_stop_when_the_interval_is_narrow() -> None:
    rng = random.Random(2)
    order: list[str] = []

    def ours() -> Sample:
        order.append("ours")
        return noisy(103, 0.02, rng)

    def raw() -> Sample:
        order.append("raw")
        return noisy(100, 0.02, rng)

    estimate = measure_pairs(ours, raw, target=0.05, min_rounds=5, budget_seconds=1e9, warmup_rounds=2)
    assert estimate.stopped == "narrow" and estimate.rounds == 6  # a block of two rounds is not cut in half
    assert estimate.half_width <= 0.05
    assert len(estimate.warmup_ours) == len(estimate.warmup_raw) == 2  # measured, kept apart
    assert len(order) == 2 * (2 + 6)
    assert sum(s.first for s in estimate.ours) + sum(s.first for s in estimate.raw) == estimate.rounds
    counted = [s.first for s in estimate.ours]
    assert all(counted[i] != counted[i + 1] for i in range(0, len(counted), 2))  # one round in each order per block


def test_the_order_within_blocks_is_drawn() -> None:
    rng = random.Random(5)
    estimate = measure_pairs(
        lambda: noisy(100, 0.05, rng), lambda: noisy(100, 0.05, rng), min_rounds=40, max_rounds=40, target=0.0, warmup_rounds=0
    )
    leads = [estimate.ours[i].first for i in range(0, estimate.rounds, 2)]
    assert 5 < sum(leads) < 15  # ours led about half of the 20 blocks, not all or none


def _first_pays(penalty: float, rate_ours: float, rng: random.Random) -> tuple[list[Sample], list[Sample]]:
    """Rounds where whichever side runs first is ``penalty`` slower, the
    order drawn per round (as the bench drew it before blocks)."""
    ours, raw = [], []
    for _ in range(60):
        ours_first = rng.random() < 0.5
        a = noisy(rate_ours * (1 - penalty if ours_first else 1), 0.01, rng)
        b = noisy(100 * (1 if ours_first else 1 - penalty), 0.01, rng)
        ours.append(Sample(work=a.work, seconds=a.seconds, first=ours_first))
        raw.append(Sample(work=b.work, seconds=b.seconds, first=not ours_first))
    return ours, raw


def test_a_penalty_for_running_first_does_not_widen_the_interval() -> None:
    """Resampling within each order: the penalty cancels in the interval
    instead of showing up as round-to-round noise."""
    rng = random.Random(6)
    ours, raw = _first_pays(0.08, 100, rng)
    point, low, high = ratio_interval(ours, raw)
    assert low < 1.0 < high
    assert (high - low) / 2 < 0.02  # the 1% noise, not the 8% penalty
    unordered = [Sample(work=s.work, seconds=s.seconds) for s in ours]  # the same rounds, order forgotten
    _, low_all, high_all = ratio_interval(unordered, raw)
    assert high_all - low_all > 2 * (high - low)


def test_blocks_keep_a_penalty_for_running_first_out_of_the_ratio() -> None:
    rng = random.Random(8)
    clock = [0.0]

    def side(rate: float) -> Sample:
        fresh = not clock[0] % 2  # first in its round
        clock[0] += 1
        return noisy(rate * (0.9 if fresh else 1.0), 0.005, rng)

    estimate = measure_pairs(lambda: side(100), lambda: side(100), min_rounds=30, max_rounds=30, target=0.0, warmup_rounds=0)
    assert sum(s.first for s in estimate.ours) == 15  # as often first as raw
    assert estimate.ratio == pytest.approx(1.0, abs=0.005)
    assert estimate.verdict == "no measurable difference"


def test_the_quick_width_between_rounds_agrees_with_the_bootstrap() -> None:
    rng = random.Random(9)
    for noise, rounds in [(0.02, 10), (0.1, 30), (0.3, 80)]:
        ours = [msgspec.structs.replace(noisy(97, noise, rng), first=i % 2 == 0) for i in range(rounds)]
        raw = [noisy(100, noise, rng) for _ in range(rounds)]
        point, low, high = ratio_interval(ours, raw)
        quick = approximate_half_width(ours, raw)
        assert quick == pytest.approx((high - low) / 2 / point, rel=0.3)
    assert approximate_half_width(ours[:3], raw[:3]) == math.inf  # an order with one round has no spread



def test_rounds_stop_when_the_budget_is_spent_and_say_so() -> None:
    rng = random.Random(3)
    now = [0.0]

    def clock() -> float:
        return now[0]

    def side(rate: float) -> Sample:
        now[0] += 1.0
        return noisy(rate, 0.6, rng)

    estimate = measure_pairs(lambda: side(100), lambda: side(100), target=0.01, budget_seconds=20, clock=clock, warmup_rounds=0)
    assert estimate.stopped == "budget" and estimate.rounds == 10
    assert estimate.verdict == "no measurable difference"
    assert "time budget spent after 10 rounds" in describe(estimate)


def test_the_budget_does_not_end_a_row_before_min_rounds() -> None:
    now = [0.0]

    def side() -> Sample:
        now[0] += 30.0  # long rounds: the budget is spent after the second
        return Sample(work=100 + int(now[0]) % 7, seconds=1.0, cpu_seconds=0.1)

    estimate = measure_pairs(side, side, target=0.0, budget_seconds=60, min_rounds=8, clock=lambda: now[0], warmup_rounds=0)
    assert estimate.stopped == "budget" and estimate.rounds == 8


def test_the_estimate_keeps_every_sample_for_recomputing() -> None:
    rng = random.Random(4)
    estimate = measure_pairs(lambda: noisy(90, 0.05, rng), lambda: noisy(100, 0.05, rng), min_rounds=3, max_rounds=6, target=0.0)
    assert estimate.stopped == "max rounds" and estimate.verdict == "slower"
    again = msgspec.json.decode(msgspec.json.encode(estimate), type=RatioEstimate)
    assert ratio_interval(again.ours, again.raw) == (estimate.ratio, estimate.low, estimate.high)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"min_rounds": 1}, "measure_pairs.min_rounds"),
        ({"min_rounds": 5, "max_rounds": 4}, "measure_pairs.max_rounds"),
        ({"target": 1.5}, "measure_pairs.target"),
        ({"budget_seconds": 0.0}, "measure_pairs.budget_seconds"),
        ({"warmup_rounds": -1}, "measure_pairs.warmup_rounds"),
    ],
)
def test_settings_that_cannot_give_an_interval_are_refused(settings: dict[str, Any], field: str) -> None:
    ran: list[int] = []

    def side() -> Sample:
        ran.append(1)
        return Sample(work=1, seconds=1)

    with pytest.raises(ConfigError, match=field):
        measure_pairs(side, side, **settings)
    assert ran == []  # refused before anything ran


def _starts(rng: random.Random, *, starts: int, rounds: int, spread: float, stamp: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Rounds of a true ratio of 1.0 on ``starts`` starts whose own ratio is
    off by a factor drawn per start (sd ``spread`` in the log), the round
    noise about as large as the verl rows' (7% sd of a round's ratio)."""
    ours: list[Sample] = []
    raw: list[Sample] = []
    for start in range(starts):
        effect = math.exp(rng.gauss(0, spread))
        for i in range(rounds):
            stack = start if stamp else 0
            ours.append(Sample(work=100, seconds=3.5 * effect * math.exp(rng.gauss(0, 0.05)), first=i % 2 == 0, stack=stack))
            raw.append(Sample(work=100, seconds=3.5 * math.exp(rng.gauss(0, 0.05)), stack=stack))
    return ours, raw


def test_starts_that_differ_widen_the_interval_to_hold_the_truth() -> None:
    # The verl rows read 0.96x [0.94, 0.98] on one start and 1.00x [0.98, 1.02]
    # on the next: rounds of one start alone say too little.
    rng = random.Random(11)
    trials = 150
    held_rounds = held_starts = 0
    for trial in range(trials):
        ours, raw = _starts(rng, starts=3, rounds=16, spread=0.03)
        _, low, high = ratio_interval(ours, raw, resamples=500, seed=trial)
        held_starts += low <= 1.0 <= high
        flat = [msgspec.structs.replace(s, stack=0) for s in ours], [msgspec.structs.replace(s, stack=0) for s in raw]
        _, low, high = ratio_interval(*flat, resamples=500, seed=trial)
        held_rounds += low <= 1.0 <= high
    assert held_rounds / trials < 0.75  # the rounds' interval misses the truth about every third time
    assert held_starts / trials >= 0.85


def test_starts_that_agree_pay_for_their_few_degrees_of_freedom() -> None:
    """Three starts are three units: however many rounds each ran, the
    interval reads Student's t with 2 degrees of freedom (4.30 where the
    rounds alone would read 2.01). That is the price of
    saying what another start would show; a narrow interval needs more
    starts, not more rounds."""
    rng = random.Random(12)
    widths = []
    for trial in range(40):
        ours, raw = _starts(rng, starts=3, rounds=16, spread=0.0)
        _, low, high = ratio_interval(ours, raw, resamples=500, seed=trial)
        _, flat_low, flat_high = ratio_interval(
            [msgspec.structs.replace(s, stack=0) for s in ours], [msgspec.structs.replace(s, stack=0) for s in raw], resamples=500, seed=trial
        )
        widths.append((high - low) / (flat_high - flat_low))
    # The same spread read with 2 degrees of freedom instead of the rounds'
    # (three starts estimate it less well than 48 rounds: about 0.89 of it).
    stretch = _student_t_quantile(0.975, 2) / _student_t_quantile(0.975, 46)
    assert 0.7 * stretch < sum(widths) / len(widths) < 1.2 * stretch


def _estimate(ours: list[Sample], raw: list[Sample], stopped: str = "narrow") -> RatioEstimate:
    point, low, high = ratio_interval(ours, raw)
    return RatioEstimate(
        ratio=point, low=low, high=high, confidence=0.95, rounds=len(ours), stopped=stopped,  # type: ignore[arg-type]
        seconds=1.0, verdict=verdict(low, high), ours=ours, raw=raw,
        warmup_ours=[Sample(work=1, seconds=1, stack=ours[0].stack)], warmup_raw=[Sample(work=1, seconds=1, stack=ours[0].stack)],
    )  # fmt: skip


def test_a_rows_starts_combine_into_one_estimate() -> None:
    def start(stack: int, ours_seconds: float) -> tuple[list[Sample], list[Sample]]:
        ours = [Sample(work=100, seconds=ours_seconds * (1 + 0.01 * i), first=i % 2 == 0, stack=stack) for i in range(6)]
        raw = [Sample(work=100, seconds=1.0 * (1 + 0.01 * i), stack=stack) for i in range(6)]
        return ours, raw

    slow, fast = start(0, 1.0 / 0.9), start(1, 1.0 / 1.1)
    combined = combine_stacks([_estimate(*slow), _estimate(*fast, stopped="budget")])
    assert stack_ratios(combined) == pytest.approx([0.9, 1.1])
    assert combined.rounds == 12 and combined.ours == slow[0] + fast[0] and combined.raw == slow[1] + fast[1]
    assert combined.ratio == pytest.approx(ratio_interval(slow[0] + fast[0], slow[1] + fast[1])[0])
    assert combined.low < 0.95 and combined.high > 1.05  # the starts disagree by 20%: so does the interval
    assert combined.stopped == "budget" and combined.verdict == "no measurable difference" and combined.seconds == 2.0
    assert len(combined.warmup_ours) == len(combined.warmup_raw) == 2
    alone = _estimate(*slow)
    assert stack_ratios(alone) == pytest.approx([0.9]) and combine_stacks([alone]).stopped == "narrow"
    assert combine_stacks([alone]).ratio == pytest.approx(alone.ratio)
    with pytest.raises(ValueError, match="at least one"):
        combine_stacks([])


def test_an_order_with_one_round_does_not_make_the_interval_a_point() -> None:
    # Two rounds, one in each order: each order's only round always draws
    # itself, which read 0.92x [0.92, 0.92] after a start's first two rounds.
    ours = [Sample(work=100, seconds=1.0, first=True), Sample(work=100, seconds=1.2)]
    raw = [Sample(work=100, seconds=1.1), Sample(work=100, seconds=1.0, first=True)]
    point, low, high = ratio_interval(ours, raw)
    assert low < point < high and high / low > 1.2
    # Three rounds, the lone one in its order: still resampled with the rest.
    ours.append(Sample(work=100, seconds=1.1))
    raw.append(Sample(work=100, seconds=1.0, first=True))
    point, low, high = ratio_interval(ours, raw)
    assert low < point < high


def _coverage(rng: random.Random, *, starts: int, rounds: int, start_sd: float, trials: int) -> float:
    """How often the bench's real path (``measure_pairs`` per start, its
    blocks of two orders drawn as it draws them, a 2% cost for running
    first; ``combine_stacks`` over the starts) holds the true ratio, 1.0,
    when each start's own ratio is off by a factor drawn per start (sd
    ``start_sd`` in the log) and a round's ratio has a 7% sd."""
    held = 0
    for trial in range(trials):
        estimates = []
        for stack in range(starts):
            effect = math.exp(rng.gauss(0, start_sd))
            calls = [0]

            def timed(base: float, stack: int = stack) -> Sample:
                calls[0] += 1
                first = 1.02 if calls[0] % 2 == 1 else 1.0  # whichever side runs first in its round
                return Sample(work=100, seconds=base * first * math.exp(rng.gauss(0, 0.05)), stack=stack)

            clock = iter(range(10**9))
            estimates.append(
                measure_pairs(
                    functools.partial(timed, 3.5 * effect), functools.partial(timed, 3.5),
                    target=0.0, budget_seconds=1e9, min_rounds=rounds, max_rounds=rounds, warmup_rounds=0,
                    seed=trial * 31 + stack, clock=lambda: float(next(clock)),
                )  # fmt: skip
            )
        combined = combine_stacks(estimates, seed=trial)
        held += combined.low <= 1.0 <= combined.high
    return held / trials


@pytest.mark.parametrize(("starts", "rounds", "start_sd", "trials"), [(3, 12, 0.08, 300), (4, 12, 0.08, 300), (1, 20, 0.0, 300)])
def test_the_bench_path_holds_the_truth_95_times_in_100(starts: int, rounds: int, start_sd: float, trials: int) -> None:
    """Through the estimator the bench uses, at settings its data shows.
    Before the degrees of freedom were those of the starts (K - 1) and of
    the orders (n/2 - 1 each), three starts of 12 rounds (the bench's
    default starts) held it 88% of the time here, four 87 to 92%. Within
    three standard errors of the simulation of 95%."""
    coverage = _coverage(random.Random(starts * 1000 + rounds), starts=starts, rounds=rounds, start_sd=start_sd, trials=trials)
    error = math.sqrt(0.95 * 0.05 / trials)
    assert 0.95 - 3 * error <= coverage <= min(0.95 + 3 * error, 1.0), coverage
