"""The agent loop's own cost, with a transport that costs nothing.

A no-op transport answers every first turn with a Hermes tool call and every
second turn with an answer; the tool is a trivial sync function declared
cheap (``@tool(blocking=False)``). What is left is the loop: records,
parsing, tool dispatch, bookkeeping, the trajectory.

- 1,000 chains in flight, on asyncio and trio: turns/s and CPU per turn of
  ``rollout`` against a hand-rolled loop doing the same work with dicts, a
  regex and ``json.loads`` (no records, no checks, no trajectory): paired
  rounds with a 95% interval.
- How the cost grows: 100 to 100,000 chains (all in flight), turns/s, CPU
  per turn and peak memory of the process, written as a chart
  (``$AGENTFLY_BENCH_OUT``, default ``docs/bench``, ``loop-scaling.png`` and
  ``.json``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import msgspec
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import Agent, Completion, Output, Request, Usage, tool
from agentfly_min.agent import rollout_stream
from agentfly_min.bench.stats import Sample

from .conftest import ROOT, RatioReporter, paired

Loop = Literal["asyncio", "trio"]
CALL = '<tool_call>\n{"name": "echo", "arguments": {"text": "hi"}}\n</tool_call>'
ANSWER = "The answer is \\boxed{42}."


@tool(blocking=False)
def echo(text: str) -> str:
    """Echo the text back.

    Args:
        text: What to echo.
    """
    return text


AGENT = Agent(model_name_or_path="none", tools=[echo], max_turns=3)


def gathering(count: int) -> Any:
    """A transport that costs nothing, and holds every chain's first turn
    until all ``count`` chains have reached it: without the hold, a chain
    that never waits runs start to end before the next one starts, and
    "in flight" would mean one. It builds the records a real one builds."""
    arrived = 0
    everyone = anyio.Event()

    async def no_op(request: Request) -> Completion:
        nonlocal arrived
        first = request.messages[-1].role == "user"
        if first:
            arrived += 1
            if arrived == count:
                everyone.set()
            await everyone.wait()
        else:
            await anyio.lowlevel.checkpoint()
        return Completion(
            outputs=(Output(text=CALL if first else ANSWER, finish_reason="stop"),), usage=Usage(prompt_tokens=10, completion_tokens=5)
        )

    return no_op


def tasks(count: int) -> list[dict[str, Any]]:
    return [{"id": f"t{i}", "question": f"what is {i}?", "answer": "42"} for i in range(count)]


async def ours(count: int) -> int:
    """Chains through ``rollout_stream`` (trajectories handed out and let go,
    so memory is what the chains in flight hold); the model turns taken."""
    turns = 0
    async with rollout_stream(AGENT, gathering(count), tasks(count), concurrency=count) as trajectories:
        async for t in trajectories:
            assert t.error is None and t.tool_errors == 0, t.error
            turns += t.num_turns
    return turns


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


async def hand_rolled(count: int) -> int:
    """What glue code does: dict messages, a regex, ``json.loads``, a call."""
    functions = {"echo": lambda text: text}
    limit = anyio.Semaphore(count)
    turns = 0

    arrived = 0
    everyone = anyio.Event()

    async def generate(messages: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal arrived
        first = messages[-1]["role"] == "user"
        if first:  # the same hold as ours
            arrived += 1
            if arrived == count:
                everyone.set()
            await everyone.wait()
        else:
            await anyio.lowlevel.checkpoint()
        return {"text": CALL if first else ANSWER, "finish_reason": "stop", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    async def chain(task: dict[str, Any]) -> None:
        nonlocal turns
        async with limit:
            messages: list[dict[str, Any]] = [{"role": "user", "content": task["question"]}]
            for _ in range(3):
                answer = await generate(messages)
                turns += 1
                messages.append({"role": "assistant", "content": answer["text"]})
                found = _CALL.findall(answer["text"])
                if not found:
                    break
                for raw in found:
                    call = json.loads(raw)
                    result = functions[call["name"]](**call["arguments"])
                    messages.append({"role": "tool", "content": str(result)})

    async with anyio.create_task_group() as tg:
        for task in tasks(count):
            tg.start_soon(chain, task)
    return turns


def side(run: Any, count: int, loop: Loop) -> Any:
    def one() -> Sample:
        cpu, start = time.process_time(), time.perf_counter()
        turns = anyio.run(run, count, backend=loop)
        assert turns == 2 * count
        return Sample(work=turns, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)

    return one


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_loop_vs_hand_rolled_glue_1000_chains(benchmark: BenchmarkFixture, report_ratio: RatioReporter, loop: Loop) -> None:
    count = 1000
    estimate = paired(
        benchmark,
        report_ratio,
        f"{count} chains in flight, no-op transport, {loop}: rollout vs a hand-rolled loop, turns/s",
        side(ours, count, loop),
        side(hand_rolled, count, loop),
        budget_seconds=40,
    )
    mine = sum(s.work for s in estimate.ours) / sum(s.seconds for s in estimate.ours)
    mine_cpu = 1000 * sum(s.cpu_seconds for s in estimate.ours) / sum(s.work for s in estimate.ours)
    glue_cpu = 1000 * sum(s.cpu_seconds for s in estimate.raw) / sum(s.work for s in estimate.raw)
    benchmark.extra_info.update(turns_per_s=mine, cpu_ms_per_turn=mine_cpu, glue_cpu_ms_per_turn=glue_cpu)
    report_ratio(f"  rollout {mine:,.0f} turns/s at {mine_cpu:.3f} ms CPU/turn; hand-rolled {glue_cpu:.3f} ms CPU/turn")


class ScalePoint(msgspec.Struct, frozen=True, kw_only=True):
    chains: int
    turns_per_s: float
    cpu_ms_per_turn: float
    peak_memory_mb: float


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure_in_child(chains: int, loop: Loop) -> ScalePoint:
    """One point in a fresh process, so its peak memory is its own."""
    import subprocess
    import sys

    code = (
        "import anyio, time, sys; from benchmarks.bench_loop import ours, _peak_rss_mb, ScalePoint; import msgspec;"
        f"anyio.run(ours, 100, backend={loop!r});"  # warm-up: imports, first-call costs
        "cpu, start = time.process_time(), time.perf_counter();"
        # small points repeat, so each measures at least 20,000 turns
        f"turns = sum(anyio.run(ours, {chains}, backend={loop!r}) for _ in range({max(1, 10_000 // chains)}));"
        "wall, cpu = time.perf_counter() - start, time.process_time() - cpu;"
        f"sys.stdout.buffer.write(msgspec.json.encode(ScalePoint(chains={chains}, turns_per_s=turns / wall,"
        " cpu_ms_per_turn=1000 * cpu / turns, peak_memory_mb=_peak_rss_mb())))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True, timeout=1800)
    return msgspec.json.decode(done.stdout, type=ScalePoint)


def test_the_loops_cost_stays_flat_from_100_to_100000_chains(benchmark: BenchmarkFixture, report_ratio: RatioReporter) -> None:
    points: list[ScalePoint] = []

    def run() -> None:
        for chains in (100, 1_000, 10_000, 100_000):
            points.append(_measure_in_child(chains, "asyncio"))

    benchmark.pedantic(run, rounds=1, iterations=1)
    out = Path(os.environ.get("AGENTFLY_BENCH_OUT", ROOT / "docs" / "bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop-scaling.json").write_bytes(msgspec.json.format(msgspec.json.encode(points)))
    _chart(points, out / "loop-scaling.png")
    benchmark.extra_info.update(points=msgspec.to_builtins(points))
    for p in points:
        report_ratio(
            f"{p.chains:>7,} chains in flight: {p.turns_per_s:,.0f} turns/s, {p.cpu_ms_per_turn:.3f} ms CPU/turn, "
            f"peak {p.peak_memory_mb:,.0f} MB ({1024 * p.peak_memory_mb / p.chains:.1f} KB/chain)"
        )
    # Flat: CPU per turn at 100,000 chains within 2x of that at 1,000.
    assert points[-1].cpu_ms_per_turn < 2 * points[1].cpu_ms_per_turn, points


def _chart(points: list[ScalePoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    chains = [p.chains for p in points]
    series = (
        ("turns/s", [p.turns_per_s for p in points]),
        ("CPU ms per turn", [p.cpu_ms_per_turn for p in points]),
        ("peak memory (MB)", [p.peak_memory_mb for p in points]),
    )
    for axis, (label, values) in zip(axes, series, strict=True):
        axis.plot(chains, values, marker="o")
        axis.set_xscale("log")
        axis.set_xlabel("chains in flight")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
    fig.suptitle("the agent process alone (no-op transport, one trivial tool call per chain, asyncio)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
