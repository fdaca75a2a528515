"""The benchmark's agent workload, identical for every transport.

``tasks x chains`` episodes of ``turns`` model turns each; every turn samples
exactly ``new_tokens`` tokens (``ignore_eos``), and between turns a tool call
and its observation are spliced into the conversation, as in a tool-using
agent. The model is random, so the tool call cannot come from its text:
the workload adds it, which keeps the work the same on every transport
(the agent loop proper is tested elsewhere; here we measure transports).

A step function does one model turn for one conversation; ours go through a
:data:`~agentfly_min.Generate`, the raw ones straight to the engine or client.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from ..errors import TransportError
from ..records import FunctionCall, Generate, Message, Request, ToolCall
from ..templates import Template, Turn, get_template

__all__ = ["Workload", "Conversation", "RunStats", "Step", "run_workload", "generate_step", "OBSERVATION"]

OBSERVATION = '{"result": 42, "note": "observation from the tool"}'


class Workload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``template`` names the chat family whose prompts and splices the
    conversations use, so a family's rendering cost shows in the figures."""

    tasks: int = 8
    chains: int = 2
    turns: int = 3
    new_tokens: int = 32
    concurrency: int = 4
    template: str = "qwen2.5"


class Conversation:
    """One chain's growing context, as token ids and as messages, rendered
    and spliced by ``template`` as the agent loop does it."""

    def __init__(self, session: str, question: str, tokenizer: Any, template: Template | None = None) -> None:
        self.session = session
        self.messages: list[Message] = [Message(role="user", content=question)]
        self._tokenizer = tokenizer
        self._template = template or get_template("qwen2.5")
        self.ids: list[int] = self._template.prompt_ids(tokenizer, self.messages, ())
        self._last: list[int] = []
        self.turns = 0

    def sampled(self, ids: list[int], text: str) -> None:
        """Record a model turn (and the tool call the workload adds to it)."""
        self.ids.extend(ids)
        self._last = ids
        call = ToolCall(id=f"call_{self.turns}", function=FunctionCall(name="observe", arguments="{}"))
        self.messages.append(Message(role="assistant", content=text, tool_calls=(call,)))
        self.turns += 1

    def observe(self) -> None:
        """Splice in the tool's answer to the last turn's call."""
        result = Message(role="tool", content=OBSERVATION, tool_call_id=f"call_{self.turns - 1}", name="observe")
        turn = Turn(history=list(self.messages), sampled=self._last, results=[result], tools=())
        self.messages.append(result)
        self.ids.extend(self._template.between_ids(self._tokenizer, turn))


Step = Callable[[Conversation, int], Awaitable[int]]
"""``step(conversation, new_tokens)``: one model turn; returns tokens sampled."""


class RunStats(msgspec.Struct, frozen=True, kw_only=True):
    seconds: float
    tokens: int
    trajectories: int
    turn_latencies: tuple[float, ...]
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def trajectories_per_s(self) -> float:
        return self.trajectories / self.seconds if self.seconds > 0 else 0.0

    def latency(self, quantile: float) -> float:
        """The turn latency at ``quantile`` (0.5, 0.99), in seconds."""
        if not self.turn_latencies:
            return 0.0
        if len(self.turn_latencies) == 1:
            return self.turn_latencies[0]
        cuts = statistics.quantiles(self.turn_latencies, n=100, method="inclusive")
        return cuts[min(98, max(0, round(quantile * 100) - 1))]


async def run_workload(
    step: Step, workload: Workload, tokenizer: Any, *, on_chain: Callable[[], None] | None = None
) -> RunStats:
    """Run every chain of ``workload`` through ``step``, at most
    ``workload.concurrency`` at once, and time it."""
    latencies: list[float] = []
    tokens = errors = 0
    template = get_template(workload.template)
    limit = anyio.Semaphore(workload.concurrency)

    async def chain(task: int, index: int) -> None:
        nonlocal tokens, errors
        conversation = Conversation(f"bench-{task}-{index}", f"Task {task}: what is {task} * 6?", tokenizer, template)
        async with limit:
            for turn in range(workload.turns):
                started = anyio.current_time()
                try:
                    sampled = await step(conversation, workload.new_tokens)
                except TransportError:
                    errors += 1  # counted and shown; the chain stops here
                    break
                latencies.append(anyio.current_time() - started)
                tokens += sampled
                if turn + 1 < workload.turns:
                    conversation.observe()
        if on_chain is not None:
            on_chain()

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for task in range(workload.tasks):
            for index in range(workload.chains):
                tg.start_soon(chain, task, index)
    seconds = anyio.current_time() - started
    return RunStats(
        seconds=seconds,
        tokens=tokens,
        trajectories=workload.tasks * workload.chains,
        turn_latencies=tuple(latencies),
        errors=errors,
    )


def generate_step(generate: Generate, *, token_level: bool) -> Step:
    """A step through one of our transports: prompt ids for token-level ones,
    messages for the OpenAI client."""

    async def step(conversation: Conversation, new_tokens: int) -> int:
        request = Request(
            messages=tuple(conversation.messages),
            prompt_ids=tuple(conversation.ids) if token_level else None,
            max_new_tokens=new_tokens,
            ignore_eos=True,
            temperature=1.0,
            request_id=conversation.session,
        )
        completion = await generate(request)
        output = completion.outputs[0]
        conversation.sampled(list(output.token_ids or ()), output.text)
        return completion.usage.completion_tokens

    return step
