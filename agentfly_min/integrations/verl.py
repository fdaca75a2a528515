"""agentfly_min agents inside verl's trainer, as an ``AgentLoopBase``.

Importing this module imports verl and registers :class:`AgentflyAgentLoop`
under the name ``"agentfly_min"``. verl hands each agent loop its rollout
client, the tokenizer and one dataset row; :meth:`AgentflyAgentLoop.run`
runs an :class:`~agentfly_min.Agent` episode over the verl transport and
returns verl's ``AgentLoopOutput`` (token ids, mask, logprobs, reward).

To switch a training run to it, name it in the data and point verl at a
config that says what agent to build::

    # agent_loops.yaml
    - name: agentfly_math
      _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
      tools: [agentfly_min.tools.calculator]
      reward: agentfly_min.rewards.math_reward_string_equal
      max_turns: 4

    # trainer overrides
    actor_rollout_ref.rollout.mode=async
    actor_rollout_ref.rollout.agent.agent_loop_config_path=agent_loops.yaml
    data.agent_name=agentfly_math  (or an `agent_name` column per row)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import hydra.utils
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from ..agent import Agent, RewardFn, Trajectory, run_agent
from ..configs import AsyncVerlConfig
from ..tools import Tool
from ..transports.verl import VerlServer, VerlTokenizer, open_verl

__all__ = ["AgentflyAgentLoop", "to_agent_loop_output", "task_from_row"]

# Keys of verl's sampling_params that AsyncVerlConfig carries itself.
_OURS = frozenset({"temperature", "top_p", "top_k", "logprobs", "max_tokens", "max_new_tokens"})


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


def to_agent_loop_output(trajectory: Trajectory, *, response_length: int) -> AgentLoopOutput:
    """verl's record of a trajectory. Response fields are cut to
    ``response_length`` as verl's own loops do; the reward goes in
    ``reward_score`` (None when there is none, so verl's reward manager may
    score it); what agentfly_min knows beyond that goes in ``extra_fields``."""
    metrics = AgentLoopMetrics(
        generate_sequences=sum(trajectory.turn_seconds),
        tool_calls=trajectory.tool_seconds,
        compute_score=trajectory.reward_seconds,
    )
    versions = trajectory.weight_versions
    return AgentLoopOutput(
        prompt_ids=list(trajectory.prompt_ids),
        response_ids=list(trajectory.response_ids[:response_length]),
        response_mask=list(trajectory.response_mask[:response_length]),
        response_logprobs=list(trajectory.response_logprobs[:response_length]),
        reward_score=trajectory.reward,
        num_turns=len(trajectory.messages),
        metrics=metrics,
        extra_fields={
            "turn_scores": [],
            "tool_rewards": [],
            "global_steps": versions[-1] if versions else None,
            "min_global_steps": min(versions) if versions else None,
            "max_global_steps": max(versions) if versions else None,
            "agentfly_finish_reason": trajectory.finish_reason,
            "agentfly_error": trajectory.error,
            "agentfly_reward_error": trajectory.reward_error,
            "agentfly_tool_errors": trajectory.tool_errors,
        },
    )


def _load(path: str) -> Any:
    return hydra.utils.get_object(path)


@register("agentfly_min")
class AgentflyAgentLoop(AgentLoopBase):
    """Runs an agentfly_min Agent as a verl agent loop.

    Keyword arguments (from the agent-loop YAML): ``tools`` (import paths of
    :class:`~agentfly_min.Tool` objects), ``reward`` (import path of a reward
    function), ``max_turns``, ``system_prompt``, ``on_abort``, ``max_aborts``.
    The rollout's ``response_length`` bounds the response (sampled and
    spliced-in tokens together), as in verl's own tool agent loop.
    """

    def __init__(
        self,
        *args: Any,
        tools: Sequence[str] = ("agentfly_min.tools.calculator",),
        reward: str | None = "agentfly_min.rewards.math_reward_string_equal",
        max_turns: int = 4,
        system_prompt: str | None = None,
        on_abort: Literal["resume", "retry", "error"] = "resume",
        max_aborts: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        loaded = [_load(path) for path in tools]
        for path, item in zip(tools, loaded, strict=True):
            if not isinstance(item, Tool):
                raise TypeError(f"{path} is not an agentfly_min Tool (decorate it with @tool)")
        reward_fn: RewardFn | None = _load(reward) if reward else None
        self.response_length = int(self.rollout_config.response_length)
        self.agent = Agent(
            model_name_or_path=str(getattr(self.tokenizer, "name_or_path", "verl")),
            tools=loaded,
            reward_fn=reward_fn,
            backend="async_verl",
            backend_config=AsyncVerlConfig(on_abort=on_abort, max_aborts=max_aborts),
            system_prompt=system_prompt,
            max_turns=max_turns,
            max_response_tokens=self.response_length,
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        server: VerlServer = self.server_manager
        tokenizer: VerlTokenizer = self.tokenizer
        config = _config_from(self.agent.config, sampling_params, self.response_length)
        passthrough = {k: v for k, v in sampling_params.items() if k not in _OURS}
        async with open_verl(config, server, tokenizer, sampling_params=passthrough) as generate:
            trajectory = await run_agent(self.agent, generate, task_from_row(kwargs), tokenizer=self.tokenizer)
        return to_agent_loop_output(trajectory, response_length=self.response_length)


def _config_from(base: Any, sampling_params: Mapping[str, Any], response_length: int) -> AsyncVerlConfig:
    assert isinstance(base, AsyncVerlConfig)
    return AsyncVerlConfig(
        temperature=float(sampling_params.get("temperature", base.temperature)),
        top_p=float(sampling_params.get("top_p", base.top_p)),
        top_k=int(sampling_params.get("top_k", base.top_k)),
        max_new_tokens=response_length,
        logprobs=True,
        on_abort=base.on_abort,
        max_aborts=base.max_aborts,
    )
