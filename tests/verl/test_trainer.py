"""Our agent loop inside verl's trainer machinery, on both trainer paths:
v1 (``main_ppo``'s default: ``AgentLoopManagerTQ`` -> Ray
``AgentLoopWorkerTQ`` -> TransferQueue, sampled by verl's ``ReplayBuffer``)
and the legacy ``AgentLoopManager`` -> Ray ``AgentLoopWorker``; with
verl's reward-loop workers, as its trainers pass them when there is no
reward model. verl's own post-rollout code then runs on what the loops
produced: its advantage computation, its metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from agentfly_min.integrations.verl import agentfly_record
from agentfly_min.local.verl_cluster import VerlCluster

from ..conftest import WORK
from .conftest import PROMPT_LENGTH, RESPONSE_LENGTH, Row, group_keys, legacy_batch, tokenizer_of, v1_batch, wait_for_groups

pytestmark = [pytest.mark.slow]

AGENT_LOOPS = """\
- name: agentfly_math
  _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
  agent_tools: [agentfly_min.tools.calculator]
  reward: tests.verl.rewards.answer_over_100
  max_turns: 2
  max_new_tokens: 48
- name: agentfly_group
  _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
  reward: tests.verl.rewards.one_unless_failing
  max_turns: 1
  max_new_tokens: 16
- name: external_sdk
  _target_: agentfly_min.integrations.verl_gateway.GatewayAgentLoop
  agent: tests.verl.agents.sdk_agent
  reward: tests.verl.rewards.answer_over_100
- name: external_rewriting
  _target_: agentfly_min.integrations.verl_gateway.GatewayAgentLoop
  agent: tests.verl.agents.rewriting_agent
  reward: tests.verl.rewards.answer_over_100
"""
LONG_PROMPT = " ".join(f"word{i}" for i in range(300))  # thousands of tokens, far over PROMPT_LENGTH


def loops_yaml(text: str = AGENT_LOOPS, name: str = "agent_loops.yaml") -> Path:
    path = WORK / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def served(stack: VerlCluster, default_model: Path) -> VerlCluster:
    if stack.model != str(default_model):
        stack.serve(default_model)
    return stack


@pytest.fixture(scope="module")
def legacy(served: VerlCluster) -> Any:
    """The legacy AgentLoopManager with three workers (verl's default is 8:
    chunks of a batch go to different workers and are concatenated) and the
    reward-loop workers."""
    config = served.trainer_config(
        agent_loop_config_path=loops_yaml(), prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH, num_workers=3
    )
    return served.agent_loop_manager(config)


@pytest.fixture(scope="module")
def v1(served: VerlCluster) -> Iterator[tuple[Any, Any]]:
    """verl's v1 AgentLoopManagerTQ (main_ppo's default trainer path) with
    rollout.n = 4 sessions per prompt, its config, TransferQueue started."""
    config = served.trainer_config(
        agent_loop_config_path=loops_yaml(),
        prompt_length=PROMPT_LENGTH,
        response_length=RESPONSE_LENGTH,
        num_workers=2,
        overrides=(
            "actor_rollout_ref.rollout.n=4",
            "algorithm.adv_estimator=grpo",
            # old_log_probs = the rollout's (no actor here to recompute them)
            "algorithm.rollout_correction.bypass_mode=true",
        ),
    )
    yield served.agent_loop_manager(config, v1=True), config


def _lengths(out: Any) -> list[int]:
    return [int(n) for n in out.batch["attention_mask"][:, PROMPT_LENGTH:].sum(dim=1)]


def _records(out: Any) -> list[dict[str, Any] | None]:
    return [agentfly_record(extra) for extra in out.non_tensor_batch["extras"]]


# --- v1: AgentLoopManagerTQ over TransferQueue -----------------------------


def test_v1_runs_our_loop_by_name_and_by_yaml_beside_verls_loops(v1: tuple[Any, Any]) -> None:
    import transfer_queue as tq

    manager, _ = v1
    rows: list[Row] = [
        ("agentfly_min", "2+2?", 4),  # the registered name
        ("agentfly_math", "5+5?", 37),  # the YAML entry
        ("single_turn_agent", "2+2?", 4),
        ("tool_agent", "3+3?", 6),
    ]
    uids = [f"v1-{i}" for i in range(len(rows))]
    manager.generate_sequences(v1_batch(rows, uids=uids))
    assert wait_for_groups(uids) == dict.fromkeys(uids, "finished")
    keys = group_keys(uids)
    assert len(keys) == 4 * len(rows)  # rollout.n sessions each, one output per session
    data = tq.kv_batch_get(keys=keys, partition_id="train")
    tq.kv_clear(keys=[*uids, *keys], partition_id="train")  # the next test samples the buffer
    for key, extra, responses, mask, logprobs, scores in zip(
        keys,
        data["extra_fields"],
        data["responses"].unbind(0),
        data["response_mask"].unbind(0),
        data["rollout_log_probs"].unbind(0),
        data["rm_scores"].unbind(0),
        strict=True,
    ):
        uid = key.rsplit("_", 2)[0]
        record = agentfly_record(getattr(extra, "data", extra))
        if uid in ("v1-2", "v1-3"):
            assert record is None  # verl's own loops
            continue
        assert record is not None and record["failed"] is False, record
        assert 0 < len(responses) == len(mask) == len(logprobs) <= RESPONSE_LENGTH
        assert bool((logprobs[mask.bool()] < 0).any())
        score = float(scores.sum())
        if uid == "v1-1":
            assert score == pytest.approx(0.37)  # tests.verl.rewards.answer_over_100
        else:
            assert score in (0.0, 1.0)  # the default math reward


def test_v1_a_failed_session_leaves_its_group_and_grpo_sees_the_rest(v1: tuple[Any, Any]) -> None:
    """Four sessions of one prompt, all answered right but the fourth, whose
    reward raises. The session is dropped as verl drops a loop that raised:
    verl's sync ReplayBuffer samples the group without it, and verl's own
    advantage step (the v1 trainer's _compute_advantage, GRPO) gives the
    three right answers what GRPO gives them alone: 0. Kept as a row with
    reward 0, it gave each of them +0.5."""
    import transfer_queue as tq
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    manager, config = v1
    uids = ["v1group"]
    manager.generate_sequences(v1_batch([("agentfly_group", "2+2?", 4)], uids=uids))
    assert wait_for_groups(uids) == {"v1group": "failure"}  # verl's status for a group with a failed session
    sampler = config.trainer.v1.sampler
    buffer = ReplayBuffer(
        trainer_mode="sync",
        trainer_config=config.trainer.v1.sync,
        max_off_policy_threshold=sampler.max_off_policy_threshold,
        max_off_policy_strategy=sampler.max_off_policy_strategy,
        sampler_kwargs=sampler.sampler_kwargs,
        train_batch_size=1,
        gen_batch_size=1,
    )
    batch, _ = buffer.sample(global_steps=1, partition_id="train", batch_size=1)
    assert sorted(batch.keys) == [f"v1group_{session}_0" for session in range(3)]
    trainer: Any = SimpleNamespace(config=config)  # what these two steps of verl's trainer read of it
    PPOTrainer._compute_old_log_prob(trainer, batch, metrics={})
    PPOTrainer._compute_advantage(trainer, batch, metrics={})
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages", "rm_scores", "response_mask"])
    advantages = [a for a in data["advantages"].unbind(0)]
    scores = torch.stack([s.sum() for s in data["rm_scores"].unbind(0)])
    assert scores.tolist() == [1.0, 1.0, 1.0]
    assert all(bool((a == 0).all()) for a in advantages)
    masks = torch.nn.utils.rnn.pad_sequence(list(data["response_mask"].unbind(0)), batch_first=True)
    alone, _ = compute_grpo_outcome_advantage(
        token_level_rewards=torch.nn.functional.pad(scores.unsqueeze(-1), (0, masks.shape[1] - 1)),
        response_mask=masks,
        index=np.array(["v1group"] * 3, dtype=object),
    )
    assert bool((alone == 0).all())


def test_v1_runs_an_external_agent_through_the_gateway_one_output_per_segment(served: VerlCluster, v1: tuple[Any, Any]) -> None:
    """openai-SDK agents verl never imports, run by the gateway loop in
    verl's workers: a tool-calling one (one output per session) and one that
    rewrites its history (two token-exact outputs per session, keyed
    ``{uid}_{session}_{index}`` by verl, the reward on both)."""
    import transfer_queue as tq

    manager, _ = v1
    uids = ["gw-sdk", "gw-rewrite"]
    manager.generate_sequences(v1_batch([("external_sdk", "2+2?", 4), ("external_rewriting", "3+3?", 6)], uids=uids))
    assert wait_for_groups(uids) == dict.fromkeys(uids, "finished")
    keys = group_keys(uids)
    assert sorted(keys) == sorted([f"gw-sdk_{s}_0" for s in range(4)] + [f"gw-rewrite_{s}_{i}" for s in range(4) for i in range(2)])
    data = tq.kv_batch_get(keys=keys, partition_id="train")
    tq.kv_clear(keys=[*uids, *keys], partition_id="train")
    for key, extra, prompts, responses, mask, logprobs, scores in zip(
        keys,
        data["extra_fields"],
        data["prompts"].unbind(0),
        data["responses"].unbind(0),
        data["response_mask"].unbind(0),
        data["rollout_log_probs"].unbind(0),
        data["rm_scores"].unbind(0),
        strict=True,
    ):
        uid, _, index = key.rsplit("_", 2)
        record = agentfly_record(getattr(extra, "data", extra))
        assert record is not None and record["failed"] is False, record
        assert record["segments"] == (2 if uid == "gw-rewrite" else 1) and record["segment"] == int(index)
        assert 0 < len(responses) == len(mask) == len(logprobs) <= RESPONSE_LENGTH
        assert bool((logprobs[mask.bool()] < 0).any()) and bool((logprobs[~mask.bool()] == 0).all())
        assert float(scores.sum()) == pytest.approx(0.04 if uid == "gw-sdk" else 0.06)
        if uid == "gw-rewrite":  # each segment's prompt is a fresh render of its own first request
            text = tokenizer_of(served).decode(prompts.tolist())
            assert ("Earlier you said" in text) == (index == "1")


# --- legacy: AgentLoopManager -----------------------------------------------


def test_legacy_mixed_batches_over_several_workers_under_reward_workers(served: VerlCluster, legacy: Any) -> None:
    """Nine rows in chunks of three (one per agent-loop worker): ours only,
    verl's only, and a mix. verl's reward-loop workers score verl's rows
    (reward_extra_info {"acc": ...}); our rows carry the same key for our
    reward, so verl's _postprocess neither raises KeyError nor drops acc,
    and DataProto.concat finds the same columns in every chunk."""
    served.call("set_global_steps", 5)
    rows: list[Row] = [
        ("agentfly_math", "1+1?", 11), ("agentfly_min", "2+2?", 4), ("agentfly_math", "3+3?", 37),
        ("single_turn_agent", "2+2?", 4), ("tool_agent", "3+3?", 6), ("single_turn_agent", "4+4?", 8),
        ("single_turn_agent", "5+5?", 10), ("agentfly_math", "6+6?", 50), ("tool_agent", "7+7?", 14),
    ]  # fmt: skip
    out = legacy.generate_sequences(legacy_batch(rows))
    assert out.batch["responses"].shape == (9, RESPONSE_LENGTH)
    acc = out.non_tensor_batch["acc"]
    assert [acc[i] for i in (0, 2, 7)] == pytest.approx([0.11, 0.37, 0.50])  # our reward, as verl's naive manager keys it
    assert all(acc[i] in (0.0, 1.0) for i in (3, 4, 5, 6, 8))  # verl's gsm8k scoring of its rows
    records = _records(out)
    assert [r is not None for r in records] == [True, True, True, False, False, False, False, True, False]
    for i in (0, 1, 2, 7):
        record = records[i]
        assert record is not None and record["failed"] is False
        assert out.non_tensor_batch["min_global_steps"][i] == out.non_tensor_batch["max_global_steps"][i] == 5
        versions = record["token_versions"]
        assert versions is not None and set(versions) <= {5, -1}
        mask = out.batch["response_mask"][i, : _lengths(out)[i]].tolist()
        assert [v == 5 for v in versions[: len(mask)]] == [m == 1 for m in mask]
    scores = out.batch["rm_scores"]
    for i in (0, 2, 7):
        assert float(scores[i].sum()) == pytest.approx(float(acc[i]))  # rm_scores carries the same reward


def test_legacy_runs_an_external_agent_and_refuses_several_segments_as_a_failed_row(served: VerlCluster, legacy: Any) -> None:
    """The legacy trainer through the gateway loop, beside our loop and
    verl's: the tool-calling agent's row is token-exact and rewarded; the
    one that rewrote its history is a failed row (one row per episode there)
    that says to use v1, and trains nothing."""
    rows: list[Row] = [("external_sdk", "2+2?", 4), ("agentfly_min", "2+2?", 4), ("external_rewriting", "3+3?", 6)]
    out = legacy.generate_sequences(legacy_batch(rows))
    records = _records(out)
    lengths = _lengths(out)
    sdk, _, rewriting = records
    assert sdk is not None and sdk["failed"] is False and sdk["segments"] == 1
    assert lengths[0] > 0 and float(out.batch["rm_scores"][0].sum()) == pytest.approx(0.04)
    mask = out.batch["response_mask"][0, : lengths[0]]
    logprobs = out.batch["rollout_log_probs"][0, : lengths[0]]
    assert bool((logprobs[mask.bool()] < 0).all()) and bool((logprobs[~mask.bool()] == 0).all())
    assert rewriting is not None and rewriting["failed"] is True and "v1 trainer" in rewriting["error"]
    assert int(out.batch["response_mask"][2].sum()) == 0


def test_legacy_an_overlong_prompt_is_capped_and_a_failed_row_trains_nothing(served: VerlCluster, legacy: Any) -> None:
    rows: list[Row] = [("agentfly_math", LONG_PROMPT, 11), ("agentfly_min", "2+2?", 4), ("agentfly_math", "6+6?", 12)]
    out = legacy.generate_sequences(legacy_batch(rows, explode=(2,)))
    batch = out.batch
    prompt_lengths = [int(n) for n in batch["attention_mask"][:, :PROMPT_LENGTH].sum(dim=1)]
    records = _records(out)
    assert prompt_lengths[0] == PROMPT_LENGTH and (records[0] or {})["prompt_tokens_dropped"] > 0  # capped, not crashed
    assert (records[1] or {})["prompt_tokens_dropped"] == 0 and prompt_lengths[1] < PROMPT_LENGTH
    # The failed row: its prompt kept, an empty response, nothing of it trains, a one-line error.
    failed = records[2]
    assert failed is not None and failed["failed"] is True and failed["response_tokens"] > 0
    assert prompt_lengths[2] > 0 and _lengths(out)[2] == 0 and int(batch["response_mask"][2].sum()) == 0
    assert "boom" in failed["error"] and "\n" not in failed["error"] and "\x1b" not in failed["error"]
    assert float(batch["rm_scores"][2].sum()) == 0.0


def test_legacy_failed_rows_are_counted_by_verl_and_agentfly_grpo_keeps_them_out(served: VerlCluster, legacy: Any) -> None:
    """The legacy worker has no way to drop a row: a failed episode is a
    masked row with an empty response. verl's metrics count it as aborted
    (response/aborted_ratio) and leave it out of the score; verl's GRPO
    still counts its score, so agentfly_grpo leaves it out of the group."""
    from verl.trainer.ppo.metric_utils import compute_data_metrics
    from verl.trainer.ppo.ray_trainer import compute_advantage

    rows: list[Row] = [("agentfly_group", "2+2?", 4)] * 6  # group g: four rows, the fourth fails; group h: two
    uids = ["g"] * 4 + ["h"] * 2
    out = legacy.generate_sequences(legacy_batch(rows, explode=(3,), uids=uids))
    # What the legacy trainer does next: the prompt batch's uid joins the
    # output (batch.union), the rewards become the token-level ones.
    out.non_tensor_batch["uid"] = np.array(uids, dtype=object)
    out.batch["token_level_scores"] = out.batch["token_level_rewards"] = out.batch["rm_scores"]
    plain = compute_advantage(out, adv_estimator="grpo").batch["advantages"]
    assert [float(plain[i].max()) for i in range(3)] == pytest.approx([0.5] * 3, abs=1e-3)  # verl's GRPO: biased
    ours = compute_advantage(out, adv_estimator="agentfly_grpo").batch["advantages"]
    assert bool((ours == 0).all())  # right answers alone: nothing to learn
    metrics = compute_data_metrics(out, use_critic=False)
    assert metrics["response/aborted_ratio"] == pytest.approx(1 / 6)
    assert metrics["critic/score/mean"] == pytest.approx(1.0)


def test_worker_without_logprobs_mixes_with_verls_loops(served: VerlCluster) -> None:
    """calculate_log_probs off: no logprobs asked for or returned by any loop,
    so verl can stack a batch mixing ours and its single-turn loop. (An
    in-process AgentLoopWorker: the same code a Ray worker runs.)"""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    config = served.trainer_config(prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH, calculate_log_probs=False)
    worker = AgentLoopWorker(config, served.client, reward_loop_worker_handles=served.reward_workers(config))
    rows: list[Row] = [("agentfly_min", "2+2?", 4), ("single_turn_agent", "2+2?", 4), ("agentfly_min", LONG_PROMPT, 3)]
    out = asyncio.run(worker.generate_sequences(legacy_batch(rows)))
    assert "rollout_log_probs" not in out.batch.keys()
    assert out.batch["responses"].shape == (3, RESPONSE_LENGTH)
    assert [(r or {}).get("failed") for r in _records(out)] == [False, None, False]


def test_sampling_parameters_out_of_range_fail_the_row_not_the_step(served: VerlCluster) -> None:
    """verl's rollout.temperature above the range vLLM takes (2) raised
    outside the episode and ended the whole step; it is a recorded failure
    of each of our rows. (verl's own loops end the step: vLLM refuses it.)"""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    config = served.trainer_config(
        prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH, overrides=("actor_rollout_ref.rollout.temperature=2.5",)
    )
    worker = AgentLoopWorker(config, served.client, reward_loop_worker_handles=served.reward_workers(config))
    rows: list[Row] = [("agentfly_min", "2+2?", 4), ("agentfly_min", "3+3?", 6)]
    out = asyncio.run(worker.generate_sequences(legacy_batch(rows)))
    for record in _records(out):
        assert record is not None and record["failed"] is True and "temperature" in record["error"], record
    assert [int(n) for n in out.batch["attention_mask"][:, :PROMPT_LENGTH].sum(dim=1)] > [0, 0]  # prompts kept


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("  tools: [agentfly_min.tools.calculator]\n", "name agentfly_min tools under `agent_tools`"),
        ("  max_turn: 3\n", "unknown key(s) max_turn"),
        ("  template: qwen2.6\n", "no template named 'qwen2.6'"),
        ("  template: qwen2.5\n  template_options: {enable_thinking: false}\n", "qwen2.5 template takes no options"),
    ],
)
def test_a_yaml_entry_the_loop_cannot_take_is_refused_with_the_key(served: VerlCluster, entry: str, says: str) -> None:
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    text = "- name: agentfly_bad\n  _target_: agentfly_min.integrations.verl.AgentflyAgentLoop\n" + entry
    config = served.trainer_config(
        agent_loop_config_path=loops_yaml(text, "bad_loops.yaml"), prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH
    )
    worker = AgentLoopWorker(config, served.client)
    with pytest.raises(Exception, match=says.replace("(", r"\(").replace(")", r"\)")):
        asyncio.run(worker.generate_sequences(legacy_batch([("agentfly_bad", "2+2?", 4)])))
