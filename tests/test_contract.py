"""The promises, under hostile input and ordinary mistakes: every chain ends
in a trajectory, only cancellation propagates, budgets hold, memory stays
bounded. Each on asyncio and trio."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import (
    Agent,
    ClientConfig,
    Completion,
    ConfigError,
    ContextLengthError,
    FunctionCall,
    Generate,
    MalformedResponseError,
    Message,
    Middleware,
    Output,
    Request,
    ToolCall,
    Trajectory,
    Usage,
    compose,
    open_backend,
    rollout,
)
from agentfly_min.agent import rollout_stream
from agentfly_min.rewards import math_reward_string_equal
from agentfly_min.testing import FakeOpenAIServer
from agentfly_min.tools import calculator

pytestmark = pytest.mark.anyio

AGENT = Agent(model_name_or_path="m", tools=[calculator], reward_fn=math_reward_string_equal, max_turns=3)


def answering(text: str = "\\boxed{4}") -> Generate:
    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(Output(text=text, finish_reason="stop"),))

    return generate


def failing_for(bad: dict[str, BaseException], inner: Generate) -> Generate:
    """A user's transport that raises ``bad[question]`` for those questions."""

    async def generate(request: Request) -> Completion:
        question = request.messages[-1].text
        if question in bad:
            await anyio.lowlevel.checkpoint()
            raise bad[question]
        return await inner(request)

    return generate


HELLO = (Message(role="user", content="hello"),)
TASKS = [{"id": f"t{i}", "question": f"q{i}", "answer": "4"} for i in range(6)]


async def test_one_raising_chain_does_not_take_the_rollout_down() -> None:
    bad: dict[str, BaseException] = {"q1": RuntimeError("user transport broke"), "q4": KeyError("choices")}
    trajectories = await rollout(AGENT, failing_for(bad, answering()), TASKS, n=2, concurrency=3)
    assert [(t.task_id, t.chain_index) for t in trajectories] == [(f"t{i}", c) for i in range(6) for c in range(2)]
    for t in trajectories:
        if t.task_id == "t1":
            assert t.finish_reason == "error" and t.error == "RuntimeError: user transport broke"
        elif t.task_id == "t4":
            assert t.finish_reason == "error" and t.error == "KeyError: 'choices'"
        else:
            assert t.error is None and t.reward == 1.0  # the finished chains are all there


async def test_a_raising_middleware_is_recorded_like_a_transport_failure() -> None:
    def broken(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            if request.messages[-1].text == "q2":
                raise ZeroDivisionError("in my middleware")
            return await inner(request)

        return generate

    stack: Middleware = compose(broken)
    trajectories = await rollout(AGENT, stack(answering()), TASKS)
    errors = {t.task_id: t.error for t in trajectories}
    assert errors.pop("t2") == "ZeroDivisionError: in my middleware"
    assert set(errors.values()) == {None}


async def test_a_raising_progress_callback_is_logged_and_the_rollout_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def progress(done: int, total: int, trajectory: Any) -> None:
        calls.append(done)
        if done % 2:
            raise ValueError("my progress bar broke")

    with caplog.at_level(logging.WARNING, logger="agentfly_min.agent"):
        trajectories = await rollout(AGENT, answering(), TASKS, progress=progress)
    assert len(trajectories) == 6 and calls == [1, 2, 3, 4, 5, 6]
    assert "progress callback raised" in caplog.text and "my progress bar broke" in caplog.text


async def test_cancellation_still_propagates() -> None:
    async def hangs(request: Request) -> Completion:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.move_on_after(0.2) as scope:
        await rollout(AGENT, hangs, TASKS)
    assert scope.cancelled_caught  # not swallowed into error trajectories


async def test_a_transport_returning_no_outputs_is_an_error_trajectory() -> None:
    async def empty(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return msgspec.convert({"outputs": []}, Completion)  # as a decoder would build it, past the checks

    (t,) = await rollout(AGENT, empty, TASKS[:1])
    assert t.finish_reason == "error" and t.error is not None and "outputs" in t.error


async def test_hostile_model_output_is_answered_not_raised() -> None:
    deep = '<tool_call>{"name": "calculator", "arguments": ' + "[" * 5000 + "]" * 5000 + "}</tool_call>"
    turns = iter([deep, "<tool_call>" * 20_000, "\\boxed{4}"])

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(Output(text=next(turns), finish_reason="stop"),))

    (t,) = await rollout(AGENT, generate, TASKS[:1])
    assert t.error is None and t.finish_reason == "answer" and t.reward == 1.0
    tool_messages = [m.text for m in t.messages if m.role == "tool"]
    assert "nested deeper than" in tool_messages[0] and "never closed" in tool_messages[1]
    assert t.tool_error_kinds == {"malformed_call": 2}


async def test_repeated_or_missing_tool_call_ids_are_made_distinct() -> None:
    calls = (
        ToolCall(id="same", function=FunctionCall(name="calculator", arguments='{"expression": "1+1"}')),
        ToolCall(id="same", function=FunctionCall(name="calculator", arguments='{"expression": "2+2"}')),
        ToolCall(id="", function=FunctionCall(name="calculator", arguments='{"expression": "3+3"}')),
    )
    turns = iter([Output(text="", finish_reason="tool_calls", tool_calls=calls), Output(text="done", finish_reason="stop")])

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(next(turns),))

    (t,) = await rollout(AGENT, generate, TASKS[:1])
    assistant, *results = t.messages[1:5]
    ids = [call.id for call in assistant.calls]
    assert len(set(ids)) == 3 and all(ids)
    assert [m.tool_call_id for m in results] == ids and [m.text for m in results] == ["2", "4", "6"]


async def test_nan_and_infinite_rewards_are_reward_errors() -> None:
    for value in (float("nan"), float("inf")):

        def reward(trajectory: Trajectory, task: Any, value: float = value) -> float:
            return value

        agent = Agent(model_name_or_path="m", reward_fn=reward)
        (t,) = await rollout(agent, answering(), TASKS[:1])
        assert t.reward is None and t.reward_error is not None and "not a finite number" in t.reward_error
        assert msgspec.json.decode(msgspec.json.encode(t), type=type(t)) == t  # stays the same through JSON


async def test_repeated_task_ids_are_refused_and_implicit_ids_do_not_collide() -> None:
    with pytest.raises(ConfigError, match="repeated: 'a'"):
        await rollout(AGENT, answering(), [{"id": "a", "question": "x"}, {"id": "a", "question": "y"}])
    # An explicit "1" and the implicit id of the task at position 1 are different groups.
    trajectories = await rollout(AGENT, answering(), [{"id": "1", "question": "x"}, {"question": "y"}])
    assert [t.group_id for t in trajectories] == ["1", "#1"]


async def test_the_stream_runs_lazily_within_its_concurrency_and_reports_repeats() -> None:
    alive = peak = 0
    produced = 0

    async def generate(request: Request) -> Completion:
        nonlocal alive, peak
        alive += 1
        peak = max(peak, alive)
        await anyio.sleep(0.001)
        alive -= 1
        return Completion(outputs=(Output(text="\\boxed{4}", finish_reason="stop"),))

    def tasks() -> Any:
        nonlocal produced
        for i in range(200):
            produced += 1
            yield {"id": "dup" if i == 150 else f"t{i}", "question": "q", "answer": "4"}
        yield {"id": "t3", "question": "again"}

    seen: list[Trajectory] = []
    async with rollout_stream(AGENT, generate, tasks(), n=2, concurrency=8) as trajectories:
        async for t in trajectories:
            if not seen:
                assert produced < 50  # tasks are read as slots free, not all up front
            seen.append(t)
    assert peak <= 8
    assert len(seen) == 402
    repeats = [t for t in seen if t.error is not None]
    assert {(t.task_id, t.chain_index) for t in repeats} == {("t3", 0), ("t3", 1)}
    assert all("repeats the task at position 3" in (t.error or "") for t in repeats)


async def test_leaving_the_stream_early_cancels_the_chains_left() -> None:
    started = 0

    async def slow(request: Request) -> Completion:
        nonlocal started
        started += 1
        await anyio.sleep(0.05)
        return Completion(outputs=(Output(text="x", finish_reason="stop"),))

    with anyio.fail_after(5):
        async with rollout_stream(AGENT, slow, ({"id": f"t{i}", "question": "q"} for i in range(1000)), concurrency=4) as trajectories:
            async for _ in trajectories:
                break
    assert started < 20


# --- budgets --------------------------------------------------------------------


async def test_a_long_tool_result_cannot_push_a_response_past_its_budget(tokenizer: Any) -> None:
    from agentfly_min import tool

    @tool
    def flood() -> str:
        """Returns a lot of text."""
        return "word " * 5000

    call = '<tool_call>\n{"name": "flood", "arguments": {}}\n</tool_call>'
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        ids = tuple(tokenizer.encode(call, add_special_tokens=False)) + (im_end,)
        return Completion(outputs=(Output(text=call, finish_reason="stop", token_ids=ids, logprobs=(-0.1,) * len(ids)),))

    agent = Agent(model_name_or_path="m", tools=[flood], max_turns=4, max_response_tokens=100)
    (t,) = await rollout(agent, generate, TASKS[:1], tokenizer=tokenizer)
    assert t.finish_reason == "context" and t.error is None
    assert len(t.response_ids) == 100 == len(t.response_mask)
    assert t.response_logprobs is not None and len(t.response_logprobs) == 100
    assert t.response_mask[-1] == 0  # the cut is in the observation, not in sampled tokens


# --- the client transport, over real HTTP ------------------------------------------


async def test_empty_choices_and_full_contexts_are_typed_at_the_client(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=("empty", "context"))
    config = ClientConfig(base_url=fake_server.base_url, api_key="k", max_retries=0, timeout=10)
    async with open_backend(config) as generate:
        with pytest.raises(MalformedResponseError, match="no choices"):
            await generate(Request(messages=HELLO))
        with pytest.raises(ContextLengthError, match="maximum context length"):
            await generate(Request(messages=HELLO))
    # Through the agent loop: the first is an error trajectory, the second ends with "context".
    fake_server.configure(script=("empty", "context"))
    async with open_backend(config) as generate:
        trajectories = await rollout(AGENT, generate, TASKS[:2], concurrency=1)
    assert [t.finish_reason for t in trajectories] == ["error", "context"]
    assert trajectories[0].error is not None and "MalformedResponseError" in trajectories[0].error


async def test_without_a_model_the_client_takes_the_only_one_or_names_the_choices(fake_server: FakeOpenAIServer) -> None:
    config = ClientConfig(base_url=fake_server.base_url, api_key="k", timeout=10)
    fake_server.configure(models=("a", "b"))
    with pytest.raises(ConfigError, match="serves 2 models; choose one of: a, b"):
        async with open_backend(config):
            pass
    fake_server.configure(models=("only",))
    async with open_backend(config) as generate:
        assert (await generate(Request(messages=HELLO))).model == "only"


def test_unknown_finish_reasons_are_read_by_their_shape(caplog: pytest.LogCaptureFixture) -> None:
    from agentfly_min.transports._finish import finish_reason

    assert finish_reason("max_tokens") == "length" and finish_reason("end_turn") == "stop"
    with caplog.at_level(logging.WARNING, logger="agentfly_min.transports"):
        assert finish_reason("token_budget_exhausted") == "length"
        assert finish_reason("brand_new_reason") == "stop"
    assert "brand_new_reason" in caplog.text


def test_records_built_in_python_are_checked_like_decoded_ones() -> None:
    with pytest.raises(ConfigError, match="Output.finish_reason"):
        Output(text="x", finish_reason="bogus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Completion.attempts"):
        Completion(outputs=(Output(text="x", finish_reason="stop"),), attempts=0)
    with pytest.raises(ConfigError, match="Usage.prompt_tokens"):
        Usage(prompt_tokens=-1)
    output = Output(text="x", finish_reason="stop", token_ids=[1, 2], logprobs=[-0.1, -0.2])  # type: ignore[arg-type]
    assert output.token_ids == (1, 2) and output.logprobs == (-0.1, -0.2)
    assert hash(output)  # tuples, so the frozen record hashes


def test_messages_as_sdks_and_clients_send_them() -> None:
    sdk = json.dumps({"role": "assistant", "content": "hi", "tool_calls": None, "function_call": None})
    assert msgspec.json.decode(sdk, type=Message).calls == ()
    assert msgspec.json.decode('{"role": "developer", "content": "Be brief."}', type=Message).role == "developer"
    parts = msgspec.json.decode('{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}', type=Message)
    assert parts.text == "ab"


async def test_without_the_repeat_check_repeated_ids_run() -> None:
    repeated = [{"id": "same", "question": "q", "answer": "4"}] * 3
    async with rollout_stream(AGENT, answering(), repeated, check_repeats=False) as trajectories:
        ran = [t async for t in trajectories]
    assert len(ran) == 3 and all(t.error is None for t in ran)
