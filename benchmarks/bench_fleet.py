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
Ratios are taken within one run: paired rounds in blocks of both orders, until
the 95% interval is narrow or the budget is spent.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import ClientConfig
from agentfly_min.bench.raw import openai_token_raw_step
from agentfly_min.bench.workload import RunStats, Workload, generate_step, run_workload
from agentfly_min.local.fleet import Fleet
from agentfly_min.transports.client import open_client

from .conftest import WORK, RatioReporter, paired, timed

WORKLOAD = Workload(tasks=8, chains=2, turns=4, new_tokens=32, concurrency=8)
ROUNDS = 3  # per policy, sticky vs round-robin (the router restarts between)
SETTINGS: dict[str, Any] = {"budget_seconds": 90.0, "min_rounds": 3}


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


def median_tps(runs: list[RunStats]) -> float:
    return statistics.median(r.tokens_per_s for r in runs)


def test_token_ids_vs_chat_on_one_server(benchmark: BenchmarkFixture, report_ratio: RatioReporter, fleet: Fleet, tokenizer: Any, tiny_model_path: Path) -> None:
    one = f"http://127.0.0.1:{fleet.servers[0].port}/v1"

    def side(token_ids: bool) -> Callable[[], float]:
        return lambda: anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=token_ids)).tokens

    label = (
        f"one server, {WORKLOAD.tasks}x{WORKLOAD.chains} chains x {WORKLOAD.turns} turns x {WORKLOAD.new_tokens} tokens: "
        "token ids over chat, tokens/s"
    )
    paired(benchmark, report_ratio, label, timed(side(True)), timed(side(False)), **SETTINGS)


def test_in_process_engine_reference(benchmark: BenchmarkFixture, report_ratio: RatioReporter, fleet: Fleet, tokenizer: Any, tiny_model_path: Path) -> None:
    """The same workload on the in-process engine, with the fleet's servers
    idle beside it (the figure the HTTP rows are read against)."""
    from agentfly_min.local import cpu_engine_config
    from agentfly_min.transports.vllm import VLLMEngine, vllm_generate

    one = f"http://127.0.0.1:{fleet.servers[0].port}/v1"
    engine = VLLMEngine.start(cpu_engine_config(), tiny_model_path)
    try:

        def inproc() -> float:
            return anyio.run(lambda: run_workload(generate_step(vllm_generate(engine), token_level=True), WORKLOAD, tokenizer)).tokens

        def http() -> float:
            return anyio.run(lambda: ours(one, fleet.model, tokenizer, token_ids=True)).tokens

        paired(benchmark, report_ratio, "token ids over HTTP over the in-process engine, tokens/s", timed(http), timed(inproc), **SETTINGS)
    finally:
        engine.close()


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
    def mine() -> float:
        return anyio.run(lambda: ours(fleet.base_url, fleet.model, tokenizer, token_ids=True)).tokens

    def theirs() -> float:
        return asyncio.run(bare_tokens(fleet.base_url, fleet.model, tokenizer)).tokens

    paired(benchmark, report_ratio, "token ids through the router: ours over bare AsyncOpenAI, tokens/s", timed(mine), timed(theirs), **SETTINGS)
