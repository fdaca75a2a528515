"""The record of one episode, ready for a trainer."""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from ..records import Message, Usage

__all__ = ["Trajectory", "EpisodeEnd"]

EpisodeEnd: TypeAlias = Literal["answer", "length", "max_turns", "context", "error", "rewritten"]
"""Why an episode ended: the model answered without a tool call; its answer
was cut off by the per-turn token limit; ``max_turns`` was reached (through
the gateway: the agent stopped after a tool call); the context budget ran
out; an error ended it (``Trajectory.error`` says which); or (a gateway
segment) the agent's next request rewrote this history, and the session
went on in the next segment."""


class Trajectory(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One chain of one task.

    With a tokenizer, ``prompt_ids`` is the first prompt as token ids (cut to
    ``Agent.max_prompt_tokens`` if that is set: ``prompt_tokens_dropped``
    says how many tokens were cut from its start). When the transport also
    works in tokens (``token_level``), ``response_ids`` is everything after
    the prompt: the tokens the model sampled, with the tokens of each tool
    observation spliced in between turns. ``response_mask`` is 1 exactly on
    sampled tokens; ``response_logprobs`` holds their log probabilities (0.0
    where the mask is 0; ``-inf`` is recorded as -9999.0, vLLM's floor, since
    JSON has no infinity) and is None when they were not requested or the
    transport did not return them for every sampled token, never zeros
    standing in for missing values. ``response_versions`` is the policy
    version (verl's ``global_steps``) that sampled each token (-1 where the
    mask is 0), None unless the transport reported one for every sampled
    token. ``response_sources`` says which message each response token came
    from (its index in ``messages``): a sampled token its assistant message,
    a spliced one the first tool result of its round (the end of the turn
    and the next generation prompt count with it), so masks for any purpose
    can be built. The aligned fields have one entry per response token. The ids are
    the ones sampled; nothing was decoded and re-tokenised. With a text-only
    transport the response fields are empty and ``messages`` is the record.
    A trajectory is token-exact or says it is not: when a token-level
    transport returns a turn without its ids, ``token_gap`` is that turn,
    ``token_level`` is False, the response fields are empty, and the turns
    after it were sent as messages.

    ``error`` is set when something ended the episode early (a transport
    failure after its retries, a task that could not be read);
    ``reward_error`` when the reward function raised or returned a value that
    is not a finite number. ``tool_errors`` counts tool calls that failed
    and ``tool_error_kinds`` counts them by kind (``malformed_call``,
    ``unknown_tool``, ``invalid_json``, ``invalid_arguments``,
    ``tool_error``, ``raised``, ``timeout``); the model was told and the
    episode went on. ``attempts`` sums the transport attempts of all turns,
    ``retries`` counts the retried failures by reason (``"HTTP 429"``,
    ``"timeout"``, ...), and ``rate_limit_seconds`` is the time turns waited
    for the rate limiter. ``servers`` names the server of each turn where the
    transport knows it (a fleet's do) and ``session_moves`` counts the times
    the session changed server (each one lost its prefix cache).
    ``prompt_mismatches`` lists ``(turn, first differing position)`` for
    every turn whose server reported other prompt ids than were sent: the
    trajectory's ids are ours, and such a turn was sampled from something
    else, so a trainer should know.
    ``weight_versions`` are the policy versions that sampled each turn (the
    newest one per turn), when the transport knows them, and
    ``min_weight_version`` is the oldest version that sampled any token of
    the episode (what a trainer's staleness control wants with the newest). ``turn_seconds`` is
    the wall time of each model call, ``tool_seconds`` and ``reward_seconds``
    the time spent in tools and in the reward. ``num_turns`` counts model
    turns; ``tool_rounds`` the rounds of tool results that followed them.

    Through the gateway (:mod:`agentfly_min.gateway`) a session whose agent
    rewrote its history is several token-exact segments: ``segment`` numbers
    this one (0 for :func:`run_agent`'s single one) and ``first_turn`` is the
    session's turn its first model turn was, so it holds turns
    ``first_turn`` to ``first_turn + num_turns - 1``.
    """

    task_id: str
    group_id: str
    chain_index: int = 0
    request_id: str
    messages: tuple[Message, ...]
    finish_reason: EpisodeEnd
    num_turns: int
    token_level: bool
    token_gap: int | None = None
    prompt_ids: tuple[int, ...] = ()
    response_ids: tuple[int, ...] = ()
    response_mask: tuple[int, ...] = ()
    response_logprobs: tuple[float, ...] | None = None
    response_versions: tuple[int, ...] | None = None
    response_sources: tuple[int, ...] = ()
    prompt_tokens_dropped: int = 0
    reward: float | None = None
    reward_error: str | None = None
    error: str | None = None
    tool_calls: int = 0
    tool_rounds: int = 0
    tool_errors: int = 0
    tool_error_kinds: dict[str, int] = {}
    usage: Usage = Usage()
    attempts: int = 0
    retries: dict[str, int] = {}
    rate_limit_seconds: float = 0.0
    servers: tuple[str, ...] = ()
    session_moves: int = 0
    prompt_mismatches: tuple[tuple[int, int], ...] = ()
    weight_versions: tuple[int, ...] = ()
    min_weight_version: int | None = None
    turn_seconds: tuple[float, ...] = ()
    tool_seconds: float = 0.0
    reward_seconds: float = 0.0
    segment: int = 0
    first_turn: int = 0

    def final_text(self) -> str | None:
        """The content of the last assistant message, if any."""
        for message in reversed(self.messages):
            if message.role == "assistant":
                return message.text
        return None
