"""Our verl transport against bare ``LLMServerClient.generate`` calls on the
same verl server (Ray, verl's vLLM server actor, the tiny model), in the same
run: 32 requests x 64 new tokens a round, rounds paired until the ratio's
interval is narrow (aim: >= 0.97)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import AsyncVerlConfig, Request
from agentfly_min.local.verl_cluster import VerlCluster
from agentfly_min.transports.verl import open_verl

from .conftest import RatioReporter, TRANSPORT_BUDGET, TRANSPORT_TARGET, WORK, paired, timed

BATCH, NEW_TOKENS = 32, 64


@pytest.fixture(scope="module")
def cluster(tiny_model_path: Path) -> Iterator[VerlCluster]:
    with VerlCluster(tiny_model_path, work_dir=WORK) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(cluster: VerlCluster) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cluster.model)


def prompt(i: int) -> list[int]:
    return [1, 379, 201, 10 + i, 74, 75, 2, 201, 1, 570, 201]


async def bare_batch(cluster: VerlCluster, tokenizer: Any) -> int:
    """What a verl agent loop writes by hand: the client, directly, and the
    answer's text decoded (verl's tool agent loop decodes it to find tool
    calls; ours returns it in every ``Output``), as the bench's raw step does."""

    async def one(i: int) -> int:
        out = await cluster.client.generate(
            f"bare-{i}-{time.monotonic_ns()}",
            prompt_ids=prompt(i),
            sampling_params={"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": NEW_TOKENS, "logprobs": True, "ignore_eos": True},
        )
        tokenizer.decode(out.token_ids, skip_special_tokens=True)
        return len(out.token_ids)

    return sum(await asyncio.gather(*(one(i) for i in range(BATCH))))


async def our_batch(cluster: VerlCluster, tokenizer: Any) -> int:
    total = 0
    async with open_verl(AsyncVerlConfig(max_new_tokens=NEW_TOKENS), cluster.client, tokenizer) as generate:

        async def one(i: int) -> None:
            nonlocal total
            completion = await generate(Request(prompt_ids=tuple(prompt(i)), ignore_eos=True, request_id=f"ours-{i}-{time.monotonic_ns()}"))
            total += completion.usage.completion_tokens

        async with anyio.create_task_group() as tg:
            for i in range(BATCH):
                tg.start_soon(one, i)
    return total


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_verl_transport_vs_bare_client(
    benchmark: BenchmarkFixture, cluster: VerlCluster, tokenizer: Any, report_ratio: RatioReporter, backend: str
) -> None:
    def bare() -> int:
        return asyncio.run(bare_batch(cluster, tokenizer))

    def ours() -> int:
        return anyio.run(our_batch, cluster, tokenizer, backend=backend)

    label = f"{backend}: ours vs bare LLMServerClient, tokens/s"
    estimate = paired(benchmark, report_ratio, label, timed(ours), timed(bare), target=TRANSPORT_TARGET, budget_seconds=TRANSPORT_BUDGET)
    assert all(s.work == BATCH * NEW_TOKENS for s in (*estimate.ours, *estimate.raw))
