"""Costs that hostile model output and very large rollouts must not blow up.

- Every parser is linear: each registered template's ``parse`` (and
  ``parse_with_tools`` where it has one) and the answer extractors of
  :mod:`agentfly_min.rewards`, on walls of every family's markers, braces,
  quotes, backslashes and digits: the time per kilobyte stays flat from
  16 KB to 1 MB (a quadratic parser's grows sixty-fourfold).
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
from agentfly_min.records import ToolSchema
from agentfly_min.rewards import extract_answer, normalize_answer
from agentfly_min.rewards.math import as_number
from agentfly_min.templates import get_template, template_names
from agentfly_min.tools import calculator

from .conftest import RatioReporter

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
TOOLS = (calculator.schema,)


def _wall(piece: str) -> Callable[[int], str]:
    return lambda size: piece * max(1, size // len(piece))


HOSTILE: dict[str, Callable[[int], str]] = {
    # name: size in bytes -> a turn of about that size
    "unclosed-tags": _wall("<tool_call>"),
    "closed-calls": _wall(CALL),
    "deep-nesting": lambda size: '<tool_call>{"name": "f", "arguments": ' + "[" * (size // 2) + "]" * (size // 2) + "}</tool_call>",
    "think-blocks": _wall("<think>" + CALL + "</think>"),
    "unclosed-think": _wall("<think>"),
    "closing-think": _wall("</think>"),
    "huge-argument": lambda size: '<tool_call>{"name": "f", "arguments": {"s": "' + "a" * size + '"}}</tool_call>',
    "xml-parameters": lambda size: "<tool_call>\n<function=f>\n" + "<parameter=a>\n" * (size // 14),
    "llama-open-objects": lambda size: '{"name": "f", "parameters": ' + "{" * size,
    "llama-many-calls": _wall('{"name": "f", "parameters": {}}; '),
    "mistral-calls": _wall("[TOOL_CALLS]"),
    "mistral-args": _wall("[TOOL_CALLS]f[ARGS]"),
    "harmony-calls": _wall("<|channel|>commentary to=functions.f <|message|>"),
    "harmony-starts": _wall("<|start|>assistant"),
    "quotes": _wall('"'),
    "backslashes": _wall("\\"),
    "unclosed-boxes": _wall("\\boxed{"),
    "nested-boxes": lambda size: "\\boxed{" * (size // 14) + "1" + "}" * (size // 14),
    "digits": lambda size: "1" * size + "x",
    "thousands": _wall("1,000"),
    "wrappers": _wall("\\text{"),
}
SIZES = (16_000, 128_000, 1_000_000)


def _with_tools(parse: Callable[[str, tuple[ToolSchema, ...]], object]) -> Callable[[str], object]:
    return lambda text: parse(text, TOOLS)


def _parsers() -> dict[str, Callable[[str], object]]:
    parsers: dict[str, Callable[[str], object]] = {}
    for name in template_names():
        template = get_template(name)
        parsers[f"{name}.parse"] = template.parse
        if template.parse_with_tools is not None:
            parsers[f"{name}.parse_with_tools"] = _with_tools(template.parse_with_tools)
    parsers |= {"extract_answer": extract_answer, "normalize_answer": normalize_answer, "as_number": as_number}
    return parsers


PARSERS = _parsers()


def _per_kb(parse: Callable[[str], object], text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        parse(text)
        best = min(best, time.perf_counter() - started)
    return best / (len(text) / 1000)


@pytest.mark.parametrize("parser", list(PARSERS))
def test_parsing_stays_linear(benchmark: BenchmarkFixture, report_ratio: RatioReporter, parser: str) -> None:
    """Every hostile wall through one parser; the worst growth is reported."""
    parse = PARSERS[parser]
    growth: dict[str, float] = {}
    for kind, build in HOSTILE.items():
        per_kb = {size: _per_kb(parse, build(size), repeat=3) for size in SIZES}
        growth[kind] = per_kb[SIZES[-1]] / per_kb[SIZES[0]]
        benchmark.extra_info[f"{kind}_us_per_kb_1mb"] = per_kb[SIZES[-1]] * 1e6
    worst = max(growth, key=growth.__getitem__)
    benchmark.extra_info["growth"] = growth
    benchmark.pedantic(parse, args=(HOSTILE[worst](SIZES[-1]),), rounds=1, iterations=1)
    report_ratio(
        f"parse {parser}: worst time per KB at 1 MB against 16 KB x{growth[worst]:.2f} ({worst}; "
        "linear is ~1, quadratic would be ~60)"
    )
    assert growth[worst] < 8, growth  # a sanity bound, far from quadratic's 60, not a timing claim


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
