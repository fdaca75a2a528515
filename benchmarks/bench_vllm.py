"""Our vLLM transport against a bare loop over the same engine's ``generate``,
in the same run, on asyncio and on trio: 32 requests x 64 new tokens
(``ignore_eos``) a round, rounds paired until the ratio's interval is
narrow (aim: >= 0.97). On asyncio ours runs on the engine's loop, as
``open_vllm`` runs it for an asyncio caller; on trio across the bridge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import Request
from agentfly_min.local import cpu_engine_config
from agentfly_min.transports.vllm import VLLMEngine, vllm_generate

from .conftest import RatioReporter, TRANSPORT_BUDGET, TRANSPORT_TARGET, paired, timed

BATCH, NEW_TOKENS = 32, 64


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Iterator[VLLMEngine]:
    started = VLLMEngine.start(cpu_engine_config(), tiny_model_path)
    yield started
    started.close()


def prompt(i: int) -> list[int]:
    return [1, 379, 201, 10 + i, 74, 75, 2, 201, 1, 570, 201]


async def bare_batch(engine: VLLMEngine) -> int:
    """What a user writes against vLLM directly, on the engine's own loop."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)

    async def one(i: int) -> int:
        count = 0
        async for out in engine.engine.generate(TokensPrompt(prompt_token_ids=prompt(i)), params, f"bare-{i}-{time.monotonic_ns()}"):
            count = len(out.outputs[0].token_ids)
        return count

    return sum(await asyncio.gather(*(one(i) for i in range(BATCH))))


async def our_batch(engine: VLLMEngine) -> int:
    generate = vllm_generate(engine)
    total = 0

    async def one(i: int) -> None:
        nonlocal total
        completion = await generate(Request(prompt_ids=tuple(prompt(i)), max_new_tokens=NEW_TOKENS, ignore_eos=True))
        total += completion.usage.completion_tokens

    async with anyio.create_task_group() as tg:
        for i in range(BATCH):
            tg.start_soon(one, i)
    return total


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_vllm_transport_vs_bare_engine(
    benchmark: BenchmarkFixture, engine: VLLMEngine, report_ratio: RatioReporter, backend: str
) -> None:
    def bare() -> int:
        return engine.run_blocking(bare_batch(engine))  # the bare loop runs where the engine lives

    def ours() -> int:
        if backend == "asyncio":
            # What open_vllm gives an asyncio caller: the engine on the
            # caller's own loop, so calls go straight to it (no hop).
            return engine.run_blocking(our_batch(engine))
        return anyio.run(our_batch, engine, backend=backend)  # trio: across the bridge

    estimate = paired(benchmark, report_ratio, f"{backend}: ours vs the bare engine, tokens/s", timed(ours), timed(bare), target=TRANSPORT_TARGET, budget_seconds=TRANSPORT_BUDGET)
    assert all(s.work == BATCH * NEW_TOKENS for s in (*estimate.ours, *estimate.raw))
