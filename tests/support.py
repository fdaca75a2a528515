"""Small helpers shared by tests and benchmarks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

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
