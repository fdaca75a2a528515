"""Costs that hostile model output and very large rollouts must not blow up.

- Tool-call parsing is linear: the time per kilobyte of a hostile turn stays
  flat from 10 KB to 300 KB (a quadratic parser's grows thirtyfold).
- ``rollout_stream`` keeps memory bounded by its concurrency: peak traced
  memory at 10,000 and 100,000 chains, with and without its check for
  repeated task ids (the one thing it keeps per task), against the list
  form ``rollout``, which keeps every trajectory; on a no-op transport.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator

import anyio
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import Agent, Completion, Output, Request, rollout
from agentfly_min.agent import rollout_stream
from agentfly_min.templates import parse_tool_calls

from .conftest import RatioReporter

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
HOSTILE: dict[str, Callable[[int], str]] = {
    # name: size in bytes -> a turn of about that size
    "unclosed-tags": lambda size: "<tool_call>" * (size // 11),
    "closed-calls": lambda size: CALL * (size // len(CALL)),
    "deep-nesting": lambda size: '<tool_call>{"name": "f", "arguments": ' + "[" * (size // 2) + "]" * (size // 2) + "}</tool_call>",
    "think-blocks": lambda size: ("<think>" + CALL + "</think>") * (size // (len(CALL) + 15)),
    "huge-argument": lambda size: '<tool_call>{"name": "f", "arguments": {"s": "' + "a" * size + '"}}</tool_call>',
}
SIZES = (10_000, 100_000, 300_000)


def _per_kb(text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        parse_tool_calls(text)
        best = min(best, time.perf_counter() - started)
    return best / (len(text) / 1000)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_parsing_stays_linear(benchmark: BenchmarkFixture, report_ratio: RatioReporter, kind: str) -> None:
    build = HOSTILE[kind]
    per_kb = {size: _per_kb(build(size), repeat=5 if size < 300_000 else 3) for size in SIZES}
    benchmark(parse_tool_calls, build(SIZES[-1]))
    growth = per_kb[SIZES[-1]] / per_kb[SIZES[0]]
    benchmark.extra_info.update({f"us_per_kb_{size}": per_kb[size] * 1e6 for size in SIZES} | {"growth": growth})
    report_ratio(
        f"parse {kind}: {per_kb[SIZES[0]] * 1e6:.1f} us/KB at 10 KB, {per_kb[SIZES[-1]] * 1e6:.1f} us/KB at 300 KB "
        f"(x{growth:.2f}; linear is ~1, quadratic would be ~30)"
    )
    assert growth < 5  # a sanity bound, far from quadratic's 30, not a timing claim


# --- memory of very large rollouts ------------------------------------------------

AGENT = Agent(model_name_or_path="noop", max_turns=1)


async def noop(request: Request) -> Completion:
    await anyio.lowlevel.checkpoint()
    return Completion(outputs=(Output(text="done", finish_reason="stop"),))


def tasks(count: int) -> Iterator[dict[str, str]]:
    for i in range(count):
        yield {"id": f"task-{i}", "question": f"question {i}"}


async def stream(count: int, check_repeats: bool = True) -> int:
    seen = 0
    async with rollout_stream(AGENT, noop, tasks(count), concurrency=64, check_repeats=check_repeats) as trajectories:
        async for _ in trajectories:
            seen += 1
    return seen


async def stream_unchecked(count: int) -> int:
    return await stream(count, check_repeats=False)


async def listed(count: int) -> int:
    return len(await rollout(AGENT, noop, list(tasks(count)), concurrency=64))


def _peak_mb(run: Callable[[int], Awaitable[int]], count: int) -> tuple[float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        done = anyio.run(run, count)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == count
    return peak / 2**20, time.perf_counter() - started


def test_rollout_memory_is_bounded_by_concurrency(benchmark: BenchmarkFixture, report_ratio: RatioReporter) -> None:
    figures: dict[str, float] = {}
    for count in (10_000, 100_000):
        figures[f"stream_{count}_mb"], figures[f"stream_{count}_s"] = _peak_mb(stream, count)
        figures[f"unchecked_{count}_mb"], _ = _peak_mb(stream_unchecked, count)
        figures[f"list_{count}_mb"], figures[f"list_{count}_s"] = _peak_mb(listed, count)
    benchmark.pedantic(anyio.run, args=(stream, 10_000), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    for count in (10_000, 100_000):
        report_ratio(
            f"{count:,} chains, no-op transport, 64 in flight: rollout_stream peaks at {figures[f'stream_{count}_mb']:.1f} MB "
            f"traced ({figures[f'stream_{count}_s']:.1f} s), rollout (list) at {figures[f'list_{count}_mb']:.1f} MB "
            f"({figures[f'list_{count}_s']:.1f} s); without the repeated-id check {figures[f'unchecked_{count}_mb']:.2f} MB"
        )
    # The stream keeps the ids it has seen (to catch repeats), not the trajectories;
    # without that check its peak does not grow with the number of chains.
    assert figures["stream_100000_mb"] < figures["list_100000_mb"] / 5
    assert figures["unchecked_100000_mb"] < 2 * figures["unchecked_10000_mb"] + 1
