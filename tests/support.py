"""Small helpers shared by tests and benchmarks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from agentfly_min import Completion, Generate, Message, Output, Request, Usage


def says(text: str) -> tuple[Message, ...]:
    """The messages of a one-line user turn."""
    return (Message(role="user", content=text),)


def user(text: str) -> Request:
    """A one-message request with default sampling."""
    return Request(messages=says(text))


def answer(text: str, *, n: int = 1) -> Completion:
    return Completion(
        outputs=tuple(Output(text=text, finish_reason="stop") for _ in range(n)),
        usage=Usage(prompt_tokens=1, completion_tokens=len(text.split())),
    )


def echo_transport() -> Generate:
    """A transport that answers at once with the request's last message."""

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return answer(request.messages[-1].text or "", n=request.n)

    return generate


def scripted(steps: Sequence[Callable[[Request], Awaitable[Completion]]]) -> tuple[Generate, list[Request]]:
    """A transport that runs ``steps`` in order, one per call, recording the
    requests it saw. Running out of steps is a test failure."""
    seen: list[Request] = []

    async def generate(request: Request) -> Completion:
        seen.append(request)
        if len(seen) > len(steps):
            raise AssertionError(f"transport called {len(seen)} times, script has {len(steps)} steps")
        return await steps[len(seen) - 1](request)

    return generate, seen


class FakeClock:
    """A clock whose sleeps advance it: exact timing for sequential calls."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def token_model(tokenizer: Any, turns: Sequence[str], *, end: bool = True) -> tuple[Generate, list[Request]]:
    """A token-level transport: samples the canonical tokens of ``turns``
    (plus ``<|im_end|>`` when ``end``), with made-up logprobs."""
    seen: list[Request] = []
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def generate(request: Request) -> Completion:
        seen.append(request)
        text = turns[min(len(seen), len(turns)) - 1]
        ids = tokenizer.encode(text, add_special_tokens=False) + ([im_end] if end else [])
        logprobs = tuple(-0.01 * (i + 1) for i in range(len(ids)))
        output = Output(text=text, finish_reason="stop" if end else "length", token_ids=tuple(ids), logprobs=logprobs)
        return Completion(outputs=(output,), usage=Usage(prompt_tokens=len(request.prompt_ids or ()), completion_tokens=len(ids)))

    return generate, seen
