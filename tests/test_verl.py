"""The verl transport and agent-loop integration against verl's real rollout
stack: a local Ray, verl's own vLLM server actor on the tiny model, verl's
load balancer and verl's ``LLMServerClient``. One cluster for the module."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import Agent, AsyncVerlConfig, Completion, Generate, Request, TransientError, rollout
from agentfly_min.testing.verl_cpu import VerlCluster
from agentfly_min.tools import calculator
from agentfly_min.transports.verl import open_verl

from .conftest import WORK
from .support import says
from .vllm_support import assert_gone, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FORCED_CALL = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\*[1-9]"\}\}\n</tool_call>'


@pytest.fixture(scope="module")
def cluster(tiny_model_path: Path) -> Iterator[VerlCluster]:
    before = {p.pid for p in engine_children()}
    with VerlCluster(tiny_model_path, work_dir=WORK, aliases=2) as running:
        started = [p for p in engine_children() if p.pid not in before]
        assert started, "Ray and the server run as child processes"
        yield running
    assert_gone(started, timeout=60)  # Ray, the server actor and its engine


def forcing_first_turn(inner: Generate) -> Generate:
    """Make the random model call the calculator on its first turn (a regex
    constraint), so episodes really have several turns."""

    async def generate(request: Request) -> Completion:
        first = len(request.messages) == 1
        return await inner(msgspec.structs.replace(request, regex=FORCED_CALL) if first else request)

    return generate


async def test_single_request_tokens_logprobs_and_weight_version(cluster: VerlCluster) -> None:
    await anyio.to_thread.run_sync(cluster.call, "set_global_steps", 3)
    async with open_verl(AsyncVerlConfig(max_new_tokens=16), cluster.client, _tokenizer(cluster)) as generate:
        completion = await generate(Request(prompt_ids=(1, 379, 201, 74), ignore_eos=True, request_id="one"))
    (output,) = completion.outputs
    assert output.token_ids is not None and len(output.token_ids) == 16
    assert output.logprobs is not None and len(output.logprobs) == 16 and all(lp <= 0 for lp in output.logprobs)
    assert output.finish_reason == "length"
    assert completion.weight_version == 3 and completion.prompt_ids == (1, 379, 201, 74)


async def test_n_samples_and_sampling_params_untouched(cluster: VerlCluster) -> None:
    shared = {"repetition_penalty": 1.0}
    async with open_verl(AsyncVerlConfig(max_new_tokens=8), cluster.client, _tokenizer(cluster), sampling_params=shared) as generate:
        completion = await generate(Request(messages=says("hi"), n=3, ignore_eos=True, request_id="many"))
    assert len(completion.outputs) == 3 and all(len(o.token_ids or ()) == 8 for o in completion.outputs)
    assert shared == {"repetition_penalty": 1.0}


async def test_multi_turn_episodes_are_sticky_and_token_exact(cluster: VerlCluster) -> None:
    tokenizer = _tokenizer(cluster)
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
        assert t.num_turns >= 2 and t.token_level and t.tool_errors == 0
        assert len(servers_of[t.request_id]) == 1  # every turn went to one server
        assert sum(1 for rid, _ in routing if rid == t.request_id) == t.num_turns
        masked_in = [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m == 1]
        assert masked_in == [i for turn in sampled[t.request_id] for i in turn]
        assert len(t.response_logprobs) == len(t.response_ids)
        assert re.fullmatch(r"\d+", t.messages[2].content or "")  # the calculator answered
    assert len({s for servers in servers_of.values() for s in servers}) == 2  # both ids were in play


async def sampling_started(cluster: VerlCluster) -> None:
    """Wait until a request is in flight and has sampled for a moment."""
    with anyio.fail_after(30):
        while not await anyio.to_thread.run_sync(cluster.inflight):
            await anyio.sleep(0.05)
    await anyio.sleep(0.5)


async def test_an_injected_abort_is_resumed(cluster: VerlCluster) -> None:
    config = AsyncVerlConfig(max_new_tokens=800, on_abort="resume")
    async with open_verl(config, cluster.client, _tokenizer(cluster)) as generate:
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


async def test_abort_as_error_when_configured(cluster: VerlCluster) -> None:
    config = AsyncVerlConfig(max_new_tokens=800, on_abort="error")
    errors: list[TransientError] = []

    async def long() -> None:
        try:
            await generate(Request(prompt_ids=(1, 379, 201), ignore_eos=True, request_id="abort-err"))
        except TransientError as exc:
            errors.append(exc)

    async with open_verl(config, cluster.client, _tokenizer(cluster)) as generate:
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
    async with open_verl(config, cluster.client, _tokenizer(cluster)) as generate:

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


async def test_agent_loop_output_through_verls_own_code(cluster: VerlCluster) -> None:
    import torch
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry

    from agentfly_min.integrations.verl import AgentflyAgentLoop

    assert "agentfly_min" in _agent_loop_registry  # registered under the name users put in config
    trainer = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 512, "response_length": 256}}, "data": {}})
    loop = AgentflyAgentLoop(
        trainer_config=DictConfigWrap(trainer),
        server_manager=cluster.client,
        tokenizer=_tokenizer(cluster),
        processor=None,
        dataset_cls=None,
        data_config=DictConfigWrap(trainer.data),
        max_turns=2,
    )
    verl_sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    before = dict(verl_sampling)
    output = await loop.run(verl_sampling, raw_prompt=[{"role": "user", "content": "2+2?"}], reward_model={"ground_truth": "4"}, index=5)
    assert verl_sampling == before  # verl's dict, shared by the batch, is not mutated
    assert len(output.response_ids) == len(output.response_mask) == len(output.response_logprobs or ())
    assert 0 < len(output.response_ids) <= 256
    assert output.reward_score in (0.0, 1.0)
    assert output.extra_fields["agentfly_error"] is None
    tensors = output.as_dict()  # verl's own conversion for the trainer
    assert tensors["prompts"].dtype == torch.int64 and tensors["prompts"].shape == (len(output.prompt_ids),)
    assert tensors["responses"].shape == tensors["response_mask"].shape == tensors["rollout_log_probs"].shape
    assert tensors["rm_scores"][-1].item() == output.reward_score
    assert set(tensors["response_mask"].tolist()) <= {0, 1}


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(cluster: VerlCluster) -> Any:
    if cluster.model not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[cluster.model] = AutoTokenizer.from_pretrained(cluster.model)
    return _TOKENIZERS[cluster.model]
