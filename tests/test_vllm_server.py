"""The client transport against a real vLLM OpenAI-compatible server started
on 127.0.0.1 for this module (the tiny model), stopped at the end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentfly_min import (
    Agent,
    ClientConfig,
    Completion,
    FunctionSchema,
    NamedToolChoice,
    Request,
    ToolSchema,
    open_backend,
    rollout,
)
from agentfly_min.local._shm import shm_entries
from agentfly_min.local import VLLMServer

from .conftest import WORK
from .support import says
from .vllm_support import assert_gone, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[VLLMServer]:
    before = set(p.pid for p in engine_children())
    shm_before = shm_entries()
    with VLLMServer(tiny_model_path, work_dir=WORK, max_model_len=1024) as running:
        started = [p for p in engine_children() if p.pid not in before]
        yield running
    assert_gone(started)
    assert shm_entries() - shm_before == set()  # nothing left in /dev/shm


def config(server: VLLMServer, **kwargs: Any) -> ClientConfig:
    return ClientConfig(base_url=server.base_url, timeout=120, **kwargs)


async def test_chat_completion_and_usage(server: VLLMServer) -> None:
    async with open_backend(config(server)) as generate:
        completion = await generate(Request(messages=says("hello"), max_new_tokens=16, ignore_eos=True))
    assert completion.model == server.model  # found through /v1/models
    assert completion.usage.completion_tokens == 16 and completion.usage.prompt_tokens > 5
    assert completion.outputs[0].finish_reason == "length"


async def test_n_samples(server: VLLMServer) -> None:
    async with open_backend(config(server)) as generate:
        completion = await generate(Request(messages=says("three"), n=3, max_new_tokens=8, ignore_eos=True, logprobs=True))
    assert len(completion.outputs) == 3
    assert completion.usage.completion_tokens == 24
    assert all(o.logprobs is not None and len(o.logprobs) == 8 for o in completion.outputs)


def whitespace_ids(tokenizer: Any) -> dict[int, float]:
    """Tokens that decode to whitespace only: a random model writes JSON
    padding forever unless they are pushed down."""
    return {i: -100.0 for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() == "" and tokenizer.decode([i])}


async def test_tool_call_under_a_named_tool_choice(server: VLLMServer, tokenizer: Any) -> None:
    weather = ToolSchema(
        function=FunctionSchema(
            name="weather",
            description="Weather for a city.",
            parameters={
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["paris", "rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
            strict=True,
        )
    )
    request = Request(
        messages=says("Weather in Rome?"),
        tools=(weather,),
        tool_choice=NamedToolChoice(name="weather"),
        max_new_tokens=64,
        logit_bias=whitespace_ids(tokenizer),
        seed=0,
    )
    async with open_backend(config(server)) as generate:
        completion = await generate(request)
    (call,) = completion.outputs[0].tool_calls
    assert call.function.name == "weather"
    assert json.loads(call.function.arguments)["city"] in ("paris", "rome")


async def test_default_middleware_stack_in_front(server: VLLMServer) -> None:
    results: list[Completion] = []
    stacked = config(server, max_requests_per_minute=6000, max_concurrency=4, max_retries=2)

    async def one(i: int) -> None:
        results.append(await generate(Request(messages=says(f"q{i}"), max_new_tokens=8, ignore_eos=True)))

    async with open_backend(stacked) as generate:
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
    assert len(results) == 12 and all(c.attempts == 1 for c in results)


async def test_agent_loop_over_the_server(server: VLLMServer) -> None:
    client = config(server)
    agent = Agent(model_name_or_path=server.model, backend="client", backend_config=client, max_turns=1, max_new_tokens=12)
    async with open_backend(client) as generate:
        trajectories = await rollout(agent, generate, [{"question": "hi"}, {"question": "bye"}], n=2)
    assert len(trajectories) == 4
    for t in trajectories:
        assert t.error is None and not t.token_level and t.num_turns == 1
        assert t.messages[-1].role == "assistant" and t.usage.completion_tokens > 0
