"""The in-process vLLM transport on a real vLLM CPU engine and the tiny model.

One engine for the whole module (it takes ~30 s to start on 2 cores); it is
shared by the asyncio and the trio runs of every test, and closed at the end,
when the test also checks that its processes are gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import anyio
import msgspec
import pytest

from agentfly_min import (
    Agent,
    AsyncVLLMConfig,
    Completion,
    ConfigError,
    ContextLengthError,
    Generate,
    PermanentError,
    Request,
    TransportClosedError,
    rollout,
    run_agent,
)
from agentfly_min.local._shm import shm_entries
from agentfly_min.stream import Chunk, collect_chunks
from agentfly_min.structured import decode_output, json_schema_format
from agentfly_min.tools import calculator
from agentfly_min.transports.vllm import VLLMEngine, open_vllm, vllm_generate, vllm_stream

from .support import says
from .vllm_support import ENGINE_CONFIG, assert_gone, cancel_long_requests_and_wait_for_aborts, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Iterator[VLLMEngine]:
    before = {p.pid for p in engine_children()}  # e.g. the session's fake OpenAI server
    shm_before = shm_entries()
    started = VLLMEngine.start(ENGINE_CONFIG, tiny_model_path)
    children = [p for p in engine_children() if p.pid not in before]
    assert children, "the engine runs in a child process"
    yield started
    started.close()
    assert_gone(children)
    assert shm_entries() - shm_before == set()  # the engine's queues are gone from /dev/shm
    closed = vllm_generate(started)

    async def call_after_close() -> None:
        with pytest.raises(TransportClosedError, match="after its engine was shut down"):
            await closed(Request(prompt_ids=(1, 2), max_new_tokens=2))

    for backend in ("asyncio", "trio"):
        anyio.run(call_after_close, backend=backend)


@pytest.fixture
def generate(engine: VLLMEngine) -> Generate:
    return vllm_generate(engine)


async def test_single_request_from_messages(generate: Generate, engine: VLLMEngine) -> None:
    completion = await generate(Request(messages=says("hello"), max_new_tokens=12, ignore_eos=True))
    (output,) = completion.outputs
    assert output.token_ids is not None and len(output.token_ids) == 12
    assert output.finish_reason == "length"
    assert output.text == engine.tokenizer.decode(list(output.token_ids))
    # The prompt was rendered with the model's chat template.
    assert completion.prompt_ids is not None
    expected = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert engine.tokenizer.decode(list(completion.prompt_ids)) == expected
    assert completion.usage.prompt_tokens == len(completion.prompt_ids) and completion.usage.completion_tokens == 12


async def test_prompt_ids_and_logprobs(generate: Generate) -> None:
    prompt = (1, 379, 201, 74, 75, 2, 201, 1, 570, 201)
    request = Request(prompt_ids=prompt, max_new_tokens=8, logprobs=True, ignore_eos=True, seed=3)
    completion = await generate(request)
    (output,) = completion.outputs
    assert completion.prompt_ids == prompt
    assert completion.prompt_ids is request.prompt_ids  # checked once, when the request was built
    assert output.logprobs is not None and output.token_ids is not None
    assert len(output.logprobs) == len(output.token_ids) == 8
    assert all(lp <= 0.0 for lp in output.logprobs)
    again = await generate(Request(prompt_ids=prompt, max_new_tokens=8, logprobs=True, ignore_eos=True, seed=3))
    assert again.outputs[0].token_ids == output.token_ids  # a seed makes it repeatable


async def test_n_samples_are_separate(generate: Generate) -> None:
    completion = await generate(Request(messages=says("many"), n=4, max_new_tokens=16, ignore_eos=True))
    assert len(completion.outputs) == 4
    assert len({o.token_ids for o in completion.outputs}) > 1
    assert completion.usage.completion_tokens == 64


async def test_64_concurrent_requests_with_n4_finish(generate: Generate) -> None:
    results: list[Completion] = []

    async def one(i: int) -> None:
        results.append(await generate(Request(prompt_ids=(1, 379, 201, 5 + i), n=4, max_new_tokens=16, ignore_eos=True)))

    with anyio.fail_after(180):  # the old n>1 hang on the async engine would stop here
        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
    assert len(results) == 64
    assert all(len(c.outputs) == 4 and all(len(o.token_ids or ()) == 16 for o in c.outputs) for c in results)


async def test_stop_strings(generate: Generate) -> None:
    base = Request(prompt_ids=(1, 379, 201, 74, 75), max_new_tokens=40, ignore_eos=True, seed=11)
    free = (await generate(base)).outputs[0].text
    stop = free[10:13]
    assert stop and stop not in free[:10]
    stopped = (await generate(msgspec.structs.replace(base, stop=(stop,)))).outputs[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


async def test_regex_constrains_the_output(generate: Generate) -> None:
    pattern = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[0-9]{1,2}\+[0-9]{1,2}"\}\}\n</tool_call>'
    completion = await generate(Request(messages=says("add"), max_new_tokens=64, regex=pattern, seed=1))
    import re

    assert re.fullmatch(pattern, completion.outputs[0].text), completion.outputs[0].text


async def test_cancelled_requests_are_aborted_in_the_engine(generate: Generate, engine: VLLMEngine) -> None:
    await cancel_long_requests_and_wait_for_aborts(generate, engine, 24, waves=3)
    completion = await generate(Request(prompt_ids=(1, 379), max_new_tokens=8, ignore_eos=True))
    assert len(completion.outputs[0].token_ids or ()) == 8


async def test_a_full_context_is_typed_and_max_tokens_is_clamped_to_what_is_left(generate: Generate) -> None:
    with pytest.raises(ContextLengthError, match="no room in the model's context of 1024"):
        await generate(Request(prompt_ids=tuple([201] * 1100), max_new_tokens=8))
    # As verl's server does: ask for 100 with 24 left, get 24 and "length".
    (output,) = (await generate(Request(prompt_ids=tuple([201] * 1000), max_new_tokens=100, ignore_eos=True))).outputs
    assert len(output.token_ids or ()) == 24 and output.finish_reason == "length"


async def test_what_vllm_refuses_is_a_typed_error(generate: Generate) -> None:
    # vLLM 0.31 raises VLLMValidationError (not a ValueError) for a token id outside the vocabulary.
    with pytest.raises(PermanentError, match="vLLM refused the request") as info:
        await generate(Request(prompt_ids=(1, 10**9), max_new_tokens=4))
    assert "\n" not in str(info.value)


async def test_an_episode_that_fills_the_engine_ends_with_context(generate: Generate, engine: VLLMEngine) -> None:
    def no_eos(inner: Generate) -> Generate:
        async def wrapped(request: Request) -> Completion:
            return await inner(msgspec.structs.replace(request, ignore_eos=True))

        return wrapped

    agent = Agent(model_name_or_path="tiny", max_turns=3, max_new_tokens=400)  # no budget of ours: the engine's context decides
    question = " ".join(["many words"] * 170)  # about 900 tokens with the tiny tokenizer
    trajectory = await run_agent(agent, no_eos(generate), {"question": question}, tokenizer=engine.tokenizer)
    assert trajectory.error is None and trajectory.finish_reason == "context"
    assert 0 < len(trajectory.response_ids) < 400
    assert len(trajectory.prompt_ids) + len(trajectory.response_ids) == engine.max_model_len


async def test_agent_rollout_is_token_exact_over_the_engine(generate: Generate, engine: VLLMEngine) -> None:
    """Several tasks x n chains through the agent loop: every masked-in token
    is one the engine sampled, in order; observations are masked out."""
    pattern = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\+[1-9]"\}\}\n</tool_call>'
    sampled: dict[str, list[tuple[int, ...]]] = {}

    def record(inner: Generate) -> Generate:
        async def wrapped(request: Request) -> Completion:
            # Force a tool call on the first turn (the model is random), then let it answer.
            first = request.prompt_ids is not None and len(request.messages) == 1
            forced = msgspec.structs.replace(request, regex=pattern) if first else request
            completion = await inner(forced)
            assert request.request_id is not None
            sampled.setdefault(request.request_id, []).append(completion.outputs[0].token_ids or ())
            return completion

        return wrapped

    agent = Agent(model_name_or_path=str(engine.tokenizer.name_or_path), tools=[calculator], max_turns=2, max_new_tokens=64, max_model_len=1024)
    tasks = [{"id": f"t{i}", "question": f"What is {i}+{i}?", "answer": 2 * i} for i in range(3)]
    trajectories = await rollout(agent, record(generate), tasks, n=2, tokenizer=engine.tokenizer)
    assert len(trajectories) == 6
    for t in trajectories:
        assert t.error is None, t.error
        assert t.token_level and t.num_turns == 2 and t.tool_calls == 1
        assert t.response_logprobs is not None and len(t.response_ids) == len(t.response_mask) == len(t.response_logprobs)
        masked_in = [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m == 1]
        assert masked_in == [i for turn in sampled[t.request_id] for i in turn]
        assert 0 in t.response_mask  # the tool observation is in, masked out
        assert t.messages[2].role == "tool" and t.messages[2].content is not None
        assert not t.messages[2].text.startswith("Error"), t.messages[2].content  # the forced call ran


def test_missing_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    before = engine_children()
    with pytest.raises(ConfigError, match="does not exist"):
        VLLMEngine.start(ENGINE_CONFIG, tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no config.json"):
        VLLMEngine.start(ENGINE_CONFIG, tmp_path)
    assert engine_children() == before


def test_unknown_engine_option_is_refused_with_a_suggestion(tiny_model_path: Path) -> None:
    config = AsyncVLLMConfig(engine_args={"max_num_batched_token": 2048})
    with pytest.raises(ConfigError, match="did you mean max_num_batched_tokens"):
        VLLMEngine.start(config, tiny_model_path)


def test_a_table_for_a_vllm_config_object_is_built_into_it(tiny_model_path: Path) -> None:
    from agentfly_min.transports.vllm import engine_args

    assert engine_args(ENGINE_CONFIG, tiny_model_path).structured_outputs_config.disable_any_whitespace is True
    wrong = AsyncVLLMConfig(engine_args={"structured_outputs_config": {"disable_any_whitespce": True}})
    with pytest.raises(ConfigError, match="engine_args.structured_outputs_config"):
        engine_args(wrong, tiny_model_path)


def test_stat_logging_is_off_unless_asked_for(engine: VLLMEngine, tiny_model_path: Path) -> None:
    from agentfly_min.transports.vllm import engine_args

    # The running engine (built with the defaults) has no stat loggers on its loop.
    assert engine.engine.log_stats is False
    assert engine_args(ENGINE_CONFIG, tiny_model_path).disable_log_stats is True
    on = msgspec.structs.replace(ENGINE_CONFIG, log_stats=True)
    assert engine_args(on, tiny_model_path).disable_log_stats is False


async def test_open_vllm_refuses_bad_input_without_leaving_anything(tmp_path: Path) -> None:
    before = engine_children()
    with pytest.raises(ConfigError):
        async with open_vllm(ENGINE_CONFIG, tmp_path / "missing"):
            raise AssertionError("unreachable")
    assert engine_children() == before




async def test_a_collected_stream_is_the_completion_the_plain_call_gives(generate: Generate, engine: VLLMEngine) -> None:
    stream = vllm_stream(engine)
    for request in (
        Request(messages=says("stream me"), n=2, max_new_tokens=24, logprobs=True, seed=7),
        Request(prompt_ids=(1, 44, 45), max_new_tokens=16, ignore_eos=True, seed=3, top_k=20, min_p=0.05, repetition_penalty=1.2),
    ):
        plain = await generate(request)
        chunks: list[Chunk] = []
        async with stream(request) as incoming:
            async for chunk in incoming:
                chunks.append(chunk)
        streamed = collect_chunks(chunks)
        assert len([c for c in chunks if c.token_ids]) > len(plain.outputs)  # it came in pieces
        assert streamed.prompt_ids == plain.prompt_ids and streamed.usage == plain.usage
        for mine, theirs in zip(streamed.outputs, plain.outputs, strict=True):
            assert (mine.text, mine.token_ids, mine.finish_reason) == (theirs.text, theirs.token_ids, theirs.finish_reason)
            if theirs.logprobs is not None:
                assert mine.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)


async def test_leaving_a_stream_early_aborts_the_request_in_the_engine(engine: VLLMEngine) -> None:
    stream = vllm_stream(engine)
    received = 0
    async with stream(Request(prompt_ids=(1, 80), max_new_tokens=900, ignore_eos=True)) as incoming:
        async for chunk in incoming:
            received += len(chunk.token_ids)
            if received >= 3:
                break
    with anyio.fail_after(10):
        while await engine.unfinished_requests():
            await anyio.sleep(0.05)
    # And from a cancel scope, mid-read.
    with anyio.move_on_after(0.5):
        async with stream(Request(prompt_ids=(1, 81), max_new_tokens=900, ignore_eos=True)) as incoming:
            async for chunk in incoming:
                pass
        raise AssertionError("900 tokens in half a second: the scope never cancelled")
    with anyio.fail_after(10):
        while await engine.unfinished_requests():
            await anyio.sleep(0.05)


class Pick(msgspec.Struct, frozen=True):
    choice: Literal["red", "green", "blue"]
    ok: bool


async def test_a_json_schema_response_format_constrains_the_engine(generate: Generate) -> None:
    form = json_schema_format(Pick)
    request = Request(messages=says("pick a colour"), max_new_tokens=64, response_format=form, seed=1, temperature=0.0)
    completion = await generate(request)
    assert completion.outputs[0].finish_reason == "stop", completion.outputs[0].text
    assert isinstance(decode_output(completion, Pick), Pick)
