"""Streaming transports: a request in, chunks out as they are sampled.

A streaming transport is, like :data:`~agentfly_min.Generate`, a plain
type: :data:`Stream`, a function from a :class:`~agentfly_min.Request` to an
async context manager of an async iterator of :class:`Chunk`::

    async with stream(request) as chunks:
        async for chunk in chunks:
            print(chunk.text, end="")

The context manager is what makes leaving early safe on asyncio and trio
alike: leaving the block (``break``, an exception, a cancel scope) closes
the HTTP stream or aborts the engine request at once, not whenever a
garbage collector gets to an abandoned generator.

A chunk carries a delta of one sample (``index``): text, token ids and their
logprobs where the transport has them, reasoning, tool-call pieces; the
last chunk of a sample has its ``finish_reason``, and the stream's last
chunk its ``usage``. :func:`collect` turns a stream into exactly the
:class:`~agentfly_min.Completion` the non-streaming call gives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeAlias

import msgspec

from .errors import MalformedResponseError
from .records import Completion, FinishReason, FunctionCall, Generate, Output, Request, ToolCall, Usage

__all__ = ["Chunk", "ToolCallDelta", "Stream", "StreamMiddleware", "collect", "collect_chunks", "one_chunk"]


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A piece of tool call ``index`` of a sample, in the OpenAI streaming
    shape: the id and name come once, the arguments in pieces."""

    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Chunk(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One piece of a streamed completion, for sample ``index``."""

    index: int = 0
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] | None = None
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    prompt_ids: tuple[int, ...] | None = None
    model: str = ""
    server: str | None = None
    weight_versions: tuple[int, ...] | None = None
    weight_version_range: tuple[int, int] | None = None
    """The oldest and newest policy versions behind the completion, where a
    transport knows them as a range rather than per token."""


Chunks: TypeAlias = AbstractAsyncContextManager[AsyncIterator[Chunk]]
Stream: TypeAlias = Callable[[Request], Chunks]
"""A streaming transport: ``async with stream(request) as chunks: async for chunk in chunks``."""

StreamMiddleware: TypeAlias = Callable[[Stream], Stream]
"""A function from streaming transport to streaming transport."""


class _Sample:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.ids: list[int] = []
        self.logprobs: list[float] | None = []
        self.versions: list[int] | None = []
        self.calls: dict[int, list[str | None]] = {}  # index -> [id, name, arguments]
        self.finish: FinishReason | None = None

    def add(self, chunk: Chunk) -> None:
        self.text.append(chunk.text)
        self.reasoning.append(chunk.reasoning)
        self.ids.extend(chunk.token_ids)
        if self.logprobs is not None:
            # With token ids, one logprob per id or none for the sample; in
            # a text stream (chat), whatever logprobs come.
            if chunk.token_ids and (chunk.logprobs is None or len(chunk.logprobs) != len(chunk.token_ids)):
                self.logprobs = None
            elif chunk.logprobs is not None:
                self.logprobs.extend(chunk.logprobs)
        if self.versions is not None:
            if chunk.weight_versions is not None and len(chunk.weight_versions) == len(chunk.token_ids):
                self.versions.extend(chunk.weight_versions)
            elif chunk.token_ids:
                self.versions = None
        for delta in chunk.tool_calls:
            call = self.calls.setdefault(delta.index, [None, None, ""])
            call[0] = call[0] or delta.id
            call[1] = call[1] or delta.name
            call[2] = (call[2] or "") + delta.arguments
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason

    def output(self, token_level: bool) -> Output:
        calls = tuple(
            ToolCall(id=call_id or "", function=FunctionCall(name=name or "", arguments=arguments or ""))
            for call_id, name, arguments in (self.calls[k] for k in sorted(self.calls))
        )
        reasoning = "".join(self.reasoning)
        return Output(
            text="".join(self.text),
            finish_reason=self.finish or "stop",  # collect_chunks refuses a sample without one
            tool_calls=calls,
            reasoning=reasoning or None,
            token_ids=tuple(self.ids) if token_level else None,
            logprobs=tuple(self.logprobs) if self.logprobs else None,
            weight_versions=tuple(self.versions) if token_level and self.versions is not None and self.ids else None,
        )


def collect_chunks(chunks: Sequence[Chunk]) -> Completion:
    """The :class:`Completion` that ``chunks`` (a whole stream) add up to."""
    samples: dict[int, _Sample] = {}
    usage: Usage | None = None
    prompt_ids: tuple[int, ...] | None = None
    model = ""
    server: str | None = None
    token_level = any(chunk.token_ids for chunk in chunks)
    versions = [v for chunk in chunks for v in (chunk.weight_versions or ())]
    versions += [v for chunk in chunks for v in (chunk.weight_version_range or ())]
    for chunk in chunks:
        samples.setdefault(chunk.index, _Sample()).add(chunk)
        usage = chunk.usage or usage
        prompt_ids = chunk.prompt_ids or prompt_ids
        model = chunk.model or model
        server = chunk.server or server
    if not samples:
        raise MalformedResponseError("the stream ended without a chunk (cut off before its first?)")
    unfinished = sorted(k for k, sample in samples.items() if sample.finish is None)
    if unfinished:
        # A body that ends cleanly without a finish_reason is cut off, not
        # finished: read as "stop", its partial text would train as an answer.
        raise MalformedResponseError(f"the stream ended without a finish_reason for sample {unfinished[0]} (cut off?)")
    outputs = tuple(samples[k].output(token_level) for k in sorted(samples))
    return Completion(
        outputs=outputs,
        usage=usage or Usage(),
        model=model,
        prompt_ids=prompt_ids,
        server=server,
        weight_version=max(versions) if versions else None,
        min_weight_version=min(versions) if versions else None,
    )


async def collect(stream: Stream, request: Request) -> Completion:
    """Run ``stream`` to its end and return the :class:`Completion` it adds
    up to: the same one the non-streaming call gives."""
    chunks: list[Chunk] = []
    async with stream(request) as incoming:
        async for chunk in incoming:
            chunks.append(chunk)
    return collect_chunks(chunks)


def one_chunk(generate: Generate) -> Stream:
    """A transport with no streaming (verl's) as a stream of one chunk per
    sample, sent when the whole completion is there."""

    @asynccontextmanager
    async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
        completion = await generate(request)
        yield _chunks_of(completion)

    return stream


def _range(completion: Completion) -> tuple[int, int] | None:
    if completion.weight_version is None:
        return None
    low = completion.weight_version if completion.min_weight_version is None else completion.min_weight_version
    return low, completion.weight_version


async def _chunks_of(completion: Completion) -> AsyncIterator[Chunk]:
    last = len(completion.outputs) - 1
    for index, output in enumerate(completion.outputs):
        yield Chunk(
            index=index,
            text=output.text,
            token_ids=output.token_ids or (),
            logprobs=output.logprobs,
            reasoning=output.reasoning or "",
            tool_calls=tuple(
                ToolCallDelta(index=k, id=call.id, name=call.function.name, arguments=call.function.arguments)
                for k, call in enumerate(output.tool_calls)
            ),
            finish_reason=output.finish_reason,
            usage=completion.usage if index == last else None,
            prompt_ids=completion.prompt_ids if index == 0 else None,
            model=completion.model,
            server=completion.server,
            weight_versions=output.weight_versions,
            weight_version_range=_range(completion) if index == last else None,
        )
