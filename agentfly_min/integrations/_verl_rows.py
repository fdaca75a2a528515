"""verl's record of a trajectory (an ``AgentLoopOutput`` row with our record
in ``extra_fields["extras"]["agentfly"]``) and verl's GRPO over the rows
that sampled something (``algorithm.adv_estimator=agentfly_grpo``,
registered when this module is imported)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.trainer.ppo import core_algos

from .._text import one_line
from ..agent import Trajectory

__all__ = ["agentfly_record", "grpo_without_failed", "task_from_row", "to_agent_loop_output"]

# What verl's vLLM server puts in every answer's extra_fields (and its client
# adds), for a row whose episode failed before any call: its columns must
# match the other rows'.
_SERVER_KEYS = ("global_steps", "num_cached_tokens", "min_global_steps", "max_global_steps")


def task_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A task from one verl dataset row: ``raw_prompt`` becomes the messages,
    ``reward_model.ground_truth`` the ``answer``; ``extra_info`` fields and the
    rest of the row are kept for the reward."""
    task: dict[str, Any] = {k: v for k, v in row.items() if k != "raw_prompt"}
    task["messages"] = [dict(m) for m in row["raw_prompt"]]
    reward_model = row.get("reward_model")
    if isinstance(reward_model, Mapping) and "ground_truth" in reward_model and "answer" not in task:
        task["answer"] = reward_model["ground_truth"]
    extra = row.get("extra_info")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            task.setdefault(str(key), value)
    if "index" in row:
        task.setdefault("id", str(row["index"]))
    return task


def _failure(trajectory: Trajectory, logprobs: bool) -> str | None:
    if trajectory.error is not None:
        return trajectory.error
    if trajectory.reward_error is not None:
        return f"reward: {trajectory.reward_error}"
    if trajectory.token_gap is not None:
        return f"not token-exact: the transport returned turn {trajectory.token_gap} without its token ids"
    if logprobs and trajectory.response_ids and trajectory.response_logprobs is None:
        return "the transport returned no logprobs, though verl asked for them"
    return None


def to_agent_loop_output(
    trajectory: Trajectory,
    *,
    response_length: int,
    logprobs: bool,
    owns_reward: bool = True,
    server_fields: Mapping[str, Any] | None = None,
    reward_extra_info: bool = False,
) -> AgentLoopOutput:
    """verl's record of a trajectory.

    Response fields are cut to ``response_length`` as verl's own loops cut
    them; ``response_logprobs`` is a list exactly when ``logprobs`` (verl's
    ``calculate_log_probs``), since verl stacks the batch's logprobs and a
    mix of lists and None breaks it. A failed trajectory (an error, a reward
    that raised, logprobs missing) keeps its prompt and gets an empty
    response, ``reward_score`` 0.0 if ``owns_reward`` (so the batch keeps
    its ``rm_scores``) and our record says why (:func:`agentfly_record`).
    ``num_turns`` counts as verl's tool agent counts: the prompt, the model
    turns and the tool-result turns. ``server_fields`` are the last answer's
    ``extra_fields`` (their keys are every verl row's columns);
    ``reward_extra_info`` adds verl's reward-worker field for our reward.
    """
    error = _failure(trajectory, logprobs)
    failed = error is not None
    kept = 0 if failed else min(len(trajectory.response_ids), response_length)
    response_ids = list(trajectory.response_ids[:kept])
    response_logprobs: list[float] | None = None
    if logprobs:
        response_logprobs = list((trajectory.response_logprobs or ())[:kept])
    reward = 0.0 if failed and owns_reward else trajectory.reward
    token_versions = None if trajectory.response_versions is None else list(trajectory.response_versions[:kept])
    # The versions of the tokens kept (sampled ones; -1 marks spliced ones),
    # else the episode's range as the transport knew it.
    sampled = [v for v in token_versions or () if v >= 0]
    newest = max(sampled) if sampled else max(trajectory.weight_versions, default=None)
    oldest = min(sampled) if sampled else trajectory.min_weight_version
    fields: dict[str, Any] = {key: None for key in _SERVER_KEYS}
    fields.update(server_fields or {})
    fields.update(
        turn_scores=[],
        tool_rewards=[],
        global_steps=newest,
        min_global_steps=oldest,
        max_global_steps=newest,
        extras={
            "agentfly": {
                "failed": failed,
                "error": one_line(error) if error is not None else None,
                "finish_reason": trajectory.finish_reason,
                "reward_error": trajectory.reward_error,
                "tool_errors": trajectory.tool_errors,
                "prompt_tokens_dropped": trajectory.prompt_tokens_dropped,
                "token_versions": token_versions,
                "response_tokens": len(trajectory.response_ids),
            }
        },
    )
    if reward_extra_info and reward is not None:
        fields["reward_extra_info"] = {"acc": reward}
    return AgentLoopOutput(
        prompt_ids=list(trajectory.prompt_ids),
        response_ids=response_ids,
        response_mask=list(trajectory.response_mask[:kept]),
        response_logprobs=response_logprobs,
        reward_score=reward,
        num_turns=1 + trajectory.num_turns + trajectory.tool_rounds,
        metrics=AgentLoopMetrics(
            generate_sequences=sum(trajectory.turn_seconds),
            tool_calls=trajectory.tool_seconds,
            compute_score=trajectory.reward_seconds,
        ),
        extra_fields=fields,
    )


def agentfly_record(extra: Any) -> dict[str, Any] | None:
    """Our record from a row's ``extra_fields`` or its ``extras`` value
    (None for a row of another loop)::

        extras = batch.non_tensor_batch["extras"]   # the legacy trainer's batch
        failed = np.array([bool((agentfly_record(e) or {}).get("failed")) for e in extras])
    """
    if isinstance(extra, Mapping) and "extras" in extra:
        extra = extra["extras"]
    record = extra.get("agentfly") if isinstance(extra, Mapping) else None
    return dict(record) if isinstance(record, Mapping) else None


@core_algos.register_adv_est("agentfly_grpo")
def grpo_without_failed(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray[Any, Any],
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GRPO (``compute_grpo_outcome_advantage``) over the rows that
    have a sampled token, so a row that trains nothing (a failed episode kept
    as a masked row, an aborted sample) does not enter its group's mean and
    std; such rows get advantage 0. Registered with verl as
    ``algorithm.adv_estimator=agentfly_grpo``."""
    if config is not None and hasattr(config, "get"):
        norm_adv_by_std_in_grpo = bool(config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo))
    live = response_mask.sum(dim=-1) > 0
    advantages = torch.zeros_like(token_level_rewards)
    if bool(live.any()):
        rows = torch.nonzero(live).squeeze(-1)
        kept, _ = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=token_level_rewards[rows],
            response_mask=response_mask[rows],
            index=np.asarray(index, dtype=object)[rows.numpy()],
            epsilon=epsilon,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        )
        advantages[rows] = kept.to(advantages.dtype)
    return advantages, advantages


