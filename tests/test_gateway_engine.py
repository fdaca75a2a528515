"""The gateway in front of a real vLLM engine (CPU build, the tiny model),
driven by the openai SDK: the trajectory equals what our own loop records on
the same engine, and a client that leaves mid-stream aborts its request in
the engine. One engine for the module, as in test_vllm_engine.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest

from agentfly_min import Agent, Completion, Generate, Request, run_agent
from agentfly_min.gateway import GatewayConfig, open_gateway
from agentfly_min.tools import calculator
from agentfly_min.transports.vllm import VLLMEngine, vllm_generate

from .vllm_support import ENGINE_CONFIG, assert_gone, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FORCED = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\+[1-9]"\}\}\n</tool_call>'
SCHEMA = msgspec.to_builtins(calculator.schema)


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Iterator[VLLMEngine]:
    before = {p.pid for p in engine_children()}
    started = VLLMEngine.start(ENGINE_CONFIG, tiny_model_path)
    children = [p for p in engine_children() if p.pid not in before]
    yield started
    started.close()
    assert_gone(children)


async def test_an_sdk_agent_through_the_gateway_records_what_our_loop_records(engine: VLLMEngine) -> None:
    """Greedy sampling, the first turn forced into a tool call by a regex
    (vLLM's ``structured_outputs`` extension, which the gateway takes as
    vLLM's server does): the same tokens come out both ways, so the ids,
    mask and logprobs must agree."""
    tokenizer = engine.tokenizer
    generate = vllm_generate(engine)
    async with open_gateway(generate, tokenizer, GatewayConfig(max_model_len=1024)) as gateway:
        session = gateway.open_session({"id": "e1"})
        async with openai.AsyncOpenAI(base_url=session.base_url, api_key="unused", max_retries=0) as client:
            messages: list[Any] = [{"role": "user", "content": "What is 2+3?"}]
            first = await client.chat.completions.create(
                model="p", messages=messages, tools=[SCHEMA], temperature=0, max_tokens=64, extra_body={"structured_outputs": {"regex": FORCED}}
            )
            message = first.choices[0].message
            assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
            call = message.tool_calls[0]
            assert call.type == "function"
            messages.append(message.model_dump(exclude_none=True))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": await calculator.call(call.function.arguments)})
            await client.chat.completions.create(model="p", messages=messages, tools=[SCHEMA], temperature=0, max_tokens=24)
        [ours] = await gateway.end_session(session.id)
    assert ours.error is None and ours.token_level and ours.num_turns == 2

    def forced_first(inner: Generate) -> Generate:
        async def wrapped(request: Request) -> Completion:
            first = len(request.messages) == 1
            return await inner(msgspec.structs.replace(request, regex=FORCED if first else None, max_new_tokens=64 if first else 24))

        return wrapped

    agent = Agent(model_name_or_path="tiny", tools=[calculator], max_turns=2, temperature=0.0, max_model_len=1024)
    theirs = await run_agent(agent, forced_first(generate), {"id": "e1", "question": "What is 2+3?"}, tokenizer=tokenizer)
    assert theirs.error is None and theirs.num_turns == 2
    assert ours.prompt_ids == theirs.prompt_ids
    assert ours.response_ids == theirs.response_ids
    assert ours.response_mask == theirs.response_mask
    assert ours.response_logprobs is not None and theirs.response_logprobs is not None
    assert ours.response_logprobs == pytest.approx(theirs.response_logprobs, abs=1e-4)


async def test_a_client_that_leaves_mid_stream_aborts_the_engine_request(engine: VLLMEngine) -> None:
    tokenizer = engine.tokenizer
    async with open_gateway(vllm_generate(engine), tokenizer) as gateway:
        session = gateway.open_session()
        body = {
            "model": "p",
            "messages": [{"role": "user", "content": "Say ab for a long time."}],
            "max_tokens": 700,
            "stream": True,
            "structured_outputs": {"regex": "(ab){340}"},  # long, whatever the random model prefers
        }
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream("POST", f"{session.base_url}/chat/completions", content=json.dumps(body).encode()) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                first = await lines.__anext__()  # the stream began (its role chunk); the turn is being sampled
                assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
                with anyio.fail_after(30):
                    while await engine.unfinished_requests() == 0:
                        await anyio.sleep(0.01)
            # Out of the block: the client closed the connection mid-stream.
        # The client left: the engine aborts the request. Sampled to its end it
        # takes about 4 s here (680 tokens), so a count back at zero within
        # 1.5 s is the abort, not the end.
        with anyio.fail_after(1.5):
            while await engine.unfinished_requests() != 0:
                await anyio.sleep(0.05)
        [trajectory] = await gateway.end_session(session.id)
    assert trajectory.num_turns == 0 and trajectory.error is not None  # nothing was recorded of it
