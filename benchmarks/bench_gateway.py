"""The gateway row: one openai-SDK agent workload through the gateway in
front of the in-process vLLM engine, against the same workload sent straight
to a vLLM OpenAI server (vLLM's own frontend, its Hermes tool parser on), in
paired rounds of the same run. Both stacks run the tiny model with the same
engine settings on the same two cores, unpinned; only one works at a time.

A round: 16 agents in flight, each three model turns: two tool calls
(forced by a regex, vLLM's ``structured_outputs``, which both sides take)
answered by the client, then a 32-token answer (``ignore_eos``). Work is the
completion tokens the server reported. CPU is this process's: the SDK
clients on both sides, plus the gateway and the in-process engine's frontend
(tokenising, detokenising) on ours; vLLM's frontend runs in the server's
process on the raw side, so the difference per turn is what the gateway and
the in-process frontend cost here.

Agent Lightning (``agentlightning`` 0.3.0 on PyPI), the peer the issue
names, does not install beside this stack: it pins httpx, packaging, psutil,
rich and websockets to older releases than vLLM and the SDK here need, so it
is not measured in the same run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min.gateway import GatewayConfig, open_gateway
from agentfly_min.local import VLLMServer, cpu_engine_config
from agentfly_min.tools import calculator
from agentfly_min.transports.vllm import VLLMEngine, vllm_generate

from .conftest import WORK, RatioReporter, paired, timed

AGENTS, CALLS, ANSWER_TOKENS = 16, 2, 32
FORCED = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\+[1-9]"\}\}\n</tool_call>'
TOOLS = [msgspec.to_builtins(calculator.schema)]
UNPARSED: list[str] = []  # forced calls a server answered as text (none is expected)


@pytest.fixture(scope="module")
def stacks(tiny_model_path: Path) -> Iterator[tuple[VLLMEngine, VLLMServer]]:
    engine = VLLMEngine.start(cpu_engine_config(1024), tiny_model_path)
    try:
        with VLLMServer(tiny_model_path, work_dir=WORK, max_model_len=1024) as server:
            yield engine, server
    finally:
        engine.close()


async def agents(model: str, url_of: Any) -> int:
    """The workload (agent ``i`` talks to ``url_of(i)``): completion tokens."""
    tokens = turns = 0

    async def agent(index: int) -> None:
        async with openai.AsyncOpenAI(base_url=url_of(index), api_key="unused", max_retries=0, timeout=300) as client:
            await conversation(client, index)

    async def conversation(client: openai.AsyncOpenAI, index: int) -> None:
        nonlocal tokens, turns
        messages: list[Any] = [{"role": "user", "content": f"Task {index}: what is {index % 9 + 1}+2?"}]
        for turn in range(CALLS + 1):
            last = turn == CALLS
            extra = {"ignore_eos": True} if last else {"structured_outputs": {"regex": FORCED}}
            answer = await client.chat.completions.create(
                model=model, messages=messages, tools=TOOLS, max_tokens=ANSWER_TOKENS if last else 64, temperature=1.0, extra_body=extra
            )
            assert answer.usage is not None
            tokens += answer.usage.completion_tokens
            turns += 1
            message = answer.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if last:
                return
            if not message.tool_calls:  # the server did not read the forced call as one: say so, go on
                UNPARSED.append(f"{url_of(index)}: {message.content!r}")
                messages.append({"role": "user", "content": "3"})
                continue
            for call in message.tool_calls:
                assert call.type == "function"
                messages.append({"role": "tool", "tool_call_id": call.id, "content": await calculator.call(call.function.arguments)})

    async with anyio.create_task_group() as tg:
        for index in range(AGENTS):
            tg.start_soon(agent, index)
    assert turns == AGENTS * (CALLS + 1)
    return tokens


@pytest.mark.parametrize("backend", ["asyncio"])
def test_gateway_vs_vllm_openai_server(
    benchmark: BenchmarkFixture, stacks: tuple[VLLMEngine, VLLMServer], report_ratio: RatioReporter, backend: str
) -> None:
    engine, server = stacks

    async def through_gateway() -> int:
        async with open_gateway(vllm_generate(engine), engine.tokenizer, GatewayConfig(max_model_len=1024)) as gateway:
            sessions = [gateway.open_session({"id": f"t{i}"}) for i in range(AGENTS)]
            done = await agents("policy", lambda i: sessions[i].base_url)
            for session in sessions:
                trajectories = await gateway.end_session(session.id)
                assert all(t.token_level for t in trajectories) and sum(t.num_turns for t in trajectories) == CALLS + 1
            return done

    async def straight() -> int:
        return await agents(server.model, lambda i: server.base_url)

    estimate = paired(
        benchmark,
        report_ratio,
        f"{AGENTS} openai-SDK agents x {CALLS + 1} turns, {backend}: through the gateway (in-process engine) vs straight to vLLM's OpenAI server, tokens/s",
        timed(lambda: anyio.run(through_gateway, backend=backend)),
        timed(lambda: anyio.run(straight, backend=backend)),
        budget_seconds=120.0,
    )
    turns = AGENTS * (CALLS + 1)
    ours_cpu = 1000 * sum(s.cpu_seconds for s in estimate.ours) / (turns * len(estimate.ours))
    raw_cpu = 1000 * sum(s.cpu_seconds for s in estimate.raw) / (turns * len(estimate.raw))
    benchmark.extra_info.update(cpu_ms_per_turn=ours_cpu, raw_cpu_ms_per_turn=raw_cpu, unparsed_calls=UNPARSED)
    if UNPARSED:
        report_ratio(f"forced calls answered as text: {len(UNPARSED)}, e.g. {UNPARSED[0][:160]}")
    report_ratio(f"CPU of this process per turn: gateway side {ours_cpu:.2f} ms, straight side {raw_cpu:.2f} ms")
