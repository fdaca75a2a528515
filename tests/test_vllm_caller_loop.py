"""open_vllm as a user opens it: on asyncio the engine runs on the caller's
own loop (no thread, no hop per call); on trio on a thread of its own. One
engine per event loop, started after test_vllm_engine's has gone (this
module's name sorts first, and module fixtures end with their module)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import pytest

from agentfly_min import ConfigError, PermanentError, Request
from agentfly_min.stream import collect
from agentfly_min.transports.vllm import open_vllm_engine, vllm_generate, vllm_stream

from .vllm_support import ENGINE_CONFIG, assert_gone, cancel_long_requests_and_wait_for_aborts, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _bridge_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "agentfly-vllm"]


async def test_open_vllm_runs_where_the_caller_runs(anyio_backend: str, tiny_model_path: Path) -> None:
    before = {p.pid for p in engine_children()}
    async with open_vllm_engine(ENGINE_CONFIG, tiny_model_path) as engine:
        children = [p for p in engine_children() if p.pid not in before]
        on_asyncio = anyio_backend == "asyncio"
        assert engine.own_thread is not on_asyncio
        assert bool(_bridge_threads()) is not on_asyncio
        generate = vllm_generate(engine)
        completion = await generate(Request(prompt_ids=(1, 2, 3), max_new_tokens=6, ignore_eos=True, logprobs=True))
        output = completion.outputs[0]
        assert len(output.token_ids or ()) == len(output.logprobs or ()) == 6
        assert completion.prompt_ids == (1, 2, 3)
        streamed = await collect(vllm_stream(engine), Request(prompt_ids=(1, 2, 3), max_new_tokens=5, ignore_eos=True))
        assert len(streamed.outputs[0].token_ids or ()) == 5

        # Cancelling a call aborts it in the engine, on either kind of engine.
        await cancel_long_requests_and_wait_for_aborts(generate, engine, 8)

        if on_asyncio:  # another loop cannot use an engine bound to this one: a typed error, not a hang
            async def call() -> None:
                await generate(Request(prompt_ids=(1, 2), max_new_tokens=2))

            def elsewhere() -> None:
                asyncio.run(call())

            with pytest.raises(PermanentError, match="own_thread=True"):
                await anyio.to_thread.run_sync(elsewhere)
            with pytest.raises(RuntimeError, match="own thread"):
                engine.run_blocking(asyncio.sleep(0))
    assert engine.closed and not _bridge_threads()
    assert_gone(children)


async def test_an_engine_of_its_own_thread_on_asyncio_serves_other_loops(anyio_backend: str, tiny_model_path: Path) -> None:
    if anyio_backend == "trio":
        pytest.skip("on trio every engine has its own thread: the test above covers it")
    async with open_vllm_engine(ENGINE_CONFIG, tiny_model_path, own_thread=True) as engine:
        assert engine.own_thread and _bridge_threads()
        generate = vllm_generate(engine)

        def on_trio() -> int:
            async def call() -> int:
                completion = await generate(Request(prompt_ids=(1, 2), max_new_tokens=3, ignore_eos=True))
                return len(completion.outputs[0].token_ids or ())

            return anyio.run(call, backend="trio")

        assert await anyio.to_thread.run_sync(on_trio) == 3


async def test_trio_cannot_have_an_engine_on_its_loop(anyio_backend: str, tiny_model_path: Path) -> None:
    if anyio_backend == "asyncio":
        pytest.skip("asyncio callers may: the first test covers it")
    before = engine_children()
    with pytest.raises(ConfigError, match="trio needs own_thread"):
        async with open_vllm_engine(ENGINE_CONFIG, tiny_model_path, own_thread=False):
            pass  # pragma: no cover - refused before anything starts
    assert engine_children() == before
