"""What a gateway is set up with, checked when built."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from .._validation import check_fields

__all__ = ["GatewayConfig"]

_PositiveInt = Annotated[int, Meta(ge=1)]


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An OpenAI-compatible gateway in front of a token-level transport.

    ``host`` and ``port`` are where it listens (port 0: a free one).
    ``model`` is the name ``/v1/models`` lists and answers carry; a request
    may name any model (an agent's hard-coded ``gpt-4o`` is served by the
    policy all the same). ``template`` names the chat template (None: the
    one the tokenizer carries, as :func:`~agentfly_min.templates.resolve_template`
    recognises it). The budgets are :class:`~agentfly_min.Agent`'s, per
    token-exact segment: ``max_model_len`` prompt plus response,
    ``max_response_tokens`` the response (an RL trainer's
    ``response_length``), ``max_prompt_tokens`` cuts a segment's first
    prompt from its start; ``max_new_tokens`` is a turn's when the request
    names none. A request past a budget is refused with OpenAI's
    ``context_length_exceeded``. ``logprobs`` records the sampled tokens'
    log probabilities. ``max_body_bytes`` bounds a request body (413 past
    it). ``create_sessions``: a request for an unknown session starts it (for
    manual use; otherwise sessions are opened by the caller and an unknown
    one is a 404). ``reward_timeout`` bounds the reward function, in seconds.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    model: Annotated[str, Meta(min_length=1)] = "agentfly"
    template: str | None = None
    max_model_len: Annotated[int, Meta(ge=16)] | None = None
    max_response_tokens: _PositiveInt | None = None
    max_prompt_tokens: _PositiveInt | None = None
    max_new_tokens: _PositiveInt | None = None
    logprobs: bool = True
    max_body_bytes: _PositiveInt = 8 * 1024 * 1024
    create_sessions: bool = False
    reward_timeout: Annotated[float, Meta(gt=0.0)] | None = 300.0

    def __post_init__(self) -> None:
        check_fields(self)
