"""The bench's workload, statistics, table and chart, on a scripted transport."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import Completion, Output, Request, Usage
from agentfly_min.bench import BenchReport, Environment, RunResult, Workload, render_chart, render_markdown, render_table
from agentfly_min.bench.stats import RatioEstimate, Sample, ratio_interval, verdict
from agentfly_min.bench.workload import OBSERVATION, RunStats, generate_step, run_workload


@pytest.mark.anyio
async def test_workload_runs_every_chain_turn_and_splices_observations(tokenizer: Any) -> None:
    requests: list[Request] = []
    in_flight = peak = 0

    async def generate(request: Request) -> Completion:
        nonlocal in_flight, peak
        requests.append(request)
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.001)
        in_flight -= 1
        ids = tuple(range(100, 100 + (request.max_new_tokens or 0)))
        return Completion(outputs=(Output(text="x", finish_reason="length", token_ids=ids),), usage=Usage(completion_tokens=len(ids)))

    workload = Workload(tasks=3, chains=2, turns=3, new_tokens=5, concurrency=2)
    ticks: list[int] = []
    stats = await run_workload(generate_step(generate, token_level=True), workload, tokenizer, on_chain=lambda: ticks.append(1))
    assert stats.tokens == 3 * 2 * 3 * 5 and stats.trajectories == 6 and len(ticks) == 6
    assert len(stats.turn_latencies) == 18 and peak == 2
    assert all(r.ignore_eos and r.max_new_tokens == 5 for r in requests)
    last_turns = [r for r in requests if len(r.messages) == 5]
    assert last_turns, "third turns carry two assistant turns and two observations"
    for request in last_turns:
        assert [m.role for m in request.messages] == ["user", "assistant", "tool", "assistant", "tool"]
        assert request.messages[2].content == OBSERVATION
        assert request.prompt_ids is not None and request.prompt_ids.count(100) == 2  # both sampled turns are in


def test_latency_quantiles() -> None:
    stats = RunStats(seconds=2.0, tokens=100, trajectories=4, turn_latencies=tuple(i / 100 for i in range(1, 101)))
    assert stats.tokens_per_s == 50 and stats.trajectories_per_s == 2
    assert stats.latency(0.5) == pytest.approx(0.5, abs=0.011)
    assert stats.latency(0.99) == pytest.approx(0.99, abs=0.011)


def test_table_and_chart(tmp_path: Path) -> None:
    ours = [Sample(work=100, seconds=1.0 + i / 10, cpu_seconds=0.1) for i in range(4)]
    raw = [Sample(work=100, seconds=0.9 + i / 10, cpu_seconds=0.1) for i in range(4)]
    ratio, low, high = ratio_interval(ours, raw)
    estimate = RatioEstimate(
        ratio=ratio, low=low, high=high, confidence=0.95, rounds=4, stopped="budget", seconds=9.0,
        verdict=verdict(low, high), ours=ours, raw=raw,
    )  # fmt: skip
    rows = [
        RunResult(transport=t, loop="asyncio", concurrency=c, tokens=100, seconds=1.0, tokens_per_s=100.0 * c,
                  trajectories_per_s=1.0, p50_turn_ms=10.0, p99_turn_ms=20.0 * c, peak_memory_mb=900.0,
                  raw_tokens_per_s=110.0 * c, raw_p99_turn_ms=18.0 * c, ratio_to_raw=ratio, ratio_low=low, ratio_high=high,
                  verdict=estimate.verdict, estimate=estimate, cpu_ms_per_turn=0.5, raw_cpu_ms_per_turn=0.4)
        for t in ("vllm", "client") for c in (1, 4)
    ]  # fmt: skip
    report = BenchReport(
        started_at="2026-11-27T00:00:00+00:00", model="tiny", random_weights=True, workload=Workload(), transports=["vllm", "client"],
        loop="asyncio", concurrency_levels=[1, 4], results=rows,
        environment=Environment(python="3.11", platform="linux", cpu="cpu", cores=2, gpu="none", packages={}),
    )  # fmt: skip
    render_chart(report, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    assert f"{ratio:.2f}x [{low:.2f}, {high:.2f}]" in text and "vllm" in text and "client" in text
    assert "4 (budget)" in text and estimate.verdict in text and "vs raw [95% CI]" in text
    assert msgspec.json.decode(msgspec.json.encode(report), type=BenchReport) == report  # every sample survives the JSON
    markdown = render_markdown(report)
    assert markdown.count("\n| vllm |") == 2 and f"| {ratio:.2f}x [{low:.2f}, {high:.2f}] | {estimate.verdict} | 4 (budget) |" in markdown


def test_a_report_names_the_commit_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentfly_min.bench.report import _commit

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    (tmp_path / "new.txt").write_text("untracked files do not count\n")
    assert _commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _commit(tmp_path) == f"{head}-dirty"
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-such-repo"))
    assert _commit(tmp_path) is None  # not a checkout
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert _commit(tmp_path) is None  # no git at all

    def header(commit: str | None) -> str:
        environment = Environment(python="3.11", platform="linux", cpu="cpu", cores=2, gpu="none", packages={}, commit=commit)
        report = BenchReport(started_at="2026-12-02T00:00:00+00:00", model="tiny", random_weights=True, workload=Workload(),
                             transports=[], loop="trio", concurrency_levels=[1], results=[], environment=environment)  # fmt: skip
        return render_markdown(report).splitlines()[0]

    assert header(None).endswith("(2026-12-02T00:00:00+00:00).")  # older reports render as before
    assert header("0123456789" * 4).endswith("(2026-12-02T00:00:00+00:00, code of commit 0123456).")
    assert header("0123456789" * 4 + "-dirty").endswith(", code of commit 0123456 with local changes).")


def test_the_suites_table_is_rendered_from_pytest_benchmark_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agentfly_min.bench.report import main

    info = {"label": "asyncio: ours vs the bare engine, tokens/s", "ratio": 0.984, "ratio_low": 0.951, "ratio_high": 1.02}
    data = {
        "machine_info": {},
        "datetime": "2026-11-28T01:40:00.123456+00:00",
        "benchmarks": [
            {"fullname": "benchmarks/bench_vllm.py::test_x[asyncio]", "extra_info": info | {"verdict": "no measurable difference", "rounds": 12, "stopped": "narrow"}},
            {"fullname": "benchmarks/bench_loop.py::test_flat", "extra_info": {"peak_mb": 83}},
        ],
    }
    path = tmp_path / "suites.json"
    path.write_text(json.dumps(data))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| bench_vllm | asyncio: ours vs the bare engine, tokens/s | 0.98x [0.95, 1.02] | no measurable difference | 12 (narrow) |" in out
    assert "bench_loop" not in out  # no ratio, no row
    assert out.startswith("2026-11-28 01:40 UTC")
