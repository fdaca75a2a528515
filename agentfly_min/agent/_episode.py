"""The state of one episode, grown turn by turn, that becomes its
trajectory: the agent loop keeps one per chain, the gateway one per
token-exact segment of a session."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ..records import Completion, Message, Output, Request, Usage
from ..templates import Template, get_template
from ._tokens import TokenRecord, Tokenizer
from .agent import Agent
from .trajectory import EpisodeEnd, Trajectory

__all__ = ["Episode"]

_log = logging.getLogger("agentfly_min.agent")


class Episode:
    """The state of one episode, updated turn by turn, that becomes its
    trajectory."""

    def __init__(self, agent: Agent[Any], ident: str, chain_index: int, session: str, tokenizer: Tokenizer | None) -> None:
        self.agent = agent
        self.tokenizer = tokenizer
        self.ident = ident
        self.chain_index = chain_index
        self.session = session
        self.template = agent.template if isinstance(agent.template, Template) else get_template(agent.template)
        self.tools = {t.name: t for t in agent.tools}
        self.schemas = tuple(t.schema for t in agent.tools)
        self.messages: list[Message] = []
        self.tokens: TokenRecord | None = None
        self.had_ids = False
        self.gap: int | None = None  # the first turn that came back without token ids
        self.turns = self.tool_calls = self.tool_rounds = self.attempts = 0
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = self.reasoning_tokens = 0
        self.tool_errors: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.rate_limit_seconds = 0.0
        self.servers: list[str] = []
        self.prompt_mismatches: list[tuple[int, int]] = []
        self.versions: list[int] = []
        self.min_version: int | None = None
        self.turn_seconds: list[float] = []
        self.tool_seconds = 0.0

    @property
    def token_level(self) -> bool:
        """Whether every turn so far brought its sampled ids (and one did)."""
        return self.had_ids and self.gap is None

    def room(self) -> int | None:
        """Tokens the episode may still add within its budgets, or None if unbounded."""
        if self.tokens is None:
            return None
        limits = []
        if self.agent.max_model_len is not None:
            limits.append(self.agent.max_model_len - len(self.tokens.prompt_ids) - len(self.tokens.ids))
        if self.agent.max_response_tokens is not None:
            limits.append(self.agent.max_response_tokens - len(self.tokens.ids))
        return min(limits) if limits else None

    def took(self, request: Request, completion: Completion, seconds: float) -> Output:
        """Record a model turn; return its (first) output."""
        if completion.server is not None:
            self.servers.append(completion.server)
        sent, seen = request.prompt_ids, completion.prompt_ids
        if sent is not None and seen is not None and tuple(sent) != tuple(seen):
            at = next((k for k, (a, b) in enumerate(zip(sent, seen, strict=False)) if a != b), min(len(sent), len(seen)))
            self.prompt_mismatches.append((self.turns, at))
            _log.warning("%s: turn %d: the server saw other prompt ids than were sent (first difference at %d)", self.session, self.turns, at)
        self.turn_seconds.append(seconds)
        self.turns += 1
        self.attempts += completion.attempts
        self.retries.update(completion.retries)
        self.rate_limit_seconds += completion.rate_limit_seconds
        self.prompt_tokens += completion.usage.prompt_tokens
        self.completion_tokens += completion.usage.completion_tokens
        self.cached_tokens += completion.usage.cached_tokens
        self.reasoning_tokens += completion.usage.reasoning_tokens
        if completion.weight_version is not None:
            self.versions.append(completion.weight_version)
            oldest = completion.weight_version if completion.min_weight_version is None else completion.min_weight_version
            self.min_version = oldest if self.min_version is None else min(self.min_version, oldest)
        output = completion.outputs[0]
        if self.tokens is not None:
            if output.token_ids is None:
                if self.gap is None:
                    self.gap = self.turns - 1
                    if self.had_ids:
                        _log.warning("%s: turn %d came back without token ids; the trajectory is not token-exact", self.session, self.gap)
            elif self.gap is None:
                self.had_ids = True
                self.tokens.sampled(output, len(self.messages))  # the assistant message this turn becomes
        return output

    def trajectory(self, reason: EpisodeEnd, *, error: str | None = None) -> Trajectory:
        tokens = self.tokens if self.token_level else None
        return Trajectory(
            task_id=self.ident,
            group_id=self.ident,
            chain_index=self.chain_index,
            request_id=self.session,
            messages=tuple(self.messages),
            finish_reason=reason,
            num_turns=self.turns,
            token_level=tokens is not None,
            token_gap=self.gap if self.had_ids else None,
            prompt_ids=tuple(self.tokens.prompt_ids) if self.tokens else (),
            prompt_tokens_dropped=self.tokens.dropped if self.tokens else 0,
            response_ids=tuple(tokens.ids) if tokens else (),
            response_mask=tuple(tokens.mask) if tokens else (),
            response_logprobs=tuple(tokens.logprobs) if tokens and tokens.logprobs is not None else None,
            response_versions=tuple(tokens.versions) if tokens and tokens.versions is not None else None,
            response_sources=tuple(tokens.sources) if tokens else (),
            error=error,
            tool_calls=self.tool_calls,
            tool_rounds=self.tool_rounds,
            tool_errors=sum(self.tool_errors.values()),
            tool_error_kinds=dict(self.tool_errors),
            usage=Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cached_tokens=self.cached_tokens,
                reasoning_tokens=self.reasoning_tokens,
            ),
            attempts=self.attempts,
            retries=dict(self.retries),
            rate_limit_seconds=self.rate_limit_seconds,
            servers=tuple(self.servers),
            session_moves=sum(1 for a, b in zip(self.servers, self.servers[1:], strict=False) if a != b),
            prompt_mismatches=tuple(self.prompt_mismatches),
            weight_versions=tuple(self.versions),
            min_weight_version=self.min_version,
            turn_seconds=tuple(self.turn_seconds),
            tool_seconds=self.tool_seconds,
        )
