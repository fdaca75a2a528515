"""RL rollouts over HTTP, measured on a fleet of two vLLM servers behind
vLLM's router (the tiny model, 2 cores: the figures are about the client
and the routing, not the model).

- Token ids vs chat on one server: the same multi-turn workload, once as
  token ids to ``/v1/completions`` (what token-exact rollouts send), once as
  messages to ``/v1/chat/completions`` (the server renders and tokenises the
  growing conversation every turn), and once on the in-process engine.
- Sticky vs round-robin over two servers: the prefix-cache hit rate read
  from each server's ``/metrics`` and tokens/s, on the same servers.
- Our client transport vs the bare SDK, the same token-id requests through
  the same router.
Ratios are taken within one run; each pair alternates and repeats.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import ClientConfig
from agentfly_min.bench.raw import openai_raw_step, openai_token_raw_step, vllm_raw_step
from agentfly_min.bench.workload import RunStats, Workload, generate_step, run_workload
from agentfly_min.local.fleet import Fleet
from agentfly_min.transports.client import open_client

from .conftest import WORK, RatioReporter

WORKLOAD = Workload(tasks=8, chains=2, turns=4, new_tokens=32, concurrency=8)
ROUNDS = 3


@pytest.fixture(scope="module")
def fleet(tiny_model_path: Path) -> Iterator[Fleet]:
    with Fleet(tiny_model_path, work_dir=WORK, servers=2) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


async def ours(base_url: str, model: str, tokenizer: Any, *, token_ids: bool, workload: Workload = WORKLOAD) -> RunStats:
    config = ClientConfig(base_url=base_url, model=model, timeout=300, token_ids=token_ids)
    async with open_client(config) as generate:
        return await run_workload(generate_step(generate, token_level=token_ids), workload, tokenizer)


async def bare_tokens(base_url: str, model: str, tokenizer: Any, workload: Workload = WORKLOAD) -> RunStats:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", timeout=300, max_retries=0) as client:
        return await run_workload(openai_token_raw_step(client, model), workload, tokenizer)


async def bare_chat(base_url: str, model: str, tokenizer: Any, workload: Workload = WORKLOAD) -> RunStats:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", timeout=300, max_retries=0) as client:
        return await run_workload(openai_raw_step(client, model), workload, tokenizer)


def median_tps(runs: list[RunStats]) -> float:
    return statistics.median(r.tokens_per_s for r in runs)


def p99_ms(runs: list[RunStats]) -> float:
    return 1000 * statistics.median(r.latency(0.99) for r in runs)


def test_token_ids_vs_chat_on_one_server(benchmark: BenchmarkFixture, report_ratio: RatioReporter, fleet: Fleet, tokenizer: Any, tiny_model_path: Path) -> None:
    one = f"http://127.0.0.1:{fleet.servers[0].port}/v1"
    anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=True, workload=msgspec.structs.replace(WORKLOAD, turns=1)))  # warm-up
    tokens: list[RunStats] = []
    chat: list[RunStats] = []
    for _ in range(ROUNDS):
        tokens.append(anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=True)))
        chat.append(anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=False)))
    benchmark.pedantic(lambda: anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=True)), rounds=1, iterations=1)
    ratio = median_tps(tokens) / median_tps(chat)
    benchmark.extra_info.update(
        token_tps=median_tps(tokens), chat_tps=median_tps(chat), token_p99_ms=p99_ms(tokens), chat_p99_ms=p99_ms(chat), ratio=ratio
    )
    report_ratio(
        f"one server, {WORKLOAD.tasks}x{WORKLOAD.chains} chains x {WORKLOAD.turns} turns x {WORKLOAD.new_tokens} tokens: "
        f"token ids {median_tps(tokens):,.0f} tok/s (p99 turn {p99_ms(tokens):.0f} ms) vs chat {median_tps(chat):,.0f} tok/s "
        f"(p99 {p99_ms(chat):.0f} ms): x{ratio:.2f}"
    )


def test_in_process_engine_reference(benchmark: BenchmarkFixture, report_ratio: RatioReporter, fleet: Fleet, tokenizer: Any, tiny_model_path: Path) -> None:
    """The same workload on the in-process engine, with the fleet's servers
    idle beside it (the figure the HTTP rows are read against)."""
    from agentfly_min.local import cpu_engine_config
    from agentfly_min.transports.vllm import VLLMEngine, vllm_generate

    one = f"http://127.0.0.1:{fleet.servers[0].port}/v1"
    engine = VLLMEngine.start(cpu_engine_config(), tiny_model_path)
    try:
        engine.run_blocking(run_workload(vllm_raw_step(engine), msgspec.structs.replace(WORKLOAD, turns=1), tokenizer))
        inproc: list[RunStats] = []
        http: list[RunStats] = []
        for _ in range(ROUNDS):
            inproc.append(anyio.run(lambda: run_workload(generate_step(vllm_generate(engine), token_level=True), WORKLOAD, tokenizer)))
            http.append(anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=True)))
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    finally:
        engine.close()
    ratio = median_tps(http) / median_tps(inproc)
    benchmark.extra_info.update(inproc_tps=median_tps(inproc), http_tps=median_tps(http), ratio=ratio)
    report_ratio(f"token ids over HTTP {median_tps(http):,.0f} tok/s vs the in-process engine {median_tps(inproc):,.0f} tok/s: x{ratio:.2f}")


def test_sticky_vs_round_robin_over_two_servers(benchmark: BenchmarkFixture, report_ratio: RatioReporter, fleet: Fleet, tokenizer: Any) -> None:
    figures: dict[str, tuple[float, float]] = {}
    for policy in ("round_robin", "consistent_hash"):
        fleet.reroute(policy)
        before = [fleet.prefix_cache(k) for k in range(2)]
        runs = [anyio.run(lambda: ours(fleet.base_url, fleet.model, tokenizer, token_ids=True)) for _ in range(ROUNDS)]
        after = [fleet.prefix_cache(k) for k in range(2)]
        hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        figures[policy] = (hits / queries if queries else 0.0, median_tps(runs))
    fleet.reroute("consistent_hash")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update({f"{p}_hit_rate": f[0] for p, f in figures.items()} | {f"{p}_tps": f[1] for p, f in figures.items()})
    sticky, spread = figures["consistent_hash"], figures["round_robin"]
    report_ratio(
        f"two servers: sticky (consistent_hash) prefix-cache hits {sticky[0]:.0%}, {sticky[1]:,.0f} tok/s; "
        f"round_robin {spread[0]:.0%}, {spread[1]:,.0f} tok/s"
    )
    assert sticky[0] > spread[0]  # affinity is what keeps a session's prefix cached


def test_our_client_vs_the_bare_sdk_through_the_router(benchmark: BenchmarkFixture, report_ratio: RatioReporter, fleet: Fleet, tokenizer: Any) -> None:
    anyio.run(lambda: ours(fleet.base_url, fleet.model, tokenizer, token_ids=True, workload=msgspec.structs.replace(WORKLOAD, turns=1)))
    asyncio.run(bare_tokens(fleet.base_url, fleet.model, tokenizer, msgspec.structs.replace(WORKLOAD, turns=1)))
    mine: list[RunStats] = []
    theirs: list[RunStats] = []
    for k in range(ROUNDS * 2):
        if k % 2:  # alternate who goes first
            mine.append(anyio.run(lambda: ours(fleet.base_url, fleet.model, tokenizer, token_ids=True)))
            theirs.append(asyncio.run(bare_tokens(fleet.base_url, fleet.model, tokenizer)))
        else:
            theirs.append(asyncio.run(bare_tokens(fleet.base_url, fleet.model, tokenizer)))
            mine.append(anyio.run(lambda: ours(fleet.base_url, fleet.model, tokenizer, token_ids=True)))
    benchmark.pedantic(lambda: anyio.run(lambda: ours(fleet.base_url, fleet.model, tokenizer, token_ids=True)), rounds=1, iterations=1)
    ratio = median_tps(mine) / median_tps(theirs)
    spread = statistics.pstdev([r.tokens_per_s for r in mine]) / median_tps(mine)
    benchmark.extra_info.update(ours_tps=median_tps(mine), bare_tps=median_tps(theirs), ratio=ratio, spread=spread)
    report_ratio(
        f"token ids through the router: ours {median_tps(mine):,.0f} tok/s vs bare AsyncOpenAI {median_tps(theirs):,.0f} tok/s: "
        f"x{ratio:.2f} (rounds spread ±{spread:.0%})"
    )
