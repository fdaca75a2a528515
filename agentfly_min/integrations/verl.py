"""agentfly_min agents inside verl's trainer, as an ``AgentLoopBase``.

verl runs agent loops in Ray worker processes (``AgentLoopWorker``) and
builds one loop per dataset row with ``hydra.utils.instantiate``. Two ways to
name this loop there, both checked through verl's own ``AgentLoopManager``:

- by its registered name, ``agent_name: agentfly_min`` in the data: the
  package declares a ``verl.plugins`` entry point, which verl loads whenever
  it is imported (every worker process included), so installing
  agentfly_min is all it takes;
- by an entry in verl's agent-loop YAML, with our tools, reward and limits::

    # agent_loops.yaml  (rollout.agent.agent_loop_config_path)
    - name: agentfly_math
      _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
      agent_tools: [agentfly_min.tools.calculator]
      reward: agentfly_min.rewards.math_reward_string_equal
      max_turns: 4

  The tools key is ``agent_tools``: verl passes its own tool list to every
  loop under ``tools``, which would override a ``tools`` key here (so one
  is refused, with a message).

What the loop returns follows verl's own loops: the prompt is capped to
``rollout.prompt_length`` (its start cut, as verl cuts it), the response to
``rollout.response_length``; logprobs are requested and returned exactly
when ``rollout.calculate_log_probs`` is on; ``num_turns`` counts the prompt,
the model turns and the tool-result turns; the reward goes to
``reward_score`` (verl's ``rm_scores``). A failed episode is a marked row,
never a silent empty one: its prompt ids are kept, its ``response_mask`` is
all 0 (no token of it trains the policy), its ``reward_score`` is 0.0 when
this loop computes rewards, and ``extra_fields`` carries
``agentfly_failed=True`` and a one-line ``agentfly_error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import hydra.utils
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    _agent_loop_registry,
    register,
)

from .._text import one_line
from ..agent import Agent, RewardFn, Trajectory, run_agent
from ..configs import AsyncVerlConfig
from ..errors import ConfigError
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


def to_agent_loop_output(
    trajectory: Trajectory, *, response_length: int, logprobs: bool, owns_reward: bool = True
) -> AgentLoopOutput:
    """verl's record of a trajectory.

    Response fields are cut to ``response_length`` as verl's own loops cut
    them; ``response_logprobs`` is a list exactly when ``logprobs`` (verl's
    ``calculate_log_probs``), since verl stacks the batch's logprobs and a
    mix of lists and None breaks it. A failed trajectory (an error, a reward
    that raised, logprobs missing) is marked, not dropped: mask all 0,
    ``reward_score`` 0.0 if ``owns_reward`` (so the batch keeps its
    ``rm_scores``), ``agentfly_failed`` and a one-line ``agentfly_error``.
    ``num_turns`` counts as verl's tool agent counts: the prompt, the model
    turns and the tool-result turns.
    """
    response_ids = list(trajectory.response_ids[:response_length])
    error = trajectory.error or (f"reward: {trajectory.reward_error}" if trajectory.reward_error else None)
    sampled_logprobs = trajectory.response_logprobs
    if error is None and logprobs and response_ids and sampled_logprobs is None:
        error = "the transport returned no logprobs, though verl asked for them"
    failed = error is not None
    mask = [0] * len(response_ids) if failed else list(trajectory.response_mask[:response_length])
    response_logprobs: list[float] | None = None
    if logprobs:
        if failed or sampled_logprobs is None:
            response_logprobs = [0.0] * len(response_ids)
        else:
            response_logprobs = list(sampled_logprobs[:response_length])
    reward = trajectory.reward
    if failed and owns_reward:
        reward = 0.0
    token_versions = None if trajectory.response_versions is None else list(trajectory.response_versions[:response_length])
    # The versions of the tokens kept (sampled ones; -1 marks spliced ones).
    versions = [v for v in token_versions or () if v >= 0] or list(trajectory.weight_versions)
    metrics = AgentLoopMetrics(
        generate_sequences=sum(trajectory.turn_seconds),
        tool_calls=trajectory.tool_seconds,
        compute_score=trajectory.reward_seconds,
    )
    return AgentLoopOutput(
        prompt_ids=list(trajectory.prompt_ids),
        response_ids=response_ids,
        response_mask=mask,
        response_logprobs=response_logprobs,
        reward_score=reward,
        num_turns=1 + trajectory.num_turns + trajectory.tool_rounds,
        metrics=metrics,
        extra_fields={
            "turn_scores": [],
            "tool_rewards": [],
            "global_steps": max(versions) if versions else None,
            "min_global_steps": min(versions) if versions else None,
            "max_global_steps": max(versions) if versions else None,
            "agentfly_failed": failed,
            "agentfly_error": one_line(error) if error is not None else None,
            "agentfly_finish_reason": trajectory.finish_reason,
            "agentfly_reward_error": trajectory.reward_error,
            "agentfly_tool_errors": trajectory.tool_errors,
            "agentfly_prompt_tokens_dropped": trajectory.prompt_tokens_dropped,
            "agentfly_token_versions": token_versions,
        },
    )


def _load(path: str, what: str) -> Any:
    try:
        return hydra.utils.get_object(str(path))
    except Exception as exc:  # noqa: BLE001 - hydra raises several kinds for a bad path; all mean the same
        raise ConfigError(f"AgentflyAgentLoop.{what}", f"cannot import {path!r}: {one_line(str(exc))}") from None


@register("agentfly_min")
class AgentflyAgentLoop(AgentLoopBase):
    """Runs an agentfly_min Agent as a verl agent loop.

    Keyword arguments (from the agent-loop YAML): ``agent_tools`` (import
    paths of :class:`~agentfly_min.Tool` objects), ``reward`` (import path
    of a reward function, or null to leave scoring to verl's reward
    manager), ``max_turns``, ``max_new_tokens`` (per model turn),
    ``system_prompt``, ``on_abort``, ``max_aborts``. verl's own ``tools``
    (its ``multi_turn`` tool config, passed to every loop) are not used.
    The rollout's ``prompt_length`` caps the prompt and ``response_length``
    bounds the response (sampled and spliced-in tokens together).
    """

    def __init__(
        self,
        *args: Any,
        agent_tools: Sequence[str] = ("agentfly_min.tools.calculator",),
        reward: str | None = "agentfly_min.rewards.math_reward_string_equal",
        max_turns: int = 4,
        max_new_tokens: int | None = None,
        system_prompt: str | None = None,
        on_abort: Literal["resume", "retry", "error"] = "resume",
        max_aborts: int = 16,
        tools: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        del tools  # verl's tool list, for its own tool agent
        entry = _agent_loop_registry.get(name) if name is not None else None
        if entry is not None and "tools" in entry:
            raise ConfigError(
                f"agent loop {name}",
                "verl overrides a `tools` key with its own tool list; name agentfly_min tools under `agent_tools`",
            )
        loaded = [_load(path, "agent_tools") for path in agent_tools]
        for path, item in zip(agent_tools, loaded, strict=True):
            if not isinstance(item, Tool):
                raise ConfigError("AgentflyAgentLoop.agent_tools", f"{path} is not an agentfly_min Tool (decorate it with @tool)")
        reward_fn: RewardFn | None = _load(reward, "reward") if reward else None
        self.response_length = int(self.rollout_config.response_length)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.abort = AsyncVerlConfig(on_abort=on_abort, max_aborts=max_aborts)

        def agent(logprobs: bool) -> Agent[Any]:
            return Agent(
                model_name_or_path=str(getattr(self.tokenizer, "name_or_path", "") or "verl"),
                tools=loaded,
                reward_fn=reward_fn,
                backend="async_verl",
                backend_config=self.abort,
                system_prompt=system_prompt,
                max_turns=max_turns,
                max_new_tokens=max_new_tokens,
                max_response_tokens=self.response_length,
                max_prompt_tokens=self.prompt_length,
                logprobs=logprobs,
            )

        self._agent = agent
        agent(False)  # a bad value fails here, when verl builds the loop

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        server: VerlServer = self.server_manager
        tokenizer: VerlTokenizer = self.tokenizer
        # verl sets "logprobs" from rollout.calculate_log_probs for every loop of the batch.
        logprobs = bool(sampling_params.get("logprobs", False))
        config = _config_from(self.abort, sampling_params, self.response_length, logprobs)
        passthrough = {k: v for k, v in sampling_params.items() if k not in _OURS}
        agent = self._agent(logprobs)
        async with open_verl(config, server, tokenizer, sampling_params=passthrough) as generate:
            trajectory = await run_agent(agent, generate, task_from_row(kwargs), tokenizer=self.tokenizer)
        return to_agent_loop_output(
            trajectory, response_length=self.response_length, logprobs=logprobs, owns_reward=agent.reward_fn is not None
        )


def _config_from(base: AsyncVerlConfig, sampling_params: Mapping[str, Any], response_length: int, logprobs: bool) -> AsyncVerlConfig:
    return AsyncVerlConfig(
        temperature=float(sampling_params.get("temperature", base.temperature)),
        top_p=float(sampling_params.get("top_p", base.top_p)),
        top_k=int(sampling_params.get("top_k", base.top_k)),
        max_new_tokens=response_length,
        logprobs=logprobs,
        on_abort=base.on_abort,
        max_aborts=base.max_aborts,
        abort_backoff=base.abort_backoff,
        abort_backoff_max=base.abort_backoff_max,
    )
