"""The verl transport and agent-loop integration against verl's real rollout
stack: a local Ray, verl's own vLLM server actor on the tiny model, verl's
load balancer and verl's ``LLMServerClient``. One cluster for the module."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import pytest

from agentfly_min import Agent, AsyncVerlConfig, Completion, Generate, Request, TransientError, open_stream, rollout
from agentfly_min.stream import Chunk, collect_chunks
from agentfly_min.structured import decode_output, json_schema_format
from agentfly_min.local._shm import shm_entries
from agentfly_min.local.verl_cluster import VerlCluster
from agentfly_min.tools import calculator
from agentfly_min.transports.verl import open_verl

from .conftest import WORK
from .support import says
from .vllm_support import COMPACT_JSON, assert_gone, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FORCED_CALL = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\*[1-9]"\}\}\n</tool_call>'
# Later turns are held to plain words: left free, the random model samples a
# stray <tool_call> token now and then (one token in Qwen's vocabulary), which
# makes the episode's tool-error count depend on luck.
PLAIN_ANSWER = r"[a-z]{1,8}( [a-z]{1,8}){0,4}"


@pytest.fixture(scope="module")
def cluster(tiny_model_path: Path) -> Iterator[VerlCluster]:
    before = {p.pid for p in engine_children()}
    shm_before = shm_entries()
    compact = {"structured_outputs_config": COMPACT_JSON}
    with VerlCluster(tiny_model_path, work_dir=WORK, aliases=2, engine_kwargs=compact) as running:
        started = [p for p in engine_children() if p.pid not in before]
        assert started, "Ray and the server run as child processes"
        assert shm_entries() - shm_before, "the engine's queues live in /dev/shm (else this check is void)"
        yield running
    assert_gone(started, timeout=60)  # Ray, the server actor, its engine and the agent-loop workers
    assert shm_entries() - shm_before == set()  # no shared memory left behind


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


async def test_verls_stream_is_one_chunk_that_collects_to_the_plain_completion(cluster: VerlCluster) -> None:
    request = Request(prompt_ids=(1, 379, 201), max_new_tokens=12, ignore_eos=True, seed=5, top_k=20, min_p=0.05, request_id="streamed")
    settings = AsyncVerlConfig(max_new_tokens=12)
    async with open_verl(settings, cluster.client, _tokenizer(cluster)) as generate:
        plain = await generate(request)
    async with open_stream(settings, server=cluster.client, tokenizer=_tokenizer(cluster)) as stream:
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
    async with open_verl(AsyncVerlConfig(max_new_tokens=64), cluster.client, _tokenizer(cluster)) as generate:
        completion = await generate(request)
    assert completion.outputs[0].finish_reason == "stop", completion.outputs[0].text
    assert isinstance(decode_output(completion, Pick), Pick)


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


# --- verl's trainer path: AgentLoopManager -> Ray AgentLoopWorker -> our loop ---

PROMPT_LENGTH, RESPONSE_LENGTH = 512, 128
AGENT_LOOPS = """\
- name: agentfly_math
  _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
  agent_tools: [agentfly_min.tools.calculator]
  reward: tests.verl_rewards.answer_over_100
  max_turns: 2
  max_new_tokens: 48
"""
LONG_PROMPT = " ".join(f"word{i}" for i in range(300))  # thousands of tokens, far over PROMPT_LENGTH


def verl_batch(rows: list[tuple[str, str, int]], *, explode: tuple[int, ...] = ()) -> Any:
    """A batch with the non-tensor fields verl's RLHFDataset gives each row:
    (agent_name, question, answer) per row; rows in ``explode`` carry an
    ``extra_info`` flag that makes the test reward raise."""
    import numpy as np
    from verl.protocol import DataProto

    def column(values: list[Any]) -> Any:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array

    return DataProto.from_dict(
        non_tensors={
            "raw_prompt": column([[{"role": "user", "content": question}] for _, question, _ in rows]),
            "agent_name": column([name for name, _, _ in rows]),
            "index": column(list(range(len(rows)))),
            "data_source": column(["agentfly_test"] * len(rows)),
            "reward_model": column([{"style": "rule", "ground_truth": str(answer)} for _, _, answer in rows]),
            "extra_info": column([{"index": i, "split": "train", "explode": i in explode} for i in range(len(rows))]),
            "tools_kwargs": column([{} for _ in rows]),
            "interaction_kwargs": column([{} for _ in rows]),
            "uid": column([f"uid-{i}" for i in range(len(rows))]),
        },
        meta_info={"global_steps": 1, "validate": False},
    )


@pytest.fixture(scope="module")
def trainer_manager(cluster: VerlCluster) -> Any:
    """verl's AgentLoopManager, made from a composed trainer config exactly as
    a trainer makes it, with our loop named in the agent-loop YAML."""
    path = WORK / "agent_loops.yaml"
    path.write_text(AGENT_LOOPS)
    config = cluster.trainer_config(agent_loop_config_path=path, prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH)
    return cluster.agent_loop_manager(config)


def _response_lengths(out: Any) -> list[int]:
    return [int(n) for n in out.batch["attention_mask"][:, PROMPT_LENGTH:].sum(dim=1)]


def test_trainer_path_mixed_batch_with_an_overlong_prompt(cluster: VerlCluster, trainer_manager: Any) -> None:
    cluster.call("set_global_steps", 5)
    rows = [
        ("agentfly_math", LONG_PROMPT, 11),  # passes verl's dataset filter by words, not by tokens
        ("agentfly_min", "2+2?", 4),  # the registered name: no YAML entry
        ("single_turn_agent", "2+2?", 4),
        ("tool_agent", "3+3?", 6),
        ("agentfly_math", "5+5?", 37),
        ("agentfly_math", "6+6?", 12),  # its reward raises
    ]
    out = trainer_manager.generate_sequences(verl_batch(rows, explode=(5,)))
    batch, extra = out.batch, out.non_tensor_batch
    assert batch["prompts"].shape == (6, PROMPT_LENGTH)
    assert batch["responses"].shape == batch["response_mask"].shape == batch["rollout_log_probs"].shape == (6, RESPONSE_LENGTH)
    prompt_lengths = [int(n) for n in batch["attention_mask"][:, :PROMPT_LENGTH].sum(dim=1)]
    assert prompt_lengths[0] == PROMPT_LENGTH and extra["agentfly_prompt_tokens_dropped"][0] > 0  # capped, not crashed
    assert extra["agentfly_prompt_tokens_dropped"][1] == 0 and prompt_lengths[1] < PROMPT_LENGTH
    ours = [0, 1, 4, 5]
    assert [extra["agentfly_failed"][i] for i in ours] == [False, False, False, True]
    assert [extra["agentfly_failed"][i] for i in (2, 3)] == [None, None]  # verl's own loops' rows
    for i in (0, 1, 4):
        assert extra["agentfly_error"][i] is None
        assert extra["min_global_steps"][i] == extra["max_global_steps"][i] == 5
        versions = extra["agentfly_token_versions"][i]
        assert versions is not None and set(versions) <= {5, -1} and 5 in versions
        mask = batch["response_mask"][i, : _response_lengths(out)[i]].tolist()
        assert [v == 5 for v in versions[: len(mask)]] == [m == 1 for m in mask]
        assert extra["__num_turns__"][i] >= 2
    assert extra["__num_turns__"][2] == 2  # verl's single turn: prompt + answer, as ours count it
    # The failed row: prompt and response kept, nothing of it trains, a one-line error.
    assert prompt_lengths[5] > 0 and _response_lengths(out)[5] > 0
    assert int(batch["response_mask"][5].sum()) == 0
    error = extra["agentfly_error"][5]
    assert "boom" in error and "\n" not in error and "\x1b" not in error
    logprobs = batch["rollout_log_probs"]
    for i in (0, 1, 4):
        sampled = batch["response_mask"][i].bool()
        assert bool((logprobs[i][sampled] <= 0).all()) and bool((logprobs[i][sampled] < 0).any())


def test_trainer_path_rewards_reach_rm_scores(cluster: VerlCluster, trainer_manager: Any) -> None:
    rows = [("agentfly_math", "1+1?", 11), ("agentfly_math", "2+2?", 37), ("agentfly_min", "3+3?", 6), ("agentfly_math", "4+4?", 50)]
    out = trainer_manager.generate_sequences(verl_batch(rows, explode=(3,)))
    scores = out.batch["rm_scores"]  # present: every row of the batch has a reward
    lengths = _response_lengths(out)
    for i, expected in enumerate([0.11, 0.37, None, 0.0]):
        row = scores[i].tolist()
        nonzero = [k for k, value in enumerate(row) if value != 0]
        assert nonzero in ([lengths[i] - 1], [])  # the reward sits on the last response token
        if expected is not None:
            assert row[lengths[i] - 1] == pytest.approx(expected)
        else:
            assert row[lengths[i] - 1] in (0.0, 1.0)  # the default math reward
    assert list(out.non_tensor_batch["agentfly_failed"]) == [False, False, False, True]


def test_worker_without_logprobs_mixes_with_verls_loops(cluster: VerlCluster) -> None:
    """calculate_log_probs off: no logprobs asked for or returned by any loop,
    so verl can stack a batch mixing ours and its single-turn loop. (An
    in-process AgentLoopWorker: the same code a Ray worker runs.)"""
    import asyncio

    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    config = cluster.trainer_config(prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH, calculate_log_probs=False)
    worker = AgentLoopWorker(config, cluster.client)
    rows = [("agentfly_min", "2+2?", 4), ("single_turn_agent", "2+2?", 4), ("agentfly_min", LONG_PROMPT, 3)]
    out = asyncio.run(worker.generate_sequences(verl_batch(rows)))
    assert "rollout_log_probs" not in out.batch.keys()
    assert out.batch["responses"].shape == (3, RESPONSE_LENGTH)
    assert list(out.non_tensor_batch["agentfly_failed"]) == [False, None, False]


def test_a_tools_key_in_the_yaml_is_refused_with_the_fix(cluster: VerlCluster, tmp_path: Path) -> None:
    import asyncio

    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    path = tmp_path / "agent_loops.yaml"
    path.write_text(AGENT_LOOPS.replace("agentfly_math", "agentfly_old").replace("agent_tools:", "tools:"))
    config = cluster.trainer_config(agent_loop_config_path=path, prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH)
    worker = AgentLoopWorker(config, cluster.client)
    with pytest.raises(Exception, match="name agentfly_min tools under `agent_tools`"):
        asyncio.run(worker.generate_sequences(verl_batch([("agentfly_old", "2+2?", 4)])))
