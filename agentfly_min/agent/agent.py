"""The Agent record: what to run, checked when built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Generic, Literal, TypeAlias, TypeVar

import msgspec
from msgspec import Meta

from .._text import a_or_an
from .._validation import require
from ..configs import AsyncVerlConfig, AsyncVLLMConfig, ClientConfig
from ..errors import ConfigError
from ..templates import Template, TemplateName, get_template
from ..tools import Tool
from .trajectory import Trajectory

__all__ = ["Agent", "AgentLimits", "Backend", "RewardFn", "Task", "C"]

Backend: TypeAlias = Literal["async_vllm", "client", "async_verl"]
Task: TypeAlias = Mapping[str, Any]
"""A task: ``question`` (or ``prompt``) text, or ``messages`` in the OpenAI
shape; optionally ``id``; any other fields (``answer``...) go to the reward."""
RewardFn: TypeAlias = Callable[[Trajectory, Task], float | Awaitable[float]]
"""``reward(trajectory, task) -> float``, sync or async."""

C = TypeVar("C", ClientConfig, AsyncVLLMConfig, AsyncVerlConfig)
"""The type of an agent's backend config (``Agent[AsyncVLLMConfig]``...)."""

_CONFIG_FOR: dict[str, type[AsyncVLLMConfig | AsyncVerlConfig | ClientConfig]] = {
    "async_vllm": AsyncVLLMConfig,
    "client": ClientConfig,
    "async_verl": AsyncVerlConfig,
}


class AgentLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The settings an agent shares with its TOML form (``runfile.AgentSpec``),
    written once: the fields of :class:`Agent` below its model, tools,
    reward, template and backend, checked when the agent is built."""

    system_prompt: str | None = None
    max_turns: int = 4
    max_new_tokens: int | None = None
    max_model_len: int | None = None
    max_response_tokens: int | None = None
    max_prompt_tokens: int | None = None
    temperature: float | None = None
    logprobs: bool = True
    reward_timeout: float | None = 300.0


class Agent(AgentLimits, Generic[C], frozen=True, kw_only=True):
    """An agent: model, tools, reward, template and the transport to use.

    Generic in its config type, so ``open_backend(agent.config, ...)``
    type-checks for the transport the agent names: ``Agent(...,
    backend_config=AsyncVLLMConfig(...))`` is an ``Agent[AsyncVLLMConfig]``.
    (Without a config a type checker takes ``Agent[ClientConfig]``, the
    default backend's; name the config to type another.)

    ``backend`` and the type of ``backend_config`` must agree
    (``"async_vllm"`` / :class:`AsyncVLLMConfig`, ``"client"`` /
    :class:`ClientConfig`, ``"async_verl"`` / :class:`AsyncVerlConfig`); with no
    config, the backend's defaults are used. ``template`` is a registered
    template's name or a :class:`~agentfly_min.templates.Template` (one with
    options applied, say). ``max_turns`` bounds model turns
    per episode, ``max_new_tokens`` the tokens of one turn (None: the
    transport's default), ``max_model_len`` prompt plus response and
    ``max_response_tokens`` the response alone (sampled and spliced-in tokens,
    as an RL trainer's ``response_length``); None keeps no budget here (the
    transport still refuses an overlong prompt). ``max_prompt_tokens`` caps
    the first prompt by cutting tokens from its start, as verl's agent loops
    cap theirs (``rollout.prompt_length``); the cut is logged and recorded on
    the trajectory. Budgets apply when the episode runs in tokens.
    ``logprobs`` asks token-level transports for the sampled tokens' log
    probabilities. ``reward_timeout`` bounds the reward function, in
    seconds (None: no bound); one that overruns it is a ``reward_error``,
    and a synchronous one, run on a thread of its own, is abandoned there.
    """

    model_name_or_path: str
    tools: Sequence[Tool] = ()
    reward_fn: RewardFn | None = None
    template: TemplateName | Template = "qwen2.5"
    backend: Backend = "client"
    backend_config: C | None = None

    def __post_init__(self) -> None:
        require("Agent.model_name_or_path", self.model_name_or_path, Annotated[str, Meta(min_length=1)])
        require("Agent.max_turns", self.max_turns, Annotated[int, Meta(ge=1)])
        require("Agent.max_new_tokens", self.max_new_tokens, Annotated[int, Meta(ge=1)] | None)
        require("Agent.max_model_len", self.max_model_len, Annotated[int, Meta(ge=16)] | None)
        require("Agent.max_response_tokens", self.max_response_tokens, Annotated[int, Meta(ge=1)] | None)
        require("Agent.max_prompt_tokens", self.max_prompt_tokens, Annotated[int, Meta(ge=1)] | None)
        require("Agent.logprobs", self.logprobs, bool)
        require("Agent.reward_timeout", self.reward_timeout, Annotated[float, Meta(gt=0.0)] | None)
        require("Agent.temperature", self.temperature, Annotated[float, Meta(ge=0.0, le=2.0)] | None)
        if not isinstance(self.template, Template):
            require("Agent.template", self.template, str)
            try:
                get_template(self.template)
            except ConfigError as exc:
                raise ConfigError("Agent.template", exc.reason) from None
        require("Agent.backend", self.backend, Backend)
        wanted = _CONFIG_FOR[self.backend]
        if self.backend_config is None:
            msgspec.structs.force_setattr(self, "backend_config", wanted())
        elif not isinstance(self.backend_config, wanted):
            raise ConfigError(
                "Agent.backend_config",
                f"backend={self.backend!r} takes {a_or_an(wanted.__name__)}, got {a_or_an(type(self.backend_config).__name__)}",
            )
        tools = tuple(self.tools)
        for item in tools:
            if not isinstance(item, Tool):
                raise ConfigError("Agent.tools", f"expected Tool records (use @tool), got {type(item).__name__}")
        names = [t.name for t in tools]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError("Agent.tools", f"tool names must be unique; repeated: {', '.join(repeated)}")
        msgspec.structs.force_setattr(self, "tools", tools)

    @property
    def config(self) -> C:
        """The backend config (the backend's default one if none was given)."""
        assert self.backend_config is not None  # set in __post_init__
        return self.backend_config
