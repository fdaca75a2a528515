"""What an agent loop reads of verl's rollout config, once, when built: the
lengths, the context verl's server gives the model, the abort policy, the
template and where the reward runs."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase

from ..configs import AsyncVerlConfig
from ..errors import ConfigError
from ..templates import Template
from ..templates.select import resolve_template

__all__ = ["RolloutSettings", "rollout_settings"]


@functools.cache
def _context_of(model_path: str) -> int | None:
    """The context verl's server gives a model when ``rollout.max_model_len``
    is unset: its ``max_position_embeddings``, as verl reads it."""
    from transformers import AutoConfig
    from verl.workers.rollout.utils import get_max_position_embeddings

    try:
        return int(get_max_position_embeddings(AutoConfig.from_pretrained(model_path)))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _abort_policy(config: Any, on_abort: str | None) -> Literal["resume", "retry", "error"]:
    """``on_abort`` as given, else from verl's ``async_training.partial_rollout``
    (fully-async training): with partial rollouts off, verl drops a sample
    that an abort interrupted, so its tokens are not resumed (``"error"``)."""
    partial = OmegaConf.select(config, "async_training.partial_rollout", default=True)
    if on_abort is None:
        return "resume" if partial else "error"
    if on_abort == "resume" and not partial:
        raise ConfigError(
            "AgentflyAgentLoop.on_abort",
            "on_abort: resume continues samples across weight updates, which async_training.partial_rollout: false forbids",
        )
    if on_abort not in ("resume", "retry", "error"):
        raise ConfigError("AgentflyAgentLoop.on_abort", f"must be resume, retry or error, not {on_abort!r}")
    return on_abort  # type: ignore[return-value]  # checked just above


class RolloutSettings(NamedTuple):
    """What an agent loop reads of verl's rollout config, once, when built."""

    response_length: int
    prompt_length: int
    max_model_len: int | None
    abort: AsyncVerlConfig
    template: Template
    reward_workers: bool
    """verl's reward-loop workers score rows (no reward model, or one with its own resources)."""


def rollout_settings(
    loop: AgentLoopBase,
    template: str | None,
    template_options: Mapping[str, Any] | None,
    on_abort: str | None,
    max_aborts: int,
    hf_model_type: str | None,
) -> RolloutSettings:
    """The lengths, context, abort policy, template and reward placement of
    ``loop`` under verl's config (shared by our loops)."""
    rollout = loop.rollout_config
    context = rollout.get("max_model_len") or _context_of(str(loop.config.actor_rollout_ref.model.path))
    max_model_len = int(context) if context else None
    options = {**dict(loop.apply_chat_template_kwargs or {}), **dict(template_options or {})}
    reward_model = loop.config.get("reward", {}).get("reward_model", {})
    return RolloutSettings(
        response_length=int(rollout.response_length),
        prompt_length=int(rollout.prompt_length),
        max_model_len=max_model_len,
        abort=AsyncVerlConfig(on_abort=_abort_policy(loop.config, on_abort), max_aborts=max_aborts, max_model_len=max_model_len),
        template=resolve_template(template, tokenizer=loop.tokenizer, model_type=hf_model_type, options=options),
        reward_workers=not reward_model.get("enable", False) or bool(reward_model.get("enable_resource_pool", False)),
    )


