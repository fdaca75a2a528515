"""Sessions: what the gateway records of each episode, request by request.

A session is a list of token-exact segments. A request continues the last
segment when its messages are that segment's messages (the ones the gateway
answered, compared as a client echoes them) followed by tool results for the
last turn's calls: the template's splice goes after the sampled ids, and the
sampled ids are never re-tokenised. Any other request (the agent dropped,
summarised or rewrote earlier messages, changed its tools, or added a user
message the splice does not know) starts a new segment from a fresh render.
A turn is recorded only when it was sampled and answered: a request that
failed, was cancelled or whose client left records nothing.

Everything here runs on the caller's event loop (asyncio or trio); the HTTP
server hands requests over (see :mod:`.server`).
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from .._text import one_line
from .._user_code import escapes
from ..agent import Agent, Trajectory
from ..agent._episode import Episode
from ..agent._reward import reward_trajectory
from ..agent._tokens import OFF_LOOP_CHARS, TokenRecord, Tokenizer
from ..agent._turns import read_calls
from ..agent.agent import RewardFn, Task
from ..errors import AgentflyError, ConfigError, ContextLengthError, TransientError
from ..records import Completion, Generate, Message, Request, ToolCall, ToolSchema, Usage
from ..templates import Template
from .config import GatewayConfig
from .wire import ChatBody, Reply, decode_body, error_reply, tool_choice

__all__ = ["SESSION_ID", "Plan", "Answer", "Core"]

_log = logging.getLogger("agentfly_min.gateway")

SESSION_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
"""What a session id may be: it travels in URL paths and headers."""

_ENDED_KEPT = 100_000
"""Ended session ids remembered (for a clear 410 rather than a 404)."""


class _Segment:
    def __init__(self, episode: Episode, tools: tuple[ToolSchema, ...], first_turn: int) -> None:
        self.episode = episode
        self.tools = tools
        self.first_turn = first_turn
        self.finish = "stop"
        self.open_calls: tuple[ToolCall, ...] = ()  # the last turn's calls, awaiting results

    def end(self) -> str:
        if self.open_calls:
            return "max_turns"  # the agent stopped after a tool call
        return "length" if self.finish == "length" else "answer"


class _Session:
    def __init__(self, ident: str, task: Task, chain_index: int) -> None:
        self.id = ident
        self.task = task
        self.chain_index = chain_index
        self.segments: list[_Segment] = []
        self.turns = 0
        self.busy: object | None = None  # the plan in flight
        self.ended = False
        self.last_error: str | None = None


class Plan:
    """A checked request, ready to be sampled."""

    def __init__(self, session: _Session, body: ChatBody, request: Request, ident: str) -> None:
        self.session = session
        self.body = body
        self.request = request
        self.ident = ident
        self.segment: _Segment | None = None  # the segment it continues
        self.fresh: Episode | None = None  # or the one it starts
        self.splice: Sequence[int] = ()
        self.results: Sequence[Message] = ()

    @property
    def stream(self) -> bool:
        return bool(self.body.stream)

    @property
    def include_usage(self) -> bool:
        return self.body.stream_options is not None and self.body.stream_options.include_usage


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """A sampled turn as the client gets it."""

    content: str
    reasoning: str | None
    calls: tuple[ToolCall, ...]
    finish: str
    usage: Usage


def _arguments(text: str) -> object:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _same(sent: Message, kept: Message) -> bool:
    """Whether a message the client sent is one the session holds, as
    clients echo messages: content None and "" alike, reasoning dropped,
    tool-call arguments re-serialised (LangChain writes them with its own
    spacing) but equal as JSON."""
    if sent.role != kept.role or sent.text != kept.text or (sent.tool_call_id or None) != (kept.tool_call_id or None):
        return False
    if len(sent.calls) != len(kept.calls):
        return False
    for a, b in zip(sent.calls, kept.calls, strict=True):
        if a.id != b.id or a.function.name != b.function.name:
            return False
        if a.function.arguments != b.function.arguments and _arguments(a.function.arguments) != _arguments(b.function.arguments):
            return False
    return True


def _unanswerable(messages: Sequence[Message]) -> int | None:
    """The index of the first tool message that answers no call of the
    assistant message before it, or None."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == "assistant":
            calls = {call.id for call in message.calls}
        elif message.role == "tool":
            if message.tool_call_id not in calls:
                return index
        else:
            calls = set()
    return None


class Core:
    """The gateway's sessions over one token-level transport."""

    def __init__(
        self, generate: Generate, tokenizer: Tokenizer, template: Template, config: GatewayConfig, reward_fn: RewardFn | None
    ) -> None:
        self._generate = generate
        self._tokenizer = tokenizer
        self._template = template
        self.config = config
        self._agent: Agent[Any] = Agent(
            model_name_or_path=config.model,
            template=template,
            max_model_len=config.max_model_len,
            max_response_tokens=config.max_response_tokens,
            max_prompt_tokens=config.max_prompt_tokens,
            logprobs=config.logprobs,
            reward_fn=reward_fn,
            reward_timeout=config.reward_timeout,
        )
        self._sessions: dict[str, _Session] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    # The caller's side -------------------------------------------------

    def open(self, task: Task | None = None, *, session_id: str | None = None, chain_index: int = 0) -> str:
        """Start a session for ``task``; its id."""
        ident = session_id if session_id is not None else uuid.uuid4().hex
        if not SESSION_ID.match(ident):
            raise ConfigError("session_id", f"1 to 128 of A-Z a-z 0-9 . _ ~ -, not {ident[:60]!r}")
        if ident in self._sessions or ident in self._ended:
            raise ConfigError("session_id", f"session {ident!r} exists already")
        self._sessions[ident] = _Session(ident, dict(task or {}), chain_index)
        return ident

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    async def end(self, ident: str, *, error: str | None = None) -> list[Trajectory]:
        """End a session: its segments as trajectories, rewarded on the final
        messages. A request still in flight is answered 410 and not recorded."""
        session = self._sessions.pop(ident, None)
        if session is None:
            raise ConfigError("session_id", f"no open session {ident!r}")
        session.ended = True
        self._ended[ident] = None
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)
        error = error or session.last_error
        given: object = session.task.get("id")
        task_ident = str(given) if given is not None else ident
        if not session.segments:
            return [
                Trajectory(
                    task_id=task_ident, group_id=task_ident, chain_index=session.chain_index, request_id=ident,
                    messages=(), finish_reason="error", num_turns=0, token_level=False,
                    error=error or "the agent made no model call through the gateway",
                )  # fmt: skip
            ]
        out: list[Trajectory] = []
        last = len(session.segments) - 1
        for index, segment in enumerate(session.segments):
            episode = segment.episode
            episode.ident = task_ident
            reason: Any = "rewritten" if index < last else ("error" if error else segment.end())
            trajectory = episode.trajectory(reason, error=error if index == last else None)
            out.append(msgspec.structs.replace(trajectory, segment=index, first_turn=segment.first_turn))
        final = await reward_trajectory(self._agent.reward_fn, self._agent.reward_timeout, out[-1], session.task)
        rewarded = {"reward": final.reward, "reward_error": final.reward_error, "reward_seconds": final.reward_seconds}
        return [msgspec.structs.replace(t, **rewarded) for t in out[:-1]] + [final]

    # The server's side -------------------------------------------------

    def _session(self, ident: str | None) -> _Session | Reply:
        if ident is None:
            return error_reply(400, "no session: send requests to /sessions/{id}/v1/... or name it in an X-Session-Id header", code="session_missing")
        session = self._sessions.get(ident)
        if session is not None:
            return session
        if ident in self._ended:
            return error_reply(410, f"session {ident!r} has ended", kind="not_found_error", code="session_ended")
        if self.config.create_sessions and SESSION_ID.match(ident):
            self.open(session_id=ident)
            return self._sessions[ident]
        return error_reply(404, f"no session {ident[:128]!r}", kind="not_found_error", code="session_not_found")

    async def prepare(self, ident: str | None, raw: bytes) -> Plan | Reply:
        """Check a request and decide which segment it belongs to."""
        found = self._session(ident)
        if isinstance(found, Reply):
            return found
        body = decode_body(raw)
        if isinstance(body, Reply):
            return body
        if found.busy is not None:
            return error_reply(409, "a request of this session is in flight; a session's requests go one at a time", kind="conflict_error", code="session_busy")
        found.busy = body  # held from here: planning may wait for a worker thread
        plan: Plan | Reply | None = None
        try:
            plan = await self._plan(found, body)
        except (ValueError, ConfigError, msgspec.ValidationError) as exc:
            plan = error_reply(400, f"invalid request: {one_line(str(exc))}", code="invalid_request")
        finally:
            found.busy = plan if isinstance(plan, Plan) else None
        return plan

    async def _plan(self, session: _Session, body: ChatBody) -> Plan | Reply:
        messages = body.messages
        if not messages:
            return error_reply(400, "messages must not be empty", param="messages")
        if (body.n or 1) != 1:
            return error_reply(400, "the gateway samples one choice per request (n=1): a session is one trajectory", param="n")
        orphan = _unanswerable(messages)
        if orphan is not None:
            return error_reply(
                400, f"messages[{orphan}] is a tool result for a call that no assistant message before it made", param=f"messages[{orphan}]"
            )
        choice = tool_choice(body.tool_choice)
        if isinstance(choice, Reply):
            return choice
        tools = tuple(body.tools or ())
        big = sum(len(m.text) for m in messages) > OFF_LOOP_CHARS  # tokenised off the loop, as the agent loop does
        segment = session.segments[-1] if session.segments else None
        continues: _Segment | None = None
        if segment is not None and segment.open_calls and segment.tools == tools:
            kept = segment.episode.messages
            rest = messages[len(kept) :]
            if rest and all(m.role == "tool" for m in rest) and all(map(_same, messages[: len(kept)], kept)):
                continues = segment
        splice: Sequence[int] = ()
        fresh: Episode | None = None
        if continues is not None:
            episode = continues.episode
            assert episode.tokens is not None
            room = episode.room()
            if big:
                splice, fits = await anyio.to_thread.run_sync(episode.tokens.splice, kept, rest, tools, room)
            else:
                splice, fits = episode.tokens.splice(kept, rest, tools, room)
            if not fits:
                return _too_long("the tool results do not fit the segment's token budget")
            context: tuple[int, ...] = (*episode.tokens.context(), *splice)
            room = None if room is None else room - len(splice)
        else:
            fresh = Episode(self._agent, session.id, session.chain_index, session.id, self._tokenizer)
            fresh.messages = list(messages)
            record = functools.partial(TokenRecord, self._tokenizer, self._template, messages, tools, self.config.max_prompt_tokens)
            fresh.tokens = await anyio.to_thread.run_sync(record) if big else record()
            context = fresh.tokens.context()
            room = fresh.room()
        if room is not None and room < 1:
            return _too_long("the segment's token budget is spent")
        wanted = body.max_completion_tokens or body.max_tokens or self.config.max_new_tokens
        max_new = wanted if room is None else min(wanted or room, room)
        regex = body.guided_regex or (body.structured_outputs or {}).get("regex")
        request = Request(
            messages=messages,
            tools=tools,
            tool_choice=choice,
            temperature=body.temperature,
            top_p=body.top_p,
            max_new_tokens=max_new,
            stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
            seed=body.seed,
            ignore_eos=bool(body.ignore_eos),
            logprobs=self.config.logprobs,
            regex=regex if isinstance(regex, str) else None,
            response_format=body.response_format,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            top_k=body.top_k,
            min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            prompt_ids=context,
            request_id=session.id,
        )
        plan = Plan(session, body, request, uuid.uuid4().hex)
        plan.segment, plan.fresh, plan.splice = continues, fresh, splice
        plan.results = messages[len(continues.episode.messages) :] if continues is not None else ()
        return plan

    def release(self, plan: Plan) -> None:
        if plan.session.busy is plan:
            plan.session.busy = None

    async def complete(self, plan: Plan) -> Answer | Reply:
        """Sample the planned turn and record it."""
        session = plan.session
        try:
            started = anyio.current_time()
            try:
                completion = await self._generate(plan.request)
            except ContextLengthError as exc:
                return _too_long(str(exc))
            except BaseException as exc:  # noqa: BLE001 - a transport or middleware may be user code: the client hears of it
                if escapes(exc):
                    raise
                session.last_error = f"{type(exc).__name__}: {one_line(str(exc))}"
                _log.warning("%s: the transport failed: %s", session.id, session.last_error)
                status = 503 if isinstance(exc, TransientError) else 502 if isinstance(exc, AgentflyError) else 500
                return error_reply(status, f"the policy's transport failed: {session.last_error}", kind="server_error", code="transport_error")
            if session.ended:
                return error_reply(410, f"session {session.id!r} ended while this request ran", kind="not_found_error", code="session_ended")
            return self._record(plan, completion, anyio.current_time() - started)
        finally:
            self.release(plan)

    def _record(self, plan: Plan, completion: Completion, seconds: float) -> Answer:
        session = plan.session
        if plan.segment is not None:
            segment = plan.segment
            episode = segment.episode
            assert episode.tokens is not None
            episode.tokens.add_observation(plan.splice, len(episode.messages))
            episode.messages.extend(plan.results)
            episode.tool_rounds += 1
            episode.tool_calls += len(plan.results)
        else:
            assert plan.fresh is not None
            episode = plan.fresh
            if session.segments:
                _log.info("%s: the request does not extend the recorded history; segment %d starts", session.id, len(session.segments))
            segment = _Segment(episode, plan.request.tools, session.turns)
            session.segments.append(segment)
        output = episode.took(plan.request, completion, seconds)
        session.turns += 1
        session.last_error = None
        text = output.text
        if self._template.decode is not None and output.token_ids is not None:
            text = self._template.decode(self._tokenizer, output.token_ids)
        calls, errors, parsed = read_calls(output, session.turns, self._template, text, plan.request.tools)
        good = tuple(call for call, error in zip(calls, errors, strict=True) if error is None)
        bad = [call.function.arguments for call, error in zip(calls, errors, strict=True) if error is not None]
        if bad:
            episode.tool_errors["malformed_call"] += len(bad)
        content = "\n".join([parsed.content, *bad]) if bad else parsed.content
        episode.messages.append(Message(role="assistant", content=content, reasoning_content=parsed.reasoning, tool_calls=good))
        segment.finish = output.finish_reason
        segment.open_calls = good
        # Token-level: the ids are the count; otherwise the transport's report.
        usage = completion.usage if output.token_ids is None else Usage(prompt_tokens=len(plan.request.prompt_ids or ()), completion_tokens=len(output.token_ids))
        finish = "tool_calls" if good else ("length" if output.finish_reason == "length" else "stop")
        return Answer(content=content, reasoning=parsed.reasoning, calls=good, finish=finish, usage=usage)


def _too_long(message: str) -> Reply:
    return error_reply(400, f"This model's maximum context length is exceeded: {message}", code="context_length_exceeded", param="messages")
