"""Streaming: the client transport over real HTTP (the fake server), the
stream middleware and its rules, collecting, one-chunk streams, and agent
episodes that report as they run. (The real engine and server: in
test_vllm_engine.py, test_vllm_server.py and test_verl.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from agentfly_min import (
    Agent,
    Chunk,
    ClientConfig,
    Completion,
    GenerationTimeoutError,
    Output,
    Request,
    RetriesExhaustedError,
    Stream,
    TransientError,
    Usage,
    collect,
    compose,
    open_backend,
    open_stream,
    run_agent,
)
from agentfly_min.agent import EpisodeDone, TextDelta, ToolCallEvent, ToolResultEvent, TurnEnd, stream_agent
from agentfly_min.middleware import stream_concurrency_limit, stream_rate_limit, stream_retry, stream_timeout
from agentfly_min.stream import collect_chunks, one_chunk
from agentfly_min.testing import FakeOpenAIServer
from agentfly_min.tools import calculator

from .support import FakeClock, says

pytestmark = pytest.mark.anyio


def config(server: FakeOpenAIServer, **overrides: Any) -> ClientConfig:
    return ClientConfig(base_url=server.base_url, api_key="k", timeout=10, **overrides)


async def test_a_stream_collects_to_the_completion_the_plain_call_gives(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    request = Request(messages=says("four words right here"), n=2, logprobs=True)
    async with open_stream(config(fake_server)) as stream:
        chunks: list[Chunk] = []
        async with stream(request) as incoming:
            async for chunk in incoming:
                chunks.append(chunk)
    async with open_backend(config(fake_server)) as generate:
        plain = await generate(request)
    assert [c.text for c in chunks if c.index == 0 and c.text] == ["echo:", " four", " words", " right", " here"]
    streamed = collect_chunks(chunks)
    assert [o.text for o in streamed.outputs] == [o.text for o in plain.outputs]
    assert [o.finish_reason for o in streamed.outputs] == [o.finish_reason for o in plain.outputs]
    assert streamed.usage == plain.usage and streamed.model == plain.model


async def test_streamed_tool_calls_are_assembled(fake_server: FakeOpenAIServer) -> None:
    from agentfly_min import FunctionSchema, NamedToolChoice, ToolSchema

    fake_server.configure()
    tool = ToolSchema(function=FunctionSchema(name="lookup", parameters={"type": "object"}))
    async with open_stream(config(fake_server)) as stream:
        completion = await collect(stream, Request(messages=says("find it"), tools=(tool,), tool_choice=NamedToolChoice(name="lookup")))
    (output,) = completion.outputs
    assert output.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in output.tool_calls] == [("call_0", "lookup", '{"text": "find it"}')]


async def test_retry_happens_only_before_the_first_chunk(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=("503", "429", "ok"), retry_after=0.0)
    async with open_stream(config(fake_server)) as stream:
        completion = await collect(stream, Request(messages=says("again please")))
    assert completion.outputs[0].text == "echo: again please"
    assert [e.outcome for e in fake_server.log()] == ["503", "429", "ok"]
    # Cut after two chunks: the error surfaces; the stream is not restarted behind the consumer's back.
    fake_server.configure(script=("cut",))
    seen: list[str] = []
    async with open_stream(config(fake_server)) as stream:
        with pytest.raises(TransientError, match="broke off"):
            async with stream(Request(messages=says("one two three four five"))) as incoming:
                async for chunk in incoming:
                    seen.append(chunk.text)
    assert seen == ["echo:", " one"] and len(fake_server.log()) == 1


async def test_retry_gives_up_with_the_reason(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=("503", "503", "503"), retry_after=0.0)
    async with open_stream(config(fake_server), middleware=stream_retry(max_retries=2, sleep=_no_sleep)) as stream:
        with pytest.raises(RetriesExhaustedError, match="retry budget of 2"):
            await collect(stream, Request(messages=says("x")))


async def _no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


async def test_first_chunk_and_idle_deadlines(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=("slow",), slow_seconds=5)
    async with open_stream(config(fake_server), middleware=stream_timeout(first_chunk=0.3)) as stream:
        with pytest.raises(GenerationTimeoutError, match="0.3 s"):
            await collect(stream, Request(messages=says("x")))
    fake_server.configure(chunk_delay=0.5)
    got: list[str] = []
    async with open_stream(config(fake_server), middleware=stream_timeout(first_chunk=5, idle=0.2)) as stream:
        with pytest.raises(GenerationTimeoutError, match="0.2 s"):
            async with stream(Request(messages=says("a b c"))) as incoming:
                async for chunk in incoming:
                    got.append(chunk.text)
    assert got == ["echo:"]  # the first came in time, the second did not


async def test_leaving_a_stream_early_closes_the_connection(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(chunk_delay=0.2)
    async with open_stream(config(fake_server)) as stream:
        async with stream(Request(messages=says(" ".join(["word"] * 50)))) as incoming:
            async for _ in incoming:
                break  # the consumer has seen enough
        with anyio.fail_after(5):
            while not any(e.outcome == "stream-disconnected" for e in fake_server.log()):
                await anyio.sleep(0.05)
        # A cancel scope around the consumer does the same.
        fake_server.configure(chunk_delay=0.2)
        with anyio.move_on_after(0.5):
            await collect(stream, Request(messages=says(" ".join(["word"] * 50))))
        with anyio.fail_after(5):
            while not any(e.outcome == "stream-disconnected" for e in fake_server.log()):
                await anyio.sleep(0.05)


def scripted(texts: Sequence[str], opened: list[Request]) -> Stream:
    """A streaming transport that answers each request with its text, one
    character a chunk."""

    @asynccontextmanager
    async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
        opened.append(request)
        text = texts[min(len(opened), len(texts)) - 1]

        async def chunks() -> AsyncIterator[Chunk]:
            for char in text:
                await anyio.lowlevel.checkpoint()
                yield Chunk(text=char)
            yield Chunk(finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=len(text)))

        yield chunks()

    return stream


async def test_stream_limits_hold_a_stream_as_the_plain_ones_hold_a_call() -> None:
    opened: list[Request] = []
    inner = scripted(["abc"], opened)
    open_now = peak = 0

    def counting(next_: Stream) -> Stream:
        @asynccontextmanager
        async def stream(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            try:
                async with next_(request) as chunks:
                    yield chunks
            finally:
                open_now -= 1

        return stream

    clock = FakeClock()
    limited = compose(stream_concurrency_limit(2), stream_rate_limit(60, clock=clock, sleep=clock.sleep), counting)(inner)

    async def one() -> None:
        async with limited(Request(messages=says("q"))) as chunks:
            async for _ in chunks:
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert peak <= 2 and len(opened) == 6
    assert clock.sleeps and all(s == pytest.approx(1.0) for s in clock.sleeps)  # one start a second at 60 rpm


async def test_a_transport_without_streaming_is_one_chunk() -> None:
    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(Output(text="whole", finish_reason="stop", token_ids=(5, 6), logprobs=(-0.1, -0.2)),), usage=Usage(prompt_tokens=2, completion_tokens=2))

    chunks: list[Chunk] = []
    async with one_chunk(generate)(Request(prompt_ids=(1,))) as incoming:
        async for chunk in incoming:
            chunks.append(chunk)
    assert len(chunks) == 1 and chunks[0].text == "whole" and chunks[0].token_ids == (5, 6)
    assert collect_chunks(chunks) == await generate(Request(prompt_ids=(1,)))


# --- agent episodes, streamed ---------------------------------------------------------


async def test_an_episode_streams_deltas_calls_results_and_its_end() -> None:
    opened: list[Request] = []
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
    agent = Agent(model_name_or_path="m", tools=[calculator], max_turns=3)
    events: list[Any] = []
    async with stream_agent(agent, scripted([call, "It is 42."], opened), {"question": "6*7?"}) as incoming:
        async for event in incoming:
            events.append(event)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "TextDelta" and kinds[-1] == "EpisodeDone"
    assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.turn == 1) == call
    assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.turn == 2) == "It is 42."
    (called,) = [e for e in events if isinstance(e, ToolCallEvent)]
    (result,) = [e for e in events if isinstance(e, ToolResultEvent)]
    assert called.call.function.name == "calculator" and result.message.text == "42" and not result.failed
    assert [e.turn for e in events if isinstance(e, TurnEnd)] == [1, 2]
    done = events[-1]
    assert isinstance(done, EpisodeDone)
    # The same episode as run_agent gives over the same transport, collected.
    plain = await run_agent(agent, _collecting(scripted([call, "It is 42."], [])), {"question": "6*7?"})
    assert done.trajectory.messages == plain.messages and done.trajectory.finish_reason == plain.finish_reason == "answer"


async def _nothing() -> AsyncIterator[Chunk]:
    return
    yield


def _collecting(stream: Stream) -> Any:
    async def generate(request: Request) -> Completion:
        return await collect(stream, request)

    return generate


async def test_leaving_a_streamed_episode_early_cancels_it() -> None:
    opened: list[Request] = []
    agent = Agent(model_name_or_path="m", max_turns=1)
    async with stream_agent(agent, scripted(["x" * 10_000], opened), {"question": "q"}) as incoming:
        async for event in incoming:
            assert isinstance(event, TextDelta)
            break
    assert len(opened) == 1  # nothing ran on after the consumer left


async def test_a_streamed_episode_records_failures_like_any_other() -> None:
    @asynccontextmanager
    async def broken(request: Request) -> AsyncIterator[AsyncIterator[Chunk]]:
        if request.messages:  # always: the server is gone before the first chunk
            raise TransientError("server went away")
        yield _nothing()

    agent = Agent(model_name_or_path="m")
    async with stream_agent(agent, broken, {"question": "q"}) as incoming:
        events = [event async for event in incoming]
    (done,) = events
    assert isinstance(done, EpisodeDone) and done.trajectory.error == "TransientError: server went away"
