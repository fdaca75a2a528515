"""Benchmark fixtures, paired measurements with intervals, and a summary
of the ratios each benchmark measured."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min.bench.stats import RatioEstimate, Sample, describe, measure_pairs

from agentfly_min.testing import FakeOpenAIServer, tiny_model

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
WORK = CACHE / "work"


def pytest_configure(config: pytest.Config) -> None:
    import os
    import tempfile

    from agentfly_min.local import cpu_environment

    os.environ.update(cpu_environment(WORK))
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return tiny_model(CACHE)

_RATIOS = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def report_ratio(request: pytest.FixtureRequest) -> "RatioReporter":
    return RatioReporter(request)


class RatioReporter:
    """Records a line for the end-of-run summary (and the benchmark JSON)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(self, line: str) -> None:
        self._request.config.stash.setdefault(_RATIOS, []).append((self._request.node.name, line))


def timed(run: Callable[[], float]) -> Callable[[], Sample]:
    """A side of a pair: ``run`` does one round and returns its work
    (tokens, requests); the sample has its wall time and this process's CPU."""

    def one() -> Sample:
        cpu, start = time.process_time(), time.perf_counter()
        work = run()
        return Sample(work=work, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)

    return one


# For a transport against its raw counterpart: the bar is 0.97x, and an
# interval of +/-5% cannot tell 0.96x from 1.00x. Those rounds are cheap
# enough to buy a narrower one; a row that cannot get there in the budget
# says so.
TRANSPORT_TARGET, TRANSPORT_BUDGET = 0.02, 120.0


def paired(
    benchmark: BenchmarkFixture,
    report: RatioReporter,
    label: str,
    ours: Callable[[], Sample],
    raw: Callable[[], Sample],
    *,
    budget_seconds: float = 60.0,
    min_rounds: int = 5,
    target: float = 0.05,
) -> RatioEstimate:
    """Measure ``ours`` against ``raw`` in paired rounds (blocks of two,
    one in each order; a warm-up round measured and set apart) until the ratio's 95%
    interval is within ``target`` or the budget is spent; pytest-benchmark
    times the whole, and its JSON (``extra_info``) keeps the ratio, the
    interval and every sample."""
    found: list[RatioEstimate] = []

    def run() -> None:
        found.append(measure_pairs(ours, raw, target=target, budget_seconds=budget_seconds, min_rounds=min_rounds))

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    (estimate,) = found
    benchmark.extra_info.update(
        label=label,
        ratio=estimate.ratio,
        ratio_low=estimate.low,
        ratio_high=estimate.high,
        verdict=estimate.verdict,
        rounds=estimate.rounds,
        stopped=estimate.stopped,
        samples=msgspec.to_builtins(estimate),
    )
    report(f"{label}: {describe(estimate)}")
    return estimate


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_RATIOS, [])
    if lines:
        terminalreporter.section("ratios measured in this run")
        for name, line in lines:
            terminalreporter.write_line(f"{name}: {line}")
