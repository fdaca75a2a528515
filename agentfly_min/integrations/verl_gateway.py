"""An agent verl never imports, trained through the gateway: a verl agent
loop that runs the user's agent (an async function, or a command) against a
:mod:`~agentfly_min.gateway` in front of verl's own rollout servers, one
session per row, and returns the rows our loop returns::

    # agent_loops.yaml  (rollout.agent.agent_loop_config_path)
    - name: my_agent
      _target_: agentfly_min.integrations.verl_gateway.GatewayAgentLoop
      agent: my_package.agents.solve        # async def solve(base_url, task)
      # or: command: [python, my_agent.py]  # OPENAI_BASE_URL in its environment
      reward: my_package.rewards.score      # reward(trajectory, task), or null for verl's
      timeout: 600                          # seconds per episode

The agent talks chat completions to the base URL it is given (any OpenAI
client, any framework); the gateway renders with the model's template
(``template``/``template_options`` as for :class:`AgentflyAgentLoop`), samples
through verl's server manager (sticky sessions, aborts resumed, weight
versions kept) and records the sampled ids. An agent that rewrote its
history gives several token-exact segments: on verl's v1 trainer each is one
output of the session (verl keys them ``{uid}_{session}_{index}``, computes
GRPO on the last and broadcasts it); the legacy trainer takes one row per
episode, so there such an episode is a failed row that says why. Failures
(the agent raised, overran ``timeout``, never called the model) follow
``on_failure`` as for :class:`AgentflyAgentLoop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, DictConfigWrap

from ..agent import RewardFn, Trajectory
from ..errors import ConfigError
from ..gateway import GatewayConfig, command_agent, open_gateway, run_external
from ..gateway.external import ExternalAgent
from ..transports.verl import VerlTokenizer, open_verl
from .verl import (
    _OURS,
    EpisodeFailed,
    OnFailure,
    _config_from,
    _load,
    _Recording,
    agentfly_record,
    rollout_settings,
    task_from_row,
    to_agent_loop_output,
)

__all__ = ["GatewayAgentLoop"]

_KEYS = "agent, command, reward, reward_timeout, timeout, template, template_options, on_abort, max_aborts, on_failure"


class GatewayAgentLoop(AgentLoopBase):
    """Runs an external agent through the gateway as a verl agent loop (see
    the module's docstring for the YAML)."""

    def __init__(
        self,
        trainer_config: DictConfigWrap,
        server_manager: Any,
        tokenizer: Any,
        processor: Any,
        dataset_cls: Any,
        data_config: DictConfigWrap,
        hf_model_type: str | None = None,
        *,
        tools: Any = None,
        name: str | None = None,
        agent: str | None = None,
        command: list[str] | None = None,
        reward: str | None = None,
        reward_timeout: float | None = 300.0,
        timeout: float | None = 600.0,
        template: str | None = None,
        template_options: Mapping[str, Any] | None = None,
        on_abort: str | None = None,
        max_aborts: int = 16,
        on_failure: str = "auto",
        **unknown: Any,
    ) -> None:
        entry = f"agent loop {name or 'GatewayAgentLoop'}"
        if unknown:
            raise ConfigError(entry, f"unknown key(s) {', '.join(sorted(unknown))}; it takes {_KEYS}")
        if (agent is None) == (command is None):
            raise ConfigError(entry, "name the agent: `agent` (an import path of async (base_url, task)) or `command` (a list), one of them")
        if on_failure not in ("auto", "drop", "mask"):
            raise ConfigError("GatewayAgentLoop.on_failure", f"must be auto, drop or mask, not {on_failure!r}")
        del tools
        super().__init__(trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, hf_model_type)
        self.agent: ExternalAgent = _load(agent, "agent") if agent is not None else command_agent([str(part) for part in command or ()])
        if not callable(self.agent):
            raise ConfigError("GatewayAgentLoop.agent", f"{agent} is not callable")
        self.reward_fn: RewardFn | None = _load(reward, "reward") if reward else None
        self.on_failure: OnFailure = on_failure  # type: ignore[assignment]  # checked above
        self.timeout = timeout
        settings = rollout_settings(self, template, template_options, on_abort, max_aborts, hf_model_type)
        self.response_length, self.prompt_length, self.max_model_len = settings.response_length, settings.prompt_length, settings.max_model_len
        self.abort, self.template, self.reward_workers = settings.abort, settings.template, settings.reward_workers
        self.gateway = GatewayConfig(
            max_model_len=self.max_model_len,
            max_response_tokens=self.response_length,
            max_prompt_tokens=self.prompt_length,
            reward_timeout=reward_timeout,
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput | list[AgentLoopOutput]:
        tokenizer: VerlTokenizer = self.tokenizer
        logprobs = bool(sampling_params.get("logprobs", False))
        server = _Recording(self.server_manager)
        task = task_from_row(kwargs)
        v1 = "session_id" in kwargs  # v1's worker passes each session's index; the legacy one does not
        config = _config_from(self.abort, sampling_params, self.response_length, logprobs)
        passthrough = {k: v for k, v in sampling_params.items() if k not in _OURS}
        gateway_config = msgspec.structs.replace(self.gateway, logprobs=logprobs, max_new_tokens=self.response_length)
        async with open_verl(config, server, tokenizer, sampling_params=passthrough) as generate:
            async with open_gateway(generate, self.tokenizer, gateway_config, reward_fn=self.reward_fn, template=self.template) as gateway:
                trajectories = await run_external(gateway, self.agent, task, timeout=self.timeout)
        if len(trajectories) > 1 and not v1:
            trajectories = [_one_row_only(trajectories)]
        outputs = [
            to_agent_loop_output(
                t,
                response_length=self.response_length,
                logprobs=logprobs,
                owns_reward=self.reward_fn is not None,
                server_fields=server.fields,
                reward_extra_info=self.reward_workers and self.reward_fn is not None,
            )
            for t in trajectories
        ]
        for output, trajectory in zip(outputs, trajectories, strict=True):
            record = agentfly_record(output.extra_fields)
            if record is not None:
                record_fields = output.extra_fields["extras"]["agentfly"]
                record_fields.update(segment=trajectory.segment, segments=len(trajectories), first_turn=trajectory.first_turn)
        drop = self.on_failure == "drop" or (self.on_failure == "auto" and v1)
        failed = [agentfly_record(o.extra_fields) or {} for o in outputs]
        if drop and any(record.get("failed") for record in failed):
            raise EpisodeFailed(str(next(record.get("error") for record in failed if record.get("failed"))))
        return outputs if v1 else outputs[0]


def _one_row_only(trajectories: list[Trajectory]) -> Trajectory:
    last = trajectories[-1]
    error = (
        f"the agent rewrote its history ({len(trajectories)} token-exact segments); "
        "verl's legacy trainer takes one row per episode: use the v1 trainer (main_ppo's default)"
    )
    return msgspec.structs.replace(last, error=error, finish_reason="error")
