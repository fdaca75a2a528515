"""The bench's runner over stand-in stacks: starts go round the transports,
each start runs every row for its share, a row combines its starts, and a
start that fails keeps what the others measured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agentfly_min import ConfigError
from agentfly_min.bench import BenchOptions, BenchReport, HostSteadiness, Workload, render_markdown
from agentfly_min.bench import runner, stacks
from agentfly_min.bench.runner import split_rounds
from agentfly_min.bench.stats import stack_ratios
from agentfly_min.bench.workload import RunStats

Runner = Callable[[Workload, Callable[[], None]], RunStats]


def _stats(workload: Workload, seconds: float) -> RunStats:
    tokens = workload.tasks * workload.chains * workload.turns * workload.new_tokens
    return RunStats(seconds=seconds, tokens=tokens, trajectories=workload.tasks * workload.chains, turn_latencies=(0.1, 0.2))


def _options(tiny_model_path: Path, tmp_path: Path, **settings: Any) -> BenchOptions:
    fields: dict[str, Any] = {
        "model": str(tiny_model_path), "random_weights": True, "transports": ("vllm", "verl"),
        "workload": Workload(tasks=2, chains=1, turns=1, new_tokens=4), "concurrency_levels": (1, 4),
        "loop": "asyncio", "work_dir": str(tmp_path), "target": 0.05, "min_rounds": 4, "max_rounds": 8, "stacks": 2,
    }  # fmt: skip
    fields.update(settings)
    return BenchOptions(**fields)


def _run(options: BenchOptions, monkeypatch: pytest.MonkeyPatch, starters: dict[str, Any]) -> tuple[BenchReport, dict[str, str]]:
    for name, starter in starters.items():
        monkeypatch.setitem(stacks.STARTERS, name, starter)
    monkeypatch.setattr(runner, "probe_host", lambda: HostSteadiness(seconds=(0.1, 0.1, 0.1)))
    reports: list[BenchReport] = []
    failures: dict[str, str] = {}
    runner.run_bench(options, on_result=reports.append, progress=lambda label, total: lambda: None, failures=failures)
    return reports[-1], failures


def test_each_stack_is_started_in_turn_and_each_row_combines_its_starts(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    def starter(name: str, ratio_by_start: list[float]) -> Any:
        @contextmanager
        def start(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
            number = sum(1 for e in events if e == f"start {name}")
            events.append(f"start {name}")
            ratio = ratio_by_start[number]
            try:
                # ours at `ratio` of raw's speed on this start, both a little noisy
                seconds = iter([1.0, 1.01, 0.99, 1.0] * 50)
                yield (lambda w, tick: _stats(w, next(seconds) / ratio), lambda w, tick: _stats(w, next(seconds)))
            finally:
                events.append(f"stop {name}")

        return start

    options = _options(tiny_model_path, tmp_path)
    report, failures = _run(options, monkeypatch, {"vllm": starter("vllm", [0.9, 1.1]), "verl": starter("verl", [1.0, 1.0])})
    assert failures == {}
    assert events == ["start vllm", "stop vllm", "start verl", "stop verl"] * 2  # round the transports, every start closed
    assert report.stacks == 2 and [(r.transport, r.concurrency) for r in report.results] == [("vllm", 1), ("vllm", 4), ("verl", 1), ("verl", 4)]
    budget, least, most = options.share()
    assert (budget, least, most) == (options.budget_seconds / 2, 2, 4) == (15.0, 2, 4)
    for row in report.results:
        starts = sorted({s.stack for s in row.estimate.ours})
        assert starts == [0, 1] and len(row.estimate.warmup_ours) == 2  # a warm-up round on each start
        per_start = [sum(1 for s in row.estimate.ours if s.stack == k) for k in starts]
        assert all(least <= n <= most for n in per_start) and row.estimate.rounds == sum(per_start)
        assert sum(s.work for s in row.estimate.ours) == row.tokens  # the samples recompute the row
    vllm = report.results[0]
    assert stack_ratios(vllm.estimate) == pytest.approx([0.9, 1.1], rel=0.02)
    assert vllm.ratio_low < 0.95 and vllm.ratio_high > 1.05 and vllm.verdict == "no measurable difference"
    verl = report.results[2]
    assert verl.ratio_to_raw == pytest.approx(1.0, rel=0.02) and verl.ratio_high - verl.ratio_low < 0.1
    markdown = render_markdown(report)
    assert "each stack started 2 times, the interval resampling starts and rounds" in markdown
    assert "| on each start |" in markdown and "| 0.90 / 1.10 |" in markdown


def test_each_row_and_start_draws_its_own_orders_reproducibly(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def orders() -> list[tuple[str, ...]]:
        # per (start, level): the sides in the order they ran
        runs: dict[tuple[int, int], list[str]] = {}
        starts = [0]

        @contextmanager
        def start(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
            number = starts[0]
            starts[0] += 1

            def side(name: str) -> Runner:
                def run(workload: Workload, tick: Callable[[], None]) -> RunStats:
                    runs.setdefault((number, workload.concurrency), []).append(name)
                    return _stats(workload, 1.0)

                return run

            yield side("ours"), side("raw")

        _run(_options(tiny_model_path, tmp_path, transports=("vllm",)), monkeypatch, {"vllm": start})
        return [tuple(sides) for sides in runs.values()]

    first = orders()
    assert len(first) == 4  # 2 levels x 2 starts
    assert len(set(first)) > 1
    assert orders() == first


def test_a_start_that_fails_keeps_what_the_others_measured(tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[int] = []

    @contextmanager
    def flaky(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
        starts.append(1)
        if len(starts) == 2:
            raise RuntimeError("the engine did not come up")
        yield (lambda w, tick: _stats(w, 1.0), lambda w, tick: _stats(w, 1.0))

    report, failures = _run(_options(tiny_model_path, tmp_path, transports=("vllm",), stacks=3, max_rounds=9), monkeypatch, {"vllm": flaky})
    assert len(starts) == 2  # not started again once it failed
    assert failures == {"vllm": "RuntimeError: the engine did not come up"}
    assert [r.concurrency for r in report.results] == [1, 4]
    assert all({s.stack for s in r.estimate.ours} == {0} for r in report.results)
    assert "vllm did not run: RuntimeError: the engine did not come up" in render_markdown(report)


def test_one_start_renders_as_before(tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def steady(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
        yield (lambda w, tick: _stats(w, 1.0), lambda w, tick: _stats(w, 1.0))

    report, _ = _run(_options(tiny_model_path, tmp_path, transports=("vllm",), stacks=1), monkeypatch, {"vllm": steady})
    markdown = render_markdown(report)
    assert "on each start" not in markdown and "started" not in markdown
    assert all(r.estimate.rounds == 4 and r.estimate.stopped == "narrow" for r in report.results)


@pytest.mark.parametrize(
    ("least", "most", "stacks", "split"), [(8, 80, 4, (2, 20)), (5, 50, 3, (2, 16)), (9, 9, 3, (3, 3)), (2, 2, 1, (2, 2))]
)
def test_rounds_split_among_starts_keep_within_the_rows_bounds(least: int, most: int, stacks: int, split: tuple[int, int]) -> None:
    assert split_rounds(least, most, stacks) == split
    assert split[0] * stacks >= min(least, most) and split[1] * stacks <= most


def test_a_split_that_cannot_be_met_is_refused_when_built(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BenchOptions.stacks: 3 starts split a row's rounds: each needs at least 2, but at most 5 rounds a row leave 1 each; allow 6"):
        _options(tiny_model_path, tmp_path, stacks=3, min_rounds=2, max_rounds=5)
    with pytest.raises(ConfigError, match="BenchOptions.stacks"):
        _options(tiny_model_path, tmp_path, stacks=0)
