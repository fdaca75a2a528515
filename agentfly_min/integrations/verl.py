"""agentfly_min agents inside verl's trainer, as an ``AgentLoopBase``.

verl runs agent loops in Ray worker processes and builds one loop per
dataset row with ``hydra.utils.instantiate``, on both of its trainer paths:
the default one (``python -m verl.trainer.main_ppo``, ``trainer.use_v1:
true``: ``AgentLoopManagerTQ`` / ``AgentLoopWorkerTQ`` over TransferQueue)
and the legacy one (``AgentLoopManager`` / ``AgentLoopWorker``). Two ways to
name this loop there:

- by its registered name, ``agent_name: agentfly_min`` in the data: the
  package declares a ``verl.plugins`` entry point, which verl loads whenever
  it is imported (every worker process included);
- by an entry in verl's agent-loop YAML, with our tools, reward, limits and
  template::

    # agent_loops.yaml  (rollout.agent.agent_loop_config_path)
    - name: agentfly_math
      _target_: agentfly_min.integrations.verl.AgentflyAgentLoop
      agent_tools: [agentfly_min.tools.calculator]
      reward: agentfly_min.rewards.math_reward_string_equal
      max_turns: 4

  A key the loop does not take is an error naming it. The tools key is
  ``agent_tools``: verl passes its own tool list to every loop under
  ``tools``.

The template is the YAML's ``template`` (with ``template_options``, over
verl's ``data.apply_chat_template_kwargs``), else the one recognised from the
model's tokenizer (:func:`~agentfly_min.templates.select.recognise`: the
family whose upstream template the tokenizer carries, else the model's own
template through the bridge), never Qwen2.5's by default.

A failed episode (a transport failure after its retries, a reward that
raised, logprobs that did not come back, sampling parameters out of range)
never trains and never biases its group. ``on_failure`` says how:

- ``"drop"``: ``run`` raises :class:`EpisodeFailed`, and verl handles the
  row as it handles one of its own loops that raised. On the v1 trainer the
  prompt group is marked ``failure``: in ``sync`` mode the group trains
  without the row (its GRPO statistics are those of the rows that
  finished), in the async modes the group is evicted and refilled and
  counted in ``training/rollout_failure/evicted_samples``. The legacy
  worker has no failure handling: a raise ends the step.
- ``"mask"``: a marked row: prompt kept, response empty, ``response_mask``
  empty, ``reward_score`` 0.0 when this loop owns the reward. verl counts
  it in ``response/aborted_ratio`` and keeps it out of its score and length
  metrics, and none of its tokens trains; verl's GRPO still counts its score
  in the group's mean and std, so pair it with ``algorithm.adv_estimator=
  agentfly_grpo`` (:func:`grpo_without_failed`, registered by this module).
- ``"auto"`` (the default): ``"drop"`` under v1's worker (which passes each
  session's index), ``"mask"`` under the legacy one.

Every row carries our record in ``extra_fields["extras"]["agentfly"]``
(``failed``, ``error``, ``finish_reason``, token versions...): ``extras`` is
one of the keys verl's legacy ``_postprocess`` gives every row, so the
record adds no column that verl's own rows lack (a column only some chunks
have breaks ``DataProto.concat`` across agent-loop workers). For the same
reason a row carries the keys the server put in its ``extra_fields``, and,
where verl's reward-loop workers score rows and this loop owns the reward,
``reward_extra_info`` as verl's naive reward manager writes one for a float
score (``{"acc": reward}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import hydra.utils
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, DictConfigWrap, _agent_loop_registry, register

from .._text import one_line
from ..agent import Agent, RewardFn, run_agent
from ..configs import AsyncVerlConfig
from ..errors import AgentflyError, ConfigError
from ..records import Completion, Generate, Request
from ..tools import Tool
from ._verl_rows import agentfly_record, grpo_without_failed, task_from_row, to_agent_loop_output
from ._verl_settings import RolloutSettings, rollout_settings
from ..transports.verl import VerlServer, VerlTokenizer, VerlTokenOutput, open_verl

__all__ = [
    "AgentflyAgentLoop",
    "EpisodeFailed",
    "OnFailure",
    "agentfly_record",
    "grpo_without_failed",
    "task_from_row",
    "RolloutSettings",
    "rollout_settings",
    "to_agent_loop_output",
]

OnFailure = Literal["auto", "drop", "mask"]

# Keys of verl's sampling_params that AsyncVerlConfig carries itself.
_OURS = frozenset({"temperature", "top_p", "top_k", "logprobs", "max_tokens", "max_new_tokens"})


class EpisodeFailed(AgentflyError, RuntimeError):
    """Raised by :meth:`AgentflyAgentLoop.run` for a failed episode when it
    is to be dropped (``on_failure``); the message is the one-line error."""


def _load(path: str, what: str) -> Any:
    try:
        return hydra.utils.get_object(str(path))
    except Exception as exc:  # noqa: BLE001 - hydra raises several kinds for a bad path; all mean the same
        raise ConfigError(f"AgentflyAgentLoop.{what}", f"cannot import {path!r}: {one_line(str(exc))}") from None


class _Recording:
    """verl's client, keeping the ``extra_fields`` of the last answer."""

    def __init__(self, inner: VerlServer) -> None:
        self.inner = inner
        self.fields: dict[str, Any] = {}

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]) -> VerlTokenOutput:
        output = await self.inner.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
        self.fields = dict(output.extra_fields)
        return output


@register("agentfly_min")
class AgentflyAgentLoop(AgentLoopBase):
    """Runs an agentfly_min Agent as a verl agent loop.

    Keyword arguments (from the agent-loop YAML): ``agent_tools`` (import
    paths of :class:`~agentfly_min.Tool` objects), ``reward`` (import path
    of a reward function, or null to leave scoring to verl's reward
    manager), ``reward_timeout`` (seconds, default 300), ``max_turns``,
    ``max_new_tokens`` (per model turn), ``system_prompt``, ``template`` and ``template_options``, ``on_abort``
    (default: resume, or error under ``async_training.partial_rollout:
    false``), ``max_aborts``, ``on_failure``. Any other key is a
    :class:`ConfigError` naming it. The rollout's ``prompt_length`` caps the
    prompt, ``response_length`` bounds the response (sampled and spliced-in
    tokens together) and its context (``max_model_len``, else the model's)
    bounds both.
    """

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
        agent_tools: Sequence[str] = ("agentfly_min.tools.calculator",),
        reward: str | None = "agentfly_min.rewards.math_reward_string_equal",
        reward_timeout: float | None = 300.0,
        max_turns: int = 4,
        max_new_tokens: int | None = None,
        system_prompt: str | None = None,
        template: str | None = None,
        template_options: Mapping[str, Any] | None = None,
        on_abort: str | None = None,
        max_aborts: int = 16,
        on_failure: str = "auto",
        **unknown: Any,
    ) -> None:
        entry = f"agent loop {name or 'agentfly_min'}"
        # verl passes its own tool list as `tools`, which silently replaces a
        # `tools` key of the YAML entry: look at the entry itself.
        if name is not None and "tools" in _agent_loop_registry.get(name, {}):
            raise ConfigError(entry, "verl overrides a `tools` key with its own tool list; name agentfly_min tools under `agent_tools`")
        if unknown:
            raise ConfigError(
                entry,
                f"unknown key(s) {', '.join(sorted(unknown))}; it takes agent_tools, reward, reward_timeout, max_turns, max_new_tokens, "
                "system_prompt, template, template_options, on_abort, max_aborts, on_failure",
            )
        del tools  # verl's tool list, for its own tool agent
        super().__init__(trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, hf_model_type)
        loaded = [_load(path, "agent_tools") for path in agent_tools]
        for path, item in zip(agent_tools, loaded, strict=True):
            if not isinstance(item, Tool):
                raise ConfigError("AgentflyAgentLoop.agent_tools", f"{path} is not an agentfly_min Tool (decorate it with @tool)")
        if on_failure not in ("auto", "drop", "mask"):
            raise ConfigError("AgentflyAgentLoop.on_failure", f"must be auto, drop or mask, not {on_failure!r}")
        self.on_failure: OnFailure = on_failure  # type: ignore[assignment]  # checked just above
        reward_fn: RewardFn | None = _load(reward, "reward") if reward else None
        settings = rollout_settings(self, template, template_options, on_abort, max_aborts, hf_model_type)
        self.response_length, self.prompt_length, self.max_model_len = settings.response_length, settings.prompt_length, settings.max_model_len
        self.abort, self.template, self.reward_workers = settings.abort, settings.template, settings.reward_workers

        def agent(logprobs: bool) -> Agent[Any]:
            return Agent(
                model_name_or_path=str(getattr(self.tokenizer, "name_or_path", "") or "verl"),
                tools=loaded,
                reward_fn=reward_fn,
                reward_timeout=reward_timeout,
                template=self.template,
                backend="async_verl",
                backend_config=self.abort,
                system_prompt=system_prompt,
                max_turns=max_turns,
                max_new_tokens=max_new_tokens,
                max_model_len=self.max_model_len,
                max_response_tokens=self.response_length,
                max_prompt_tokens=self.prompt_length,
                logprobs=logprobs,
            )

        self._agent = agent
        agent(False)  # a bad value fails here, when verl builds the loop

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        tokenizer: VerlTokenizer = self.tokenizer
        # verl sets "logprobs" from rollout.calculate_log_probs for every loop of the batch.
        logprobs = bool(sampling_params.get("logprobs", False))
        agent = self._agent(logprobs)
        server = _Recording(self.server_manager)
        task = task_from_row(kwargs)
        try:
            config = _config_from(self.abort, sampling_params, self.response_length, logprobs)
        except ConfigError as exc:  # verl's sampling parameters: this row fails, not the step
            trajectory = await run_agent(agent, _refusing(exc), task, tokenizer=self.tokenizer)
        else:
            passthrough = {k: v for k, v in sampling_params.items() if k not in _OURS}
            async with open_verl(config, server, tokenizer, sampling_params=passthrough) as generate:
                trajectory = await run_agent(agent, generate, task, tokenizer=self.tokenizer)
        output = to_agent_loop_output(
            trajectory,
            response_length=self.response_length,
            logprobs=logprobs,
            owns_reward=agent.reward_fn is not None,
            server_fields=server.fields,
            reward_extra_info=self.reward_workers and agent.reward_fn is not None,
        )
        record = agentfly_record(output.extra_fields) or {}
        # v1's worker passes each session's index; the legacy one does not.
        drop = self.on_failure == "drop" or (self.on_failure == "auto" and "session_id" in kwargs)
        if drop and record.get("failed"):
            raise EpisodeFailed(str(record.get("error")))
        return output


def _refusing(error: ConfigError) -> Generate:
    """A transport that refuses every request with ``error``: the episode
    still renders its prompt, so the failed row keeps it."""

    async def generate(request: Request) -> Completion:
        raise error

    return generate


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
        max_model_len=base.max_model_len,
    )
