"""Running an agent: one episode (:func:`run_agent`) and many (:func:`rollout`).

Both are plain async functions over a :data:`~agentfly_min.Generate`, so any
transport and any middleware stack drive them, on asyncio or trio.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Protocol

import anyio
import msgspec

from ..errors import ContextLengthError, TransportError
from ..records import Completion, FunctionCall, Generate, Message, Output, Request, ToolCall, Usage
from ..templates import MalformedToolCall, ParsedCall, parse_tool_calls
from ..templates.qwen25 import IM_END, GENERATION_PROMPT, render, render_tool_results
from ..tools import Tool, ToolError
from .agent import Agent, Task
from .trajectory import EpisodeEnd, Trajectory

__all__ = ["Tokenizer", "Progress", "run_agent", "rollout", "task_messages"]

_log = logging.getLogger("agentfly_min.agent")


class Tokenizer(Protocol):
    """What the loop needs of a tokenizer (a ``transformers`` tokenizer fits)."""

    def encode(self, text: str, /, *, add_special_tokens: bool) -> list[int]: ...


Progress = Callable[[int, int, Trajectory], None]
"""``progress(done, total, trajectory)``, called as each trajectory finishes."""


def task_messages(task: Task, system_prompt: str | None) -> tuple[Message, ...]:
    """The opening messages of a task: ``messages`` (OpenAI shape), or
    ``question`` / ``prompt`` text as one user message; ``system_prompt``
    goes first unless the task brings its own system message."""
    if "messages" in task:
        messages = msgspec.convert(task["messages"], tuple[Message, ...])
    else:
        text = task.get("question", task.get("prompt"))
        if not isinstance(text, str):
            raise ValueError("a task needs `messages`, or `question`/`prompt` text")
        messages = (Message(role="user", content=text),)
    if not messages:
        raise ValueError("a task's `messages` is empty")
    if system_prompt is not None and messages[0].role != "system":
        messages = (Message(role="system", content=system_prompt), *messages)
    return messages


class _Tokens:
    """The token-exact record of an episode, grown turn by turn.

    ``logprobs`` and ``versions`` stay aligned with ``ids`` while every
    sampled turn brings them; the first turn without them turns them to None
    for good (a partial record would mislead a trainer)."""

    def __init__(self, tokenizer: Tokenizer, prompt: str, max_prompt_tokens: int | None) -> None:
        self._tokenizer = tokenizer
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        self.dropped = 0
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            self.dropped = len(ids) - max_prompt_tokens
            ids = ids[self.dropped :]
            _log.warning(
                "prompt of %d tokens cut to its last %d (max_prompt_tokens)", len(ids) + self.dropped, len(ids)
            )
        self.prompt_ids = ids
        end = tokenizer.encode(IM_END, add_special_tokens=False)
        if len(end) != 1:
            raise ValueError(f"the tokenizer does not have {IM_END} as one token; it is not a Qwen2.5 tokenizer")
        self.end_id = end[0]
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] | None = []
        self.versions: list[int] | None = []

    def context(self) -> tuple[int, ...]:
        return (*self.prompt_ids, *self.ids)

    def sampled(self, output: Output) -> None:
        ids = output.token_ids or ()
        self.ids.extend(ids)
        self.mask.extend([1] * len(ids))
        if self.logprobs is not None:
            if output.logprobs is not None and len(output.logprobs) == len(ids):
                self.logprobs.extend(output.logprobs)
            else:
                self.logprobs = None
        if self.versions is not None:
            if output.weight_versions is not None and len(output.weight_versions) == len(ids):
                self.versions.extend(output.weight_versions)
            else:
                self.versions = None

    def injected(self, text: str) -> None:
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        self.ids.extend(ids)
        self.mask.extend([0] * len(ids))
        if self.logprobs is not None:
            self.logprobs.extend([0.0] * len(ids))
        if self.versions is not None:
            self.versions.extend([-1] * len(ids))

    def observation(self, last_output: Output, results: Sequence[Message]) -> None:
        """Splice in what follows a sampled turn: the end of the assistant
        turn (if the model did not sample it), the tool results, and the next
        generation prompt; exactly the text the template would put there."""
        sampled = last_output.token_ids or ()
        ended = bool(sampled) and sampled[-1] == self.end_id
        self.injected(("" if ended else IM_END) + "\n" + render_tool_results(results) + GENERATION_PROMPT)


def _calls(output: Output, turn: int) -> tuple[tuple[ToolCall, ...], list[str | None], str]:
    """The turn's tool calls, an error per call (None if it parsed) and the
    assistant's plain content."""
    if output.tool_calls:  # the server parsed them already
        return output.tool_calls, [None] * len(output.tool_calls), output.text
    parsed = parse_tool_calls(output.text)
    calls: list[ToolCall] = []
    errors: list[str | None] = []
    for k, call in enumerate(parsed.calls):
        call_id = f"call_{turn}_{k}"
        if isinstance(call, ParsedCall):
            calls.append(ToolCall(id=call_id, function=FunctionCall(name=call.name, arguments=call.arguments)))
            errors.append(None)
        else:
            assert isinstance(call, MalformedToolCall)
            calls.append(ToolCall(id=call_id, function=FunctionCall(name="invalid_tool_call", arguments=call.raw)))
            errors.append(f"Error: malformed tool call: {call.reason}. Write <tool_call>{{\"name\": ..., \"arguments\": {{...}}}}</tool_call>.")
    return tuple(calls), errors, parsed.content


async def _run_tool(tools: Mapping[str, Tool], call: ToolCall) -> tuple[str, bool]:
    """Run one call; return the text for the model and whether it failed."""
    name = call.function.name
    chosen = tools.get(name)
    if chosen is None:
        available = ", ".join(sorted(tools)) or "none"
        return f"Error: unknown tool {name!r}; available tools: {available}.", True
    try:
        with anyio.move_on_after(chosen.timeout) as scope:
            return await chosen.call(call.function.arguments), False
        if scope.cancelled_caught:
            return f"Error: {name} did not finish within {chosen.timeout:g} s.", True
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        return f"Error: invalid arguments for {name}: {exc}.", True
    except msgspec.DecodeError as exc:
        return f"Error: the arguments for {name} are not valid JSON ({exc}).", True
    except ToolError as exc:
        return f"Error: {exc}", True
    except Exception as exc:  # noqa: BLE001 - a tool is user code; its failure is reported to the model
        return f"Error: {name} raised {type(exc).__name__}: {exc}", True
    raise AssertionError("unreachable")


async def _run_tools(
    tools: Mapping[str, Tool], calls: Sequence[ToolCall], parse_errors: Sequence[str | None]
) -> tuple[list[Message], int]:
    results: list[str] = [""] * len(calls)
    failed = 0

    async def one(index: int, call: ToolCall) -> None:
        nonlocal failed
        error = parse_errors[index]
        if error is not None:
            results[index], bad = error, True
        else:
            results[index], bad = await _run_tool(tools, call)
        failed += bad

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(one, index, call)
    messages = [
        Message(role="tool", content=text, tool_call_id=call.id, name=call.function.name)
        for call, text in zip(calls, results, strict=True)
    ]
    return messages, failed


async def _reward(agent: Agent, trajectory: Trajectory, task: Task) -> Trajectory:
    if agent.reward_fn is None or trajectory.error is not None:
        return trajectory
    start = anyio.current_time()
    try:
        value: Any = agent.reward_fn(trajectory, task)
        if inspect.isawaitable(value):
            value = await value
        reward = float(value)
    except Exception as exc:  # noqa: BLE001 - a reward is user code; its failure is recorded, not raised
        return msgspec.structs.replace(
            trajectory, reward_error=f"{type(exc).__name__}: {exc}", reward_seconds=anyio.current_time() - start
        )
    return msgspec.structs.replace(trajectory, reward=reward, reward_seconds=anyio.current_time() - start)


def _room(agent: Agent, tokens: _Tokens | None) -> int | None:
    """Tokens the next turn may sample within the budgets, or None if unbounded."""
    if tokens is None:
        return None
    limits = []
    if agent.max_model_len is not None:
        limits.append(agent.max_model_len - len(tokens.prompt_ids) - len(tokens.ids))
    if agent.max_response_tokens is not None:
        limits.append(agent.max_response_tokens - len(tokens.ids))
    return min(limits) if limits else None


async def run_agent(
    agent: Agent,
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
    transport returns sampled ids the trajectory is token-exact. Failures are
    recorded on the trajectory, never raised: a transport error ends the
    episode with ``error`` set; a bad tool call is answered with an error
    message and the episode goes on; a raising reward sets ``reward_error``.
    Cancellation propagates.
    """
    ident = task_id if task_id is not None else str(task.get("id", "0"))
    session = request_id or f"{ident}-{chain_index}-{uuid.uuid4().hex[:12]}"
    schemas = tuple(t.schema for t in agent.tools)
    tools = {t.name: t for t in agent.tools}

    def finish(reason: EpisodeEnd, **fields: Any) -> Trajectory:
        token_level = tokens is not None and token_level_seen
        return Trajectory(
            task_id=ident,
            group_id=ident,
            chain_index=chain_index,
            request_id=session,
            messages=tuple(messages),
            finish_reason=reason,
            num_turns=turns,
            token_level=token_level,
            prompt_ids=tuple(tokens.prompt_ids) if tokens else (),
            prompt_tokens_dropped=tokens.dropped if tokens else 0,
            response_ids=tuple(tokens.ids) if token_level and tokens else (),
            response_mask=tuple(tokens.mask) if token_level and tokens else (),
            response_logprobs=tuple(tokens.logprobs) if token_level and tokens and tokens.logprobs is not None else None,
            response_versions=tuple(tokens.versions) if token_level and tokens and tokens.versions is not None else None,
            tool_calls=tool_calls,
            tool_rounds=tool_rounds,
            tool_errors=tool_errors,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
            attempts=attempts,
            weight_versions=tuple(versions),
            turn_seconds=tuple(turn_seconds),
            tool_seconds=tool_seconds,
            **fields,
        )

    messages: list[Message] = []
    tokens: _Tokens | None = None
    token_level_seen = False
    turns = tool_calls = tool_rounds = tool_errors = prompt_tokens = completion_tokens = attempts = 0
    versions: list[int] = []
    turn_seconds: list[float] = []
    tool_seconds = 0.0
    try:
        messages = list(task_messages(task, agent.system_prompt))
        if tokenizer is not None:
            tokens = _Tokens(tokenizer, render(messages, schemas), agent.max_prompt_tokens)
    except (ValueError, msgspec.ValidationError) as exc:
        return finish("error", error=f"bad task: {exc}")

    reason: EpisodeEnd = "max_turns"
    while turns < agent.max_turns:
        max_new = agent.max_new_tokens
        room = _room(agent, tokens)
        if room is not None:
            if room < 1:
                reason = "context"
                break
            max_new = room if max_new is None else min(max_new, room)
        request = Request(
            messages=tuple(messages),
            tools=schemas,
            prompt_ids=tokens.context() if tokens is not None else None,
            max_new_tokens=max_new,
            temperature=agent.temperature,
            logprobs=tokens is not None and agent.logprobs,
            request_id=session,
        )
        started = anyio.current_time()
        try:
            completion: Completion = await generate(request)
        except ContextLengthError:  # the engine's context is full: a budget, not a failure
            reason = "context"
            break
        except TransportError as exc:
            return await _reward(agent, finish("error", error=f"{type(exc).__name__}: {exc}"), task)
        turn_seconds.append(anyio.current_time() - started)
        turns += 1
        attempts += completion.attempts
        prompt_tokens += completion.usage.prompt_tokens
        completion_tokens += completion.usage.completion_tokens
        if completion.weight_version is not None:
            versions.append(completion.weight_version)
        output = completion.outputs[0]
        if tokens is not None and output.token_ids is not None:
            token_level_seen = True
            tokens.sampled(output)
        calls, parse_errors, content = _calls(output, turns)
        messages.append(Message(role="assistant", content=content, tool_calls=calls))
        if not calls:
            reason = "length" if output.finish_reason == "length" else "answer"
            if reason == "length" and _cut_by_context(output, max_new, room):
                reason = "context"
            break
        if turns >= agent.max_turns:
            reason = "max_turns"
            break
        started = anyio.current_time()
        results, failed = await _run_tools(tools, calls, parse_errors)
        tool_seconds += anyio.current_time() - started
        tool_calls += len(calls)
        tool_rounds += 1
        tool_errors += failed
        messages.extend(results)
        if tokens is not None and token_level_seen:
            tokens.observation(output, results)
    return await _reward(agent, finish(reason), task)


def _cut_by_context(output: Output, asked: int | None, room: int | None) -> bool:
    """Whether a turn cut off by length was cut by the context (our budget,
    or the transport clamping to the engine's context as verl's server does)
    rather than by the per-turn limit."""
    sampled = len(output.token_ids or ())
    if room is not None and sampled >= room:
        return True
    return asked is not None and output.token_ids is not None and sampled < asked


async def rollout(
    agent: Agent,
    generate: Generate,
    tasks: Sequence[Task],
    *,
    n: int = 1,
    concurrency: int | None = None,
    tokenizer: Tokenizer | None = None,
    progress: Progress | None = None,
    skip: Container[tuple[str, int]] = (),
) -> list[Trajectory]:
    """Run ``n`` chains of ``agent`` on every task; return every trajectory,
    ordered by task then chain. Chains named in ``skip`` as ``(task id,
    chain index)`` (already done, say) are not run and not returned.

    Chains of one task share ``group_id`` (the task's ``id``, else its index)
    for group-relative advantages. At most ``concurrency`` chains run at once.
    Every chain returns a trajectory, failed ones with their reason; cancelling
    the rollout cancels every chain.
    """
    if n < 1:
        raise ValueError(f"rollout needs n >= 1, got {n}")
    todo = [
        (index, task, chain_index)
        for index, task in enumerate(tasks)
        for chain_index in range(n)
        if (str(task.get("id", index)), chain_index) not in skip
    ]
    total = len(todo)
    results: list[Trajectory | None] = [None] * total
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"rollout needs concurrency >= 1, got {concurrency}")
    limit = anyio.Semaphore(concurrency if concurrency is not None else max(total, 1))
    done = 0

    async def chain(slot: int, index: int, task: Task, chain_index: int) -> None:
        nonlocal done
        ident = str(task.get("id", index))
        async with limit:
            trajectory = await run_agent(agent, generate, task, tokenizer=tokenizer, task_id=ident, chain_index=chain_index)
        results[slot] = trajectory
        done += 1
        if progress is not None:
            progress(done, total, trajectory)

    async with anyio.create_task_group() as tg:
        for slot, (index, task, chain_index) in enumerate(todo):
            tg.start_soon(chain, slot, index, task, chain_index)
    finished = [t for t in results if t is not None]
    assert len(finished) == total  # every chain stores its trajectory or the group raised
    return finished
