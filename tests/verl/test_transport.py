"""The verl transport against verl's real rollout stack: verl's own vLLM
server actor on the tiny model, verl's load balancer and its clients (the
base ``LLMServerClient`` and the ``FullyAsyncLLMServerClient`` of its async
trainers)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Literal

import anyio
import msgspec
import pytest

from agentfly_min import Agent, AsyncVerlConfig, Completion, Generate, Request, TransientError, open_stream, rollout, run_agent
from agentfly_min.local.verl_cluster import VerlCluster
from agentfly_min.stream import Chunk, collect_chunks
from agentfly_min.structured import decode_output, json_schema_format
from agentfly_min.tools import calculator
from agentfly_min.transports.verl import open_verl

from ..support import says
from .conftest import tokenizer_of

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FORCED_CALL = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\*[1-9]"\}\}\n</tool_call>'
# Later turns are held to plain words: left free, the random model samples a
# stray <tool_call> token now and then (one token in Qwen's vocabulary), which
# makes the episode's tool-error count depend on luck.
PLAIN_ANSWER = r"[a-z]{1,8}( [a-z]{1,8}){0,4}"


def forcing_first_turn(inner: Generate) -> Generate:
    """Make the random model call the calculator on its first turn and answer
    in plain words after it (regex constraints), so every episode has exactly
    two turns whatever the random weights sample."""

    async def generate(request: Request) -> Completion:
        first = len(request.messages) == 1
        return await inner(msgspec.structs.replace(request, regex=FORCED_CALL if first else PLAIN_ANSWER))

    return generate


async def test_single_request_tokens_logprobs_and_weight_version(cluster: VerlCluster) -> None:
    await anyio.to_thread.run_sync(cluster.call, "set_global_steps", 3)
    async with open_verl(AsyncVerlConfig(max_new_tokens=16), cluster.client, tokenizer_of(cluster)) as generate:
        completion = await generate(Request(prompt_ids=(1, 379, 201, 74), ignore_eos=True, request_id="one"))
    (output,) = completion.outputs
    assert output.token_ids is not None and len(output.token_ids) == 16
    assert output.logprobs is not None and len(output.logprobs) == 16 and all(lp <= 0 for lp in output.logprobs)
    assert output.finish_reason == "length"
    assert completion.weight_version == 3 and completion.prompt_ids == (1, 379, 201, 74)


async def test_n_samples_and_sampling_params_untouched(cluster: VerlCluster) -> None:
    shared = {"repetition_penalty": 1.0}
    async with open_verl(AsyncVerlConfig(max_new_tokens=8), cluster.client, tokenizer_of(cluster), sampling_params=shared) as generate:
        completion = await generate(Request(messages=says("hi"), n=3, ignore_eos=True, request_id="many"))
    assert len(completion.outputs) == 3 and all(len(o.token_ids or ()) == 8 for o in completion.outputs)
    assert shared == {"repetition_penalty": 1.0}


async def test_verls_stream_is_one_chunk_that_collects_to_the_plain_completion(cluster: VerlCluster) -> None:
    request = Request(prompt_ids=(1, 379, 201), max_new_tokens=12, ignore_eos=True, seed=5, top_k=20, min_p=0.05, request_id="streamed")
    settings = AsyncVerlConfig(max_new_tokens=12)
    async with open_verl(settings, cluster.client, tokenizer_of(cluster)) as generate:
        plain = await generate(request)
    async with open_stream(settings, server=cluster.client, tokenizer=tokenizer_of(cluster)) as stream:
        chunks: list[Chunk] = []
        async with stream(request) as incoming:
            async for chunk in incoming:
                chunks.append(chunk)
    assert len(chunks) == 1  # verl has no streaming: the whole answer at once
    streamed = collect_chunks(chunks)
    assert [o.token_ids for o in streamed.outputs] == [o.token_ids for o in plain.outputs]
    assert streamed.outputs[0].logprobs == pytest.approx(plain.outputs[0].logprobs, abs=1e-4)


async def test_a_json_schema_response_format_constrains_verls_server(cluster: VerlCluster) -> None:
    class Pick(msgspec.Struct, frozen=True):
        choice: Literal["red", "green", "blue"]
        ok: bool

    request = Request(messages=says("pick"), max_new_tokens=64, temperature=0.0, response_format=json_schema_format(Pick), request_id="json")
    async with open_verl(AsyncVerlConfig(max_new_tokens=64), cluster.client, tokenizer_of(cluster)) as generate:
        completion = await generate(request)
    assert completion.outputs[0].finish_reason == "stop", completion.outputs[0].text
    assert isinstance(decode_output(completion, Pick), Pick)


async def test_multi_turn_episodes_are_sticky_and_token_exact(cluster: VerlCluster) -> None:
    tokenizer = tokenizer_of(cluster)
    sampled: dict[str, list[tuple[int, ...]]] = defaultdict(list)

    def record(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            completion = await inner(request)
            assert request.request_id is not None
            sampled[request.request_id].append(completion.outputs[0].token_ids or ())
            return completion

        return generate

    agent = Agent(model_name_or_path=cluster.model, tools=[calculator], max_turns=3, max_new_tokens=64, max_response_tokens=400, backend="async_verl")
    seen_before = len(cluster.routing_log())
    async with open_verl(AsyncVerlConfig(), cluster.client, tokenizer) as generate:
        trajectories = await rollout(agent, record(forcing_first_turn(generate)), [{"question": f"{i}*{i}?"} for i in range(4)], tokenizer=tokenizer)
    routing = cluster.routing_log()[seen_before:]
    servers_of: dict[str, set[str]] = defaultdict(set)
    for request_id, server_id in routing:
        servers_of[request_id].add(server_id)
    for t in trajectories:
        assert t.error is None, t.error
        assert t.num_turns == 2 and t.token_level and t.tool_errors == 0, [(m.role, m.text[:300]) for m in t.messages]
        assert len(servers_of[t.request_id]) == 1  # every turn went to one server
        assert sum(1 for rid, _ in routing if rid == t.request_id) == t.num_turns
        masked_in = [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m == 1]
        assert masked_in == [i for turn in sampled[t.request_id] for i in turn]
        assert t.response_logprobs is not None and len(t.response_logprobs) == len(t.response_ids)
        assert re.fullmatch(r"\d+", t.messages[2].text)  # the calculator answered
    assert len({s for servers in servers_of.values() for s in servers}) == 2  # both ids were in play


async def sampling_started(cluster: VerlCluster) -> None:
    """Wait until a request is in flight and has sampled for a moment."""
    with anyio.fail_after(30):
        while not await anyio.to_thread.run_sync(cluster.inflight):
            await anyio.sleep(0.05)
    await anyio.sleep(0.5)


async def test_an_injected_abort_is_resumed(cluster: VerlCluster) -> None:
    await anyio.to_thread.run_sync(cluster.call, "set_global_steps", 6)
    config = AsyncVerlConfig(max_new_tokens=800, on_abort="resume")
    async with open_verl(config, cluster.client, tokenizer_of(cluster)) as generate:
        async with anyio.create_task_group() as tg:
            results: list[Completion] = []

            async def long() -> None:
                results.append(await generate(Request(prompt_ids=(1, 379, 201), ignore_eos=True, request_id="abort-me")))

            tg.start_soon(long)
            await sampling_started(cluster)
            await anyio.to_thread.run_sync(cluster.call, "abort_all_requests")
            await anyio.to_thread.run_sync(cluster.call, "set_global_steps", 7)
            await anyio.to_thread.run_sync(cluster.call, "resume_generation")
    (completion,) = results
    output = completion.outputs[0]
    assert output.token_ids is not None and len(output.token_ids) == 800  # partial + resumed
    assert output.logprobs is not None and len(output.logprobs) == 800
    assert completion.weight_version == 7  # finished by the new weights, after the abort
    # Every token carries the version that sampled it: old weights first, then new.
    versions = output.weight_versions
    assert versions is not None and len(versions) == 800
    switch = versions.index(7)
    assert 0 < switch and set(versions[:switch]) == {6} and set(versions[switch:]) == {7}


async def test_abort_as_error_when_configured(cluster: VerlCluster) -> None:
    config = AsyncVerlConfig(max_new_tokens=800, on_abort="error")
    errors: list[TransientError] = []

    async def long() -> None:
        try:
            await generate(Request(prompt_ids=(1, 379, 201), ignore_eos=True, request_id="abort-err"))
        except TransientError as exc:
            errors.append(exc)

    async with open_verl(config, cluster.client, tokenizer_of(cluster)) as generate:
        async with anyio.create_task_group() as tg:
            tg.start_soon(long)
            await sampling_started(cluster)
            await anyio.to_thread.run_sync(cluster.call, "abort_all_requests")
            await anyio.to_thread.run_sync(cluster.call, "resume_generation")
    (error,) = errors
    assert "verl aborted the request 1 time(s)" in str(error)


async def test_cancellation_releases_the_server(cluster: VerlCluster) -> None:
    config = AsyncVerlConfig(max_new_tokens=800)
    completed: list[int] = []
    async with open_verl(config, cluster.client, tokenizer_of(cluster)) as generate:

        async def one(i: int) -> None:
            await generate(Request(prompt_ids=(1, 5 + i), ignore_eos=True, request_id=f"cancel-{i}"))
            completed.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
            await sampling_started(cluster)
            tg.cancel_scope.cancel()
        assert completed == []  # all four were cancelled mid-answer
        with anyio.fail_after(30):
            while await anyio.to_thread.run_sync(cluster.inflight):
                await anyio.sleep(0.1)
        completion = await generate(Request(prompt_ids=(1, 379), max_new_tokens=4, ignore_eos=True, request_id="after"))
    assert len(completion.outputs[0].token_ids or ()) == 4


async def test_the_fully_async_clients_own_resume_keeps_the_version_range(cluster: VerlCluster) -> None:
    """verl's FullyAsyncLLMServerClient (its async trainers' client) resumes
    an aborted request itself and reports min/max_global_steps: the answer
    spans versions 6 and 7 and says so, instead of 7 on every token."""
    from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient

    client = cluster.make_client(FullyAsyncLLMServerClient)
    await anyio.to_thread.run_sync(cluster.call, "set_global_steps", 6)
    results: list[Completion] = []
    async with open_verl(AsyncVerlConfig(max_new_tokens=800), client, tokenizer_of(cluster)) as generate:
        async with anyio.create_task_group() as tg:

            async def long() -> None:
                results.append(await generate(Request(prompt_ids=(1, 379, 201), ignore_eos=True, request_id="fa-resume")))

            tg.start_soon(long)
            await sampling_started(cluster)
            await anyio.to_thread.run_sync(cluster.call, "abort_all_requests")
            await anyio.to_thread.run_sync(cluster.call, "set_global_steps", 7)
            await anyio.to_thread.run_sync(cluster.call, "resume_generation")
    (completion,) = results
    output = completion.outputs[0]
    assert output.token_ids is not None and len(output.token_ids) == 800  # resumed by verl's client, not by us
    assert (completion.min_weight_version, completion.weight_version) == (6, 7)
    assert output.weight_versions is None  # which tokens 6 sampled is not known


async def test_partial_rollout_off_an_abort_is_not_resumed(cluster: VerlCluster) -> None:
    """With verl's async_training.partial_rollout off, its fully-async client
    hands an aborted answer back instead of resuming it; the agent loop then
    runs the transport with on_abort="error" (see test_verl_parts), so the
    sample fails instead of continuing on new weights."""
    from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient

    client = cluster.make_client(FullyAsyncLLMServerClient, async_training={"partial_rollout": False})
    errors: list[TransientError] = []
    async with open_verl(AsyncVerlConfig(max_new_tokens=800, on_abort="error"), client, tokenizer_of(cluster)) as generate:
        async with anyio.create_task_group() as tg:

            async def long() -> None:
                try:
                    await generate(Request(prompt_ids=(1, 379, 201), ignore_eos=True, request_id="fa-no-partial"))
                except TransientError as exc:
                    errors.append(exc)

            tg.start_soon(long)
            await sampling_started(cluster)
            await anyio.to_thread.run_sync(cluster.call, "abort_all_requests")
            await anyio.to_thread.run_sync(cluster.call, "resume_generation")
    (error,) = errors
    assert "verl aborted the request 1 time(s)" in str(error)


async def test_a_turn_the_server_clamped_to_the_context_ends_the_episode_with_context(cluster: VerlCluster) -> None:
    """verl's vLLM server clamps max_tokens to the context left and reports
    the cut as "completed" (what this test sees from the real server), so
    only a transport that knows the context can tell it from a stop."""
    tokenizer = tokenizer_of(cluster)
    room = 24
    prompt = tuple([379] * (cluster.max_model_len - room))
    asked = Request(prompt_ids=prompt, max_new_tokens=100, ignore_eos=True, request_id="clamp")
    async with open_verl(AsyncVerlConfig(), cluster.client, tokenizer) as generate:
        (blind,) = (await generate(asked)).outputs
    assert blind.token_ids is not None and len(blind.token_ids) == room  # clamped by the server
    assert blind.finish_reason == "stop"  # ... and reported like a stop
    knowing = AsyncVerlConfig(max_model_len=cluster.max_model_len)
    async with open_verl(knowing, cluster.client, tokenizer) as generate:
        (seen,) = (await generate(asked)).outputs
        assert seen.finish_reason == "length" and len(seen.token_ids or ()) == room

        async def no_eos(request: Request) -> Completion:
            return await generate(msgspec.structs.replace(request, ignore_eos=True))

        words = " ".join(f"word{i}" for i in range(2000))
        filler = tokenizer.decode(tokenizer.encode(words, add_special_tokens=False)[: cluster.max_model_len - 60])
        agent = Agent(model_name_or_path=cluster.model, backend="async_verl", max_new_tokens=100, max_turns=2)
        trajectory = await run_agent(agent, no_eos, {"question": filler}, tokenizer=tokenizer)
    assert trajectory.error is None, trajectory.error
    assert trajectory.finish_reason == "context"
    assert len(trajectory.prompt_ids) + len(trajectory.response_ids) == cluster.max_model_len
