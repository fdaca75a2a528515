"""The bench's statistics: paired rounds in a random order, the bootstrap
interval of the ratio, the verdict, and when it stops adding rounds."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from agentfly_min import ConfigError
from agentfly_min.bench.stats import (
    RatioEstimate,
    Sample,
    _student_t_quantile,
    describe,
    expanded_tail,
    measure_pairs,
    ratio_interval,
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


def test_the_expanded_tail_widens_few_rounds_and_fades_with_many() -> None:
    tails = [expanded_tail(n, 0.95) for n in (2, 3, 5, 10, 20, 50, 1000)]
    assert tails == sorted(tails)  # fewer rounds, further out in the tails
    assert tails[2] < 0.005  # 5 rounds: read near the 0.1% and 99.9% draws, not 2.5% and 97.5%
    assert tails[-1] == pytest.approx(0.025, abs=0.0005)
    with pytest.raises(ConfigError, match="expanded_tail.rounds"):
        expanded_tail(1, 0.95)


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
    assert estimate.stopped == "narrow" and estimate.rounds == 5
    assert estimate.half_width <= 0.05
    assert len(estimate.warmup_ours) == len(estimate.warmup_raw) == 2  # measured, kept apart
    assert len(order) == 2 * (2 + 5)
    firsts = [order[i] for i in range(0, len(order), 2)]
    assert set(firsts) == {"ours", "raw"}  # the order is drawn per round
    assert sum(s.first for s in estimate.ours) + sum(s.first for s in estimate.raw) == estimate.rounds


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
    import msgspec

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
