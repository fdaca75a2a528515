"""The client transport against a real vLLM OpenAI-compatible server started
on 127.0.0.1 for this module (the tiny model), stopped at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import psutil
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
    open_stream,
    rollout,
)
from agentfly_min.stream import Chunk, collect_chunks
from agentfly_min.structured import decode_output, json_schema_format
from agentfly_min.local._shm import shm_entries
from agentfly_min.local import VLLMServer

from .conftest import WORK
from .support import says
from .vllm_support import COMPACT_JSON, assert_gone, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


# Pinned to one CPU, as the benchmarks pin it away from the client; the
# last test below checks that every process and thread of it stayed there.
PINNED = frozenset({max(os.sched_getaffinity(0))})


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[VLLMServer]:
    before = set(p.pid for p in engine_children())
    shm_before = shm_entries()
    compact = ("--structured-outputs-config", json.dumps(COMPACT_JSON))
    with VLLMServer(tiny_model_path, work_dir=WORK, max_model_len=1024, extra_args=compact, cpus=PINNED) as running:
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


@pytest.mark.parametrize("token_ids", [False, True], ids=["chat", "token-ids"])
async def test_a_collected_stream_is_the_completion_the_plain_call_gives(server: VLLMServer, token_ids: bool, tokenizer: Any) -> None:
    prompt = tuple(tokenizer.apply_chat_template([{"role": "user", "content": "stream"}], add_generation_prompt=True, return_dict=False))
    request = Request(messages=says("stream"), prompt_ids=prompt if token_ids else None, n=2, max_new_tokens=20, logprobs=True, seed=11)
    settings = config(server, token_ids=token_ids)
    async with open_backend(settings) as generate:
        plain = await generate(request)
    async with open_stream(settings) as stream:
        chunks: list[Chunk] = []
        async with stream(request) as incoming:
            async for chunk in incoming:
                chunks.append(chunk)
    streamed = collect_chunks(chunks)
    assert len([c for c in chunks if c.text]) > len(plain.outputs)  # it came in pieces
    assert streamed.usage == plain.usage and streamed.model == plain.model
    for mine, theirs in zip(streamed.outputs, plain.outputs, strict=True):
        assert (mine.text, mine.token_ids, mine.finish_reason) == (theirs.text, theirs.token_ids, theirs.finish_reason)
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)
    if token_ids:
        assert streamed.prompt_ids == plain.prompt_ids == prompt


def _metric(server: VLLMServer, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


async def test_leaving_a_stream_early_closes_it_and_the_server_stops(server: VLLMServer) -> None:
    before = _metric(server, "vllm:generation_tokens_total")
    async with open_stream(config(server)) as stream:
        received = 0
        async with stream(Request(messages=says("long"), max_new_tokens=900, ignore_eos=True)) as incoming:
            async for chunk in incoming:
                received += 1
                if received >= 3:
                    break
        with anyio.fail_after(20):
            while _metric(server, "vllm:num_requests_running") > 0:
                await anyio.sleep(0.1)
    settled = _metric(server, "vllm:generation_tokens_total")
    await anyio.sleep(0.5)
    assert _metric(server, "vllm:generation_tokens_total") == settled  # nothing is still generating
    assert settled - before < 900  # the request was aborted, not finished


async def test_vllm_accepts_our_sampling_extensions_and_a_json_schema(server: VLLMServer) -> None:
    class Pick(msgspec.Struct, frozen=True):
        choice: Literal["red", "green", "blue"]
        ok: bool

    request = Request(
        messages=says("pick"),
        max_new_tokens=64,
        seed=2,
        temperature=0.0,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        top_k=10,
        min_p=0.01,
        repetition_penalty=1.05,
        response_format=json_schema_format(Pick),
    )
    async with open_backend(config(server)) as generate:
        completion = await generate(request)
    assert completion.outputs[0].finish_reason == "stop", completion.outputs[0].text
    assert isinstance(decode_output(completion, Pick), Pick)


def test_every_process_and_thread_of_a_pinned_server_stays_on_its_cpus(server: VLLMServer) -> None:
    assert server.pid is not None
    group = [p for p in psutil.process_iter() if _group(p.pid) == server.pid]
    assert len(group) >= 2  # the API server and its engine core at least
    threads = [(p.pid, t.id) for p in group for t in p.threads()]
    assert len(threads) > len(group)
    # vLLM may bind its OpenMP threads itself (VLLM_CPU_OMP_THREADS_BIND): none may leave the set.
    assert {tid: os.sched_getaffinity(tid) for _, tid in threads} == {tid: PINNED for _, tid in threads}


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def test_a_client_tokenizer_unlike_the_servers_is_refused_before_any_episode(server: VLLMServer, tokenizer: Any) -> None:
    """With the tiny tokenizer of seed 1 against a server of seed 0,
    token-id episodes finished with no error, token_level=True, no prompt
    mismatch (the server echoes the ids it was sent) and garbage text. The
    server's own /tokenize of a probe text tells the tokenizers apart."""
    from transformers import AutoTokenizer

    from agentfly_min import TokenizerMismatchError
    from agentfly_min.testing import tiny_model

    from .conftest import CACHE

    other = AutoTokenizer.from_pretrained(str(tiny_model(CACHE, seed=1)))
    with pytest.raises(TokenizerMismatchError, match="first difference at id"):
        async with open_backend(config(server, token_ids=True), tokenizer=other):
            pass
    async with open_backend(config(server, token_ids=True), tokenizer=tokenizer) as generate:  # the server's own
        completion = await generate(Request(prompt_ids=tuple(tokenizer.encode("hi", add_special_tokens=False)), max_new_tokens=4))
    assert completion.outputs[0].token_ids is not None


async def test_a_prompt_id_outside_the_vocabulary_is_named_as_such(server: VLLMServer, tokenizer: Any) -> None:
    """vLLM refuses it with HTTP 400; the error used to say that token-level
    requests need a vLLM server, which this is."""
    from agentfly_min import PermanentError

    async with open_backend(config(server, token_ids=True), tokenizer=tokenizer) as generate:
        with pytest.raises(PermanentError, match="outside the model's vocabulary") as caught:
            await generate(Request(prompt_ids=(1, len(tokenizer) + 5000), max_new_tokens=4))
    assert "need a vLLM server" not in str(caught.value)
