"""Running an agent: one episode (:func:`run_agent`, :func:`stream_agent`);
many are :mod:`.rollout`'s.

All are plain async functions over a :data:`~agentfly_min.Generate`, so any
transport and any middleware stack drive them, on asyncio or trio.

The contract: an episode always ends in a :class:`Trajectory`. A transport
or middleware that fails (with our errors or anything else), model output
that cannot be parsed, a tool or reward that raises: each is recorded on the
trajectory and the other chains go on. Only cancellation propagates.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from .._text import one_line
from .._user_code import escapes
from ..errors import ContextLengthError, RetriesExhaustedError
from ..records import Completion, Generate, Message, Output, Request, ToolCall
from ..tools import Tool, ToolError
from ..stream import Chunk, Stream, collect_chunks
from .agent import Agent, Task
from .events import EpisodeDone, Event, ReasoningDelta, TextDelta, ToolCallEvent, ToolResultEvent, TurnEnd
from ._episode import Episode
from ._reward import reward_trajectory
from ._tokens import OFF_LOOP_CHARS, TokenRecord, Tokenizer
from ._turns import read_calls
from .trajectory import EpisodeEnd, Trajectory

__all__ = ["Tokenizer", "run_agent", "stream_agent", "task_messages", "task_id"]

_log = logging.getLogger("agentfly_min.agent")
_HEADER_UNSAFE = re.compile(r"[^!-~]")
_tool_log = logging.getLogger("agentfly_min.tools")


def task_id(task: Task, index: int) -> str:
    """A task's id: its ``id`` field, else ``#<index>`` (its position), which
    an explicit id rarely takes; :func:`rollout` refuses a repeated id."""
    given: object = task  # a task list or file may hold anything
    return str(given["id"]) if isinstance(given, Mapping) and "id" in given else f"#{index}"


def task_messages(task: Task, system_prompt: str | None) -> tuple[Message, ...]:
    """The opening messages of a task: ``messages`` (OpenAI shape), or
    ``question`` / ``prompt`` text as one user message; ``system_prompt``
    goes first unless the task brings its own system message."""
    given: object = task
    if not isinstance(given, Mapping):
        raise ValueError(f"a task is a mapping (a dict), got {type(given).__name__}")
    if "messages" in task:
        messages = msgspec.convert(task["messages"], tuple[Message, ...])
    else:
        text = task.get("question", task.get("prompt"))
        if not isinstance(text, str):
            raise ValueError("a task needs `messages`, or `question`/`prompt` text")
        messages = (Message(role="user", content=text),)
    if not messages:
        raise ValueError("a task's `messages` is empty")
    if system_prompt is not None and messages[0].role not in ("system", "developer"):
        messages = (Message(role="system", content=system_prompt), *messages)
    return messages


async def _run_tool(tools: Mapping[str, Tool], call: ToolCall) -> tuple[str, str | None]:
    """Run one call; return the text for the model and the kind of failure
    (None when it worked)."""
    name = call.function.name
    chosen = tools.get(name)
    if chosen is None:
        available = ", ".join(sorted(tools)) or "none"
        return f"Error: unknown tool {name!r}; available tools: {available}.", "unknown_tool"
    try:
        if not chosen.is_async and not chosen.blocking:
            # Declared cheap: it runs inline, where no deadline could stop it.
            return await chosen.call(call.function.arguments), None
        with anyio.move_on_after(chosen.timeout) as scope:
            return await chosen.call(call.function.arguments), None
        if scope.cancelled_caught:
            return f"Error: {name} did not finish within {chosen.timeout:g} s.", "timeout"
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        return f"Error: invalid arguments for {name}: {exc}.", "invalid_arguments"
    except msgspec.DecodeError as exc:
        return f"Error: the arguments for {name} are not valid JSON ({exc}).", "invalid_json"
    except ToolError as exc:
        return f"Error: {exc}", "tool_error"
    except BaseException as exc:  # noqa: BLE001 - a tool is user code; its failure is reported to the model
        if escapes(exc):
            raise
        return f"Error: {name} raised {type(exc).__name__}: {one_line(str(exc))}", "raised"
    raise AssertionError("unreachable")


async def _run_tools(
    tools: Mapping[str, Tool], calls: Sequence[ToolCall], parse_errors: Sequence[str | None], session: str
) -> tuple[list[Message], list[str | None]]:
    """Run a turn's calls concurrently; the tool messages, and for each the
    kind of its failure (None when it worked)."""
    results: list[str] = [""] * len(calls)
    kinds: list[str | None] = [None] * len(calls)

    async def one(index: int, call: ToolCall) -> None:
        error = parse_errors[index]
        if error is not None:
            results[index], kinds[index] = error, "malformed_call"
        else:
            results[index], kinds[index] = await _run_tool(tools, call)
        if kinds[index] is not None:
            _tool_log.info("%s: tool call %s failed (%s): %s", session, call.function.name, kinds[index], results[index][:200])

    if len(calls) == 1:
        await one(0, calls[0])  # the common case: no task group to set up
    else:
        async with anyio.create_task_group() as tg:
            for index, call in enumerate(calls):
                tg.start_soon(one, index, call)
    messages = [
        Message(role="tool", content=text, tool_call_id=call.id, name=call.function.name)
        for call, text in zip(calls, results, strict=True)
    ]
    return messages, kinds


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(str(exc))}"


Emit = Callable[[Event], Awaitable[None]]


async def _turns(episode: Episode, generate: Generate, emit: Emit | None = None) -> tuple[EpisodeEnd, str | None]:
    """Run the episode's turns; why it ended, and the error if one ended it.
    ``emit`` hears of each tool call, result and turn as they happen."""
    agent = episode.agent
    while episode.turns < agent.max_turns:
        max_new = agent.max_new_tokens
        room = episode.room()
        if room is not None:
            if room < 1:
                return "context", None
            max_new = room if max_new is None else min(max_new, room)
        tokens = episode.tokens
        request = Request(
            messages=tuple(episode.messages),
            tools=episode.schemas,
            # After a turn without ids the context in ids is incomplete:
            # the transport renders the messages instead.
            prompt_ids=tokens.context() if tokens is not None and episode.gap is None else None,
            max_new_tokens=max_new,
            temperature=agent.temperature,
            logprobs=tokens is not None and episode.gap is None and agent.logprobs,
            request_id=episode.session,
        )
        started = anyio.current_time()
        try:
            completion = await generate(request)
        except ContextLengthError:  # the engine's context is full: a budget, not a failure
            return "context", None
        except BaseException as exc:  # noqa: BLE001 - a transport or middleware may be user code; the chain records it
            if escapes(exc):
                raise
            if isinstance(exc, RetriesExhaustedError):  # the attempts it made count, though none succeeded
                episode.attempts += exc.attempts
                episode.retries.update(exc.retries)
            return "error", _failure(exc)
        if not completion.outputs:  # a Completion built around its own checks
            return "error", "MalformedResponseError: the transport returned no outputs"
        output = episode.took(request, completion, anyio.current_time() - started)
        text = output.text
        if episode.template.decode is not None and tokens is not None and output.token_ids is not None:
            text = episode.template.decode(episode.tokenizer, output.token_ids)
        calls, parse_errors, parsed = read_calls(output, episode.turns, episode.template, text, episode.schemas)
        assistant = Message(role="assistant", content=parsed.content, reasoning_content=parsed.reasoning, tool_calls=calls)
        episode.messages.append(assistant)
        if emit is not None:
            await emit(TurnEnd(turn=episode.turns, message=assistant))
            for call in calls:
                await emit(ToolCallEvent(turn=episode.turns, call=call))
        if not calls:
            if output.finish_reason != "length":
                return "answer", None
            return ("context" if _cut_by_context(output, max_new, room) else "length"), None
        if episode.turns >= agent.max_turns:
            return "max_turns", None
        started = anyio.current_time()
        results, kinds = await _run_tools(episode.tools, calls, parse_errors, episode.session)
        episode.tool_seconds += anyio.current_time() - started
        episode.tool_calls += len(calls)
        episode.tool_rounds += 1
        episode.tool_errors.update(kind for kind in kinds if kind is not None)
        episode.messages.extend(results)
        if emit is not None:
            for result, kind in zip(results, kinds, strict=True):
                await emit(ToolResultEvent(turn=episode.turns, message=result, failed=kind is not None))
        if tokens is not None and episode.token_level:
            history, room = episode.messages[: -len(results)], episode.room()
            # What will be tokenised: the results, or what of them can fit.
            size = sum(len(m.text) for m in results)
            if room is not None:
                size = min(size, 2 * len(results) * (4 * max(room, 0) + 256))
            if size > OFF_LOOP_CHARS:  # a large splice is tokenised off the loop: it would hold every chain
                fits = await anyio.to_thread.run_sync(tokens.observation, history, results, episode.schemas, room)
            else:
                fits = tokens.observation(history, results, episode.schemas, room)
            if not fits:
                return "context", None  # the tool results did not fit the budget; what fits is in
    return "max_turns", None


def _cut_by_context(output: Output, asked: int | None, room: int | None) -> bool:
    """Whether a turn cut off by length was cut by the context (our budget,
    or the transport clamping to the engine's context as verl's server does)
    rather than by the per-turn limit."""
    sampled = len(output.token_ids or ())
    if room is not None and sampled >= room:
        return True
    return asked is not None and output.token_ids is not None and sampled < asked


async def run_agent(
    agent: Agent[Any],
    generate: Generate,
    task: Task,
    *,
    tokenizer: Tokenizer | None = None,
    task_id: str | None = None,
    chain_index: int = 0,
    request_id: str | None = None,
) -> Trajectory:
    """Run one episode of ``agent`` on ``task`` and return its trajectory.

    Each turn: generate, parse tool calls, run them (concurrently), append
    their results, repeat until the model answers without a tool call,
    ``max_turns`` is reached or the context budget runs out. With a
    ``tokenizer`` the prompt goes to the transport as token ids too, and if the
    transport returns sampled ids the trajectory is token-exact.

    Never raises but for cancellation: a failing transport or middleware
    (whatever it raises) ends the episode with ``error`` set; a bad tool call
    is answered with an error message and the episode goes on; a raising
    reward (or a NaN one) sets ``reward_error``.
    """
    return await _episode(agent, generate, task, tokenizer, task_id, chain_index, request_id, None)


async def _episode(
    agent: Agent[Any],
    generate: Generate,
    task: Task,
    tokenizer: Tokenizer | None,
    task_id: str | None,
    chain_index: int,
    request_id: str | None,
    emit: Emit | None,
) -> Trajectory:
    given: object = task
    ident = task_id if task_id is not None else str(given.get("id", "0")) if isinstance(given, Mapping) else "0"
    # The session id travels in headers (a router's affinity key): visible ASCII, bounded.
    session = request_id or f"{_HEADER_UNSAFE.sub('_', ident)[:200]}-{chain_index}-{uuid.uuid4().hex[:12]}"
    episode = Episode(agent, ident, chain_index, session, tokenizer)
    try:
        try:
            episode.messages = list(task_messages(task, agent.system_prompt))
            if tokenizer is not None:
                episode.tokens = TokenRecord(tokenizer, episode.template, episode.messages, episode.schemas, agent.max_prompt_tokens)
        except (ValueError, msgspec.ValidationError) as exc:
            return episode.trajectory("error", error=f"bad task: {one_line(str(exc))}")
        reason, error = await _turns(episode, generate, emit)
        if error is not None:
            _log.warning("%s: episode ended by an error: %s", session, error)
        return await reward_trajectory(agent.reward_fn, agent.reward_timeout, episode.trajectory(reason, error=error), task)
    except BaseException as exc:  # noqa: BLE001 - the promise: every episode ends in a trajectory
        if escapes(exc):
            raise
        _log.exception("%s: episode failed", session)
        return episode.trajectory("error", error=_failure(exc))


@asynccontextmanager
async def stream_agent(
    agent: Agent[Any],
    stream: Stream,
    task: Task,
    *,
    tokenizer: Tokenizer | None = None,
    task_id: str | None = None,
    chain_index: int = 0,
    request_id: str | None = None,
) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
    """Run one episode over a streaming transport and hand out what happens
    as it happens, for a UI or a terminal::

        async with stream_agent(agent, stream, task) as events:
            async for event in events:
                ...  # TextDelta, ReasoningDelta, TurnEnd, ToolCallEvent, ToolResultEvent, EpisodeDone

    The episode is :func:`run_agent`'s, turn for turn (the same trajectory,
    failures recorded the same way); the last event is :class:`EpisodeDone`
    with the trajectory. The episode waits for the consumer; leaving the
    block early cancels it."""
    send, receive = anyio.create_memory_object_stream[Event]()

    def deltas(turns: list[int]) -> Generate:
        async def generate(request: Request) -> Completion:
            turns[0] += 1
            chunks: list[Chunk] = []
            async with stream(request) as incoming:
                async for chunk in incoming:
                    chunks.append(chunk)
                    if chunk.reasoning:
                        await send.send(ReasoningDelta(turn=turns[0], text=chunk.reasoning))
                    if chunk.text and chunk.index == 0:
                        await send.send(TextDelta(turn=turns[0], text=chunk.text))
            return collect_chunks(chunks)

        return generate

    async def run() -> None:
        async with send:
            trajectory = await _episode(agent, deltas([0]), task, tokenizer, task_id, chain_index, request_id, send.send)
            await send.send(EpisodeDone(trajectory=trajectory))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield receive
        finally:
            tg.cancel_scope.cancel()
            receive.close()
