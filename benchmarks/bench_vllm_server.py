"""The client transport (default middleware) against bare ``AsyncOpenAI`` on
the same local vLLM OpenAI server, in the same run, on asyncio and trio:
32 x 64 new tokens a round, rounds paired until the ratio's interval is
narrow. Here the server's sampling dominates; bench_client.py measures the
client's own cost against a minimal server. The server and the client each
have CPUs of their own (``split_cpus``): sharing two cores, the client's
loop was left unscheduled for seconds behind vLLM's engine processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import ClientConfig, Message, Request, open_backend
from agentfly_min.local import VLLMServer, pinned, split_cpus

from .conftest import RatioReporter, TRANSPORT_BUDGET, TRANSPORT_TARGET, WORK, paired, timed

BATCH, NEW_TOKENS = 32, 64


CLIENT_CPUS, SERVER_CPUS = split_cpus()


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[VLLMServer]:
    with VLLMServer(tiny_model_path, work_dir=WORK, max_model_len=1024, cpus=SERVER_CPUS) as running:
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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_client_transport_vs_bare_client_on_vllm_server(
    benchmark: BenchmarkFixture, server: VLLMServer, report_ratio: RatioReporter, backend: str
) -> None:
    def bare() -> int:
        return anyio.run(bare_batch, server, backend=backend)

    def ours() -> int:
        return anyio.run(our_batch, server, backend=backend)

    with pinned(CLIENT_CPUS):
        estimate = paired(benchmark, report_ratio, f"{backend}: ours vs bare AsyncOpenAI, tokens/s", timed(ours), timed(bare), target=TRANSPORT_TARGET, budget_seconds=TRANSPORT_BUDGET)
    assert all(s.work == BATCH * NEW_TOKENS for s in (*estimate.ours, *estimate.raw))
