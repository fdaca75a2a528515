"""The client transport (default middleware) against bare ``AsyncOpenAI`` on
the same local vLLM OpenAI server, in the same run: 32 x 64 new tokens."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import ClientConfig, Message, Request, open_backend
from agentfly_min.local import VLLMServer

from .conftest import WORK, RatioReporter

BATCH, NEW_TOKENS = 32, 64


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[VLLMServer]:
    with VLLMServer(tiny_model_path, work_dir=WORK, max_model_len=1024) as running:
        yield running


async def bare_batch(server: VLLMServer) -> int:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="EMPTY") as client:
        total = 0

        async def one(i: int) -> None:
            nonlocal total
            response = await client.chat.completions.create(
                model=server.model,
                messages=[{"role": "user", "content": f"question {i}"}],
                max_tokens=NEW_TOKENS,
                extra_body={"ignore_eos": True},
            )
            assert response.usage is not None
            total += response.usage.completion_tokens

        async with anyio.create_task_group() as tg:
            for i in range(BATCH):
                tg.start_soon(one, i)
    return total


async def our_batch(server: VLLMServer) -> int:
    config = ClientConfig(base_url=server.base_url, model=server.model, timeout=120)
    total = 0
    async with open_backend(config) as generate:

        async def one(i: int) -> None:
            nonlocal total
            request = Request(messages=(Message(role="user", content=f"question {i}"),), max_new_tokens=NEW_TOKENS, ignore_eos=True)
            completion = await generate(request)
            total += completion.usage.completion_tokens

        async with anyio.create_task_group() as tg:
            for i in range(BATCH):
                tg.start_soon(one, i)
    return total


def test_client_transport_vs_bare_client_on_vllm_server(
    benchmark: BenchmarkFixture, server: VLLMServer, report_ratio: RatioReporter
) -> None:
    bare_times: list[float] = []

    def setup() -> None:
        start = time.perf_counter()
        assert anyio.run(bare_batch, server) == BATCH * NEW_TOKENS
        bare_times.append(time.perf_counter() - start)

    tokens = benchmark.pedantic(lambda: anyio.run(our_batch, server), setup=setup, rounds=5, iterations=1, warmup_rounds=1)
    assert tokens == BATCH * NEW_TOKENS
    ours_tps = tokens / benchmark.stats.stats.median
    bare_tps = tokens / statistics.median(bare_times)
    benchmark.extra_info.update(ours_tokens_per_s=ours_tps, bare_tokens_per_s=bare_tps, ratio=ours_tps / bare_tps)
    report_ratio(f"ours {ours_tps:,.0f} tok/s, bare AsyncOpenAI {bare_tps:,.0f} tok/s: ratio {ours_tps / bare_tps:.3f}")
