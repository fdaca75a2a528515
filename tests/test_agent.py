"""The agent loop, driven by scripted transports (plain functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import (
    ContextLengthError,
    Agent,
    AsyncVerlConfig,
    AsyncVLLMConfig,
    ClientConfig,
    Completion,
    ConfigError,
    FunctionCall,
    Generate,
    Message,
    Output,
    Request,
    RetriesExhaustedError,
    ToolCall,
    TransientError,
    Trajectory,
    Usage,
    rollout,
    run_agent,
    tool,
)
from agentfly_min.agent import rollout_stream
from agentfly_min.rewards import math_reward_string_equal
from agentfly_min.templates.qwen25 import render
from agentfly_min.tools import calculator
from .support import token_model

pytestmark = pytest.mark.anyio


def call_text(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


CALC_2_PLUS_2 = call_text("calculator", '{"expression": "2+2"}')


def text_model(turns: Sequence[str]) -> tuple[Generate, list[Request]]:
    """A text-only transport that says ``turns`` in order."""
    seen: list[Request] = []

    async def generate(request: Request) -> Completion:
        seen.append(request)
        text = turns[min(len(seen), len(turns)) - 1]
        return Completion(outputs=(Output(text=text, finish_reason="stop"),), usage=Usage(prompt_tokens=10, completion_tokens=5))

    return generate, seen


MATH = Agent(model_name_or_path="tiny", tools=[calculator], reward_fn=math_reward_string_equal, max_turns=4)


# --- the record ---------------------------------------------------------------


def test_seed_example_builds() -> None:
    agent = Agent(
        model_name_or_path="Qwen/Qwen2.5-3B-Instruct",
        tools=[calculator],
        reward_fn=math_reward_string_equal,
        template="qwen2.5",
        backend="async_vllm",
        backend_config=AsyncVLLMConfig(pipeline_parallel_size=2, data_parallel_size=1, tensor_parallel_size=1, gpu_memory_utilization=0.8),
    )
    assert agent.tools == (calculator,)
    assert isinstance(agent.config, AsyncVLLMConfig)


def test_backend_gets_its_default_config() -> None:
    assert isinstance(Agent(model_name_or_path="m", backend="async_verl").config, AsyncVerlConfig)
    assert isinstance(Agent(model_name_or_path="m").config, ClientConfig)


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"backend": "client", "backend_config": AsyncVLLMConfig()}, "Agent.backend_config", "takes a ClientConfig, got an AsyncVLLMConfig"),
        ({"backend": "async_vllm", "backend_config": ClientConfig()}, "Agent.backend_config", "takes an AsyncVLLMConfig"),
        ({"backend": "vllm"}, "Agent.backend", "Invalid enum value 'vllm'"),
        ({"max_turns": 0}, "Agent.max_turns", ">= 1"),
        ({"tools": [calculator, calculator]}, "Agent.tools", "repeated: calculator"),
        ({"template": "no-such-family"}, "Agent.template", "no template named"),
        ({"model_name_or_path": ""}, "Agent.model_name_or_path", "length >= 1"),
        ({"tools": [print]}, "Agent.tools", "use @tool"),
    ],
)
def test_agent_is_checked_when_built(kwargs: dict[str, Any], field: str, says: str) -> None:
    kwargs.setdefault("model_name_or_path", "m")
    with pytest.raises(ConfigError) as caught:
        Agent(**kwargs)
    assert caught.value.field == field and says in str(caught.value)


# --- one episode ----------------------------------------------------------------


async def test_tool_turn_then_answer() -> None:
    generate, seen = text_model([f"Let me compute.\n{CALC_2_PLUS_2}", "It is \\boxed{4}."])
    trajectory = await run_agent(MATH, generate, {"id": "q1", "question": "What is 2+2?", "answer": "4"})
    assert trajectory.finish_reason == "answer" and trajectory.num_turns == 2
    assert trajectory.reward == 1.0 and trajectory.error is None and trajectory.tool_errors == 0
    roles = [m.role for m in trajectory.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assistant, result = trajectory.messages[1], trajectory.messages[2]
    assert assistant.content == "Let me compute."
    assert assistant.calls[0].function == FunctionCall(name="calculator", arguments='{"expression": "2+2"}')
    assert result.content == "4" and result.tool_call_id == assistant.calls[0].id
    # The second request carries the history and the tools, under one session id.
    assert seen[1].messages == trajectory.messages[:3]
    assert seen[0].tools == (calculator.schema,)
    assert seen[0].request_id == seen[1].request_id == trajectory.request_id
    assert trajectory.usage == Usage(prompt_tokens=20, completion_tokens=10)
    assert not trajectory.token_level and trajectory.response_ids == ()


async def test_server_parsed_tool_calls_are_used() -> None:
    call = ToolCall(id="srv_1", function=FunctionCall(name="calculator", arguments='{"expression": "6*7"}'))
    replies = [
        Completion(outputs=(Output(text="", finish_reason="tool_calls", tool_calls=(call,)),)),
        Completion(outputs=(Output(text="42", finish_reason="stop"),)),
    ]

    async def generate(request: Request) -> Completion:
        return replies[0] if len(request.messages) == 1 else replies[1]

    trajectory = await run_agent(MATH, generate, {"question": "6*7?", "answer": 42})
    assert trajectory.messages[2].tool_call_id == "srv_1" and trajectory.messages[2].content == "42"
    assert trajectory.reward == 1.0


@tool
def explode(x: int) -> int:
    """Always fails.

    Args:
        x: Ignored.
    """
    raise RuntimeError("kaboom")


@tool(timeout=0.05)
async def dawdle(x: int) -> int:
    """Takes too long.

    Args:
        x: Ignored.
    """
    await anyio.sleep(10)
    return x


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (call_text("nope", "{}"), "unknown tool 'nope'; available tools: calculator, dawdle, explode"),
        ('<tool_call>\n{"name": "calculator", "arguments": {"expression": 5}}\n</tool_call>', "invalid arguments for calculator: Expected `str`, got `int` - at `$.expression`"),
        (call_text("calculator", "{}"), "Object missing required field `expression`"),
        (call_text("calculator", '{"expression": "1/0"}'), "Error: division by zero"),
        ("<tool_call>{oops}</tool_call>", "malformed tool call: not valid JSON"),
        (call_text("explode", '{"x": 1}'), "explode raised RuntimeError: kaboom"),
        (call_text("dawdle", '{"x": 1}'), "dawdle did not finish within 0.05 s"),
    ],
)
async def test_bad_tool_calls_are_answered_and_the_episode_goes_on(call: str, says: str) -> None:
    agent = Agent(model_name_or_path="m", tools=[calculator, explode, dawdle], max_turns=3)
    generate, seen = text_model([call, "done"])
    trajectory = await run_agent(agent, generate, {"question": "go"})
    assert trajectory.finish_reason == "answer" and trajectory.num_turns == 2
    assert trajectory.tool_errors == 1 and trajectory.tool_calls == 1
    tool_message = trajectory.messages[2]
    assert tool_message.role == "tool" and tool_message.content is not None
    assert says in tool_message.content, tool_message.content
    assert seen[1].messages[-1] == tool_message  # the model was told


async def test_several_calls_in_one_turn_run_concurrently() -> None:
    started: list[float] = []

    @tool
    async def nap(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: How long.
        """
        started.append(anyio.current_time())
        await anyio.sleep(seconds)
        return "rested"

    calls = "\n".join(call_text("nap", '{"seconds": 0.2}') for _ in range(3))
    generate, _ = text_model([calls, "ok"])
    begin = anyio.current_time()
    trajectory = await run_agent(Agent(model_name_or_path="m", tools=[nap]), generate, {"question": "sleep"})
    assert [m.content for m in trajectory.messages if m.role == "tool"] == ["rested"] * 3
    assert max(started) - min(started) < 0.1  # all three started together
    assert anyio.current_time() - begin < 0.5


async def test_max_turns_ends_the_episode() -> None:
    generate, seen = text_model([CALC_2_PLUS_2])
    trajectory = await run_agent(Agent(model_name_or_path="m", tools=[calculator], max_turns=3), generate, {"question": "loop"})
    assert trajectory.finish_reason == "max_turns" and trajectory.num_turns == 3 and len(seen) == 3
    assert trajectory.messages[-1].role == "assistant"  # no tool run after the last turn


async def test_truncated_answer_finishes_with_length() -> None:
    async def generate(request: Request) -> Completion:
        return Completion(outputs=(Output(text="The answer is", finish_reason="length"),))

    assert (await run_agent(MATH, generate, {"question": "q", "answer": 1})).finish_reason == "length"


async def test_transport_failure_is_recorded_not_raised() -> None:
    async def generate(request: Request) -> Completion:
        raise RetriesExhaustedError("retry budget used", attempts=6, last_error=TransientError("HTTP 503", status=503))

    trajectory = await run_agent(MATH, generate, {"question": "q", "answer": 1})
    assert trajectory.finish_reason == "error" and trajectory.reward is None
    assert trajectory.error is not None and "RetriesExhaustedError" in trajectory.error and "HTTP 503" in trajectory.error


async def test_bad_task_is_recorded() -> None:
    generate, seen = text_model(["x"])
    trajectory = await run_agent(MATH, generate, {"answer": 1})
    assert trajectory.finish_reason == "error" and trajectory.error is not None and "bad task" in trajectory.error
    assert seen == []


async def test_reward_errors_are_recorded_and_async_rewards_awaited() -> None:
    def broken(trajectory: Trajectory, task: Any) -> float:
        raise ZeroDivisionError("bad reward")

    async def slow_reward(trajectory: Trajectory, task: Any) -> float:
        await anyio.sleep(0)
        return 0.25

    generate, _ = text_model(["fine"])
    bad = await run_agent(Agent(model_name_or_path="m", reward_fn=broken), generate, {"question": "q"})
    assert bad.reward is None and bad.reward_error == "ZeroDivisionError: bad reward"
    good = await run_agent(Agent(model_name_or_path="m", reward_fn=slow_reward), generate, {"question": "q"})
    assert good.reward == 0.25 and good.reward_error is None


async def test_a_slow_synchronous_reward_does_not_hold_the_other_chains() -> None:
    """A synchronous reward is user code that may compute for a while (a
    grader, a test run): it runs off the event loop, so one slow reward
    holds only its own chain. On the loop, 1 s in one chain of 8 held all."""
    import time

    def reward(trajectory: Trajectory, task: Any) -> float:
        if task["id"] == "slow":
            time.sleep(1.0)
        return 1.0

    generate, _ = text_model(["fine"])
    agent = Agent(model_name_or_path="m", reward_fn=reward)
    tasks = [{"id": "slow", "question": "q"}, *({"id": f"t{i}", "question": "q"} for i in range(7))]
    start = anyio.current_time()
    finished: dict[str, float] = {}
    async with rollout_stream(agent, generate, tasks, concurrency=8) as trajectories:
        async for trajectory in trajectories:
            finished[trajectory.task_id] = anyio.current_time() - start
            assert trajectory.reward == 1.0
    assert max(t for ident, t in finished.items() if ident != "slow") < 0.5, finished
    assert finished["slow"] >= 1.0


async def test_system_prompt_and_openai_messages() -> None:
    generate, seen = text_model(["ok"])
    agent = Agent(model_name_or_path="m", system_prompt="Be terse.")
    await run_agent(agent, generate, {"messages": [{"role": "user", "content": "hi"}]})
    assert [m.role for m in seen[0].messages] == ["system", "user"]


# --- many episodes --------------------------------------------------------------


async def test_rollout_groups_chains_in_order_and_reports_progress() -> None:
    generate, seen = text_model(["\\boxed{4}"])
    progress: list[tuple[int, int]] = []
    tasks = [{"id": f"t{i}", "question": "2+2", "answer": 4 if i % 2 == 0 else 5} for i in range(5)]
    trajectories = await rollout(MATH, generate, tasks, n=3, concurrency=4, progress=lambda d, t, _: progress.append((d, t)))
    assert [(t.group_id, t.chain_index) for t in trajectories] == [(f"t{i}", c) for i in range(5) for c in range(3)]
    assert [t.reward for t in trajectories] == [1.0 if i % 2 == 0 else 0.0 for i in range(5) for _ in range(3)]
    assert len({t.request_id for t in trajectories}) == 15  # one session per chain
    assert progress == [(d, 15) for d in range(1, 16)]
    assert len(seen) == 15


async def test_rollout_bounds_concurrency_and_keeps_failed_chains() -> None:
    in_flight = peak = calls = 0

    async def generate(request: Request) -> Completion:
        nonlocal in_flight, peak, calls
        calls += 1
        fail = calls % 4 == 0
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        if fail:
            raise TransientError("HTTP 500", status=500)
        return Completion(outputs=(Output(text="7", finish_reason="stop"),))

    trajectories = await rollout(MATH, generate, [{"question": "q", "answer": 7}] * 10, n=2, concurrency=3)
    assert peak == 3 and len(trajectories) == 20
    assert sum(t.error is not None for t in trajectories) == 5
    assert all(t.reward == 1.0 for t in trajectories if t.error is None)


async def test_cancelling_a_rollout_cancels_every_chain() -> None:
    started = cancelled = 0

    async def generate(request: Request) -> Completion:
        nonlocal started, cancelled
        started += 1
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            raise
        raise AssertionError("unreachable")

    with anyio.move_on_after(0.2) as scope:
        await rollout(MATH, generate, [{"question": "q"}] * 6, n=2, concurrency=5)
    assert scope.cancelled_caught
    assert started == 5 and cancelled == 5  # the five running chains were cancelled; no others started


# --- token-exact trajectories ------------------------------------------------


async def test_token_exact_multi_turn_trajectory(tokenizer: Any) -> None:
    turns = [CALC_2_PLUS_2, call_text("calculator", '{"expression": "4*10"}'), "The answer is \\boxed{40}."]
    generate, seen = token_model(tokenizer, turns)
    task = {"question": "What is (2+2)*10?", "answer": "40"}
    trajectory = await run_agent(MATH, generate, task, tokenizer=tokenizer)
    assert trajectory.token_level and trajectory.reward == 1.0 and trajectory.num_turns == 3
    ids, mask, logprobs = trajectory.response_ids, trajectory.response_mask, trajectory.response_logprobs
    assert logprobs is not None and len(ids) == len(mask) == len(logprobs)
    # The masked-in tokens are exactly the sampled ones, in order.
    sampled = [i for i, m in zip(ids, mask, strict=True) if m == 1]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = [t for text in turns for t in tokenizer.encode(text, add_special_tokens=False) + [im_end]]
    assert sampled == expected
    assert tokenizer.decode(sampled) == "".join(text + "<|im_end|>" for text in turns)
    # Logprobs sit on sampled tokens only.
    assert all((lp != 0.0) == (m == 1) for lp, m in zip(logprobs, mask, strict=True))
    # Each turn's prompt was exactly the previous context: no re-tokenising.
    for k in range(1, len(seen)):
        previous, current = seen[k - 1].prompt_ids, seen[k].prompt_ids
        assert previous is not None and current is not None
        assert current[: len(previous)] == previous
    # And prompt + response is the tokenisation of the whole rendered conversation.
    full = render(trajectory.messages, (calculator.schema,), add_generation_prompt=False)
    assert list(trajectory.prompt_ids) + list(ids) + tokenizer.encode("\n", add_special_tokens=False) == tokenizer.encode(
        full, add_special_tokens=False
    )
    assert trajectory.prompt_ids == seen[0].prompt_ids


async def test_an_unfinished_turn_gets_its_end_token_injected(tokenizer: Any) -> None:
    generate, _ = token_model(tokenizer, [CALC_2_PLUS_2, "4"], end=False)
    trajectory = await run_agent(MATH, generate, {"question": "2+2", "answer": 4}, tokenizer=tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids, mask = trajectory.response_ids, trajectory.response_mask
    first_end = ids.index(im_end)
    assert mask[first_end] == 0  # injected, not sampled
    assert all(m == 1 for m in mask[:first_end])


async def test_context_budget_ends_the_episode(tokenizer: Any) -> None:
    generate, seen = token_model(tokenizer, [CALC_2_PLUS_2])
    prompt_len = len(tokenizer.encode(render(MATH_MESSAGES, (calculator.schema,)), add_special_tokens=False))
    agent = Agent(model_name_or_path="m", tools=[calculator], max_turns=10, max_model_len=prompt_len + 60, max_new_tokens=50)
    trajectory = await run_agent(agent, generate, {"question": "2+2"}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "context" and len(seen) >= 2
    for request in seen:  # no request may ask for more than the room left
        assert request.prompt_ids is not None and request.max_new_tokens is not None
        assert request.max_new_tokens <= 50
        assert len(request.prompt_ids) + request.max_new_tokens <= prompt_len + 60


MATH_MESSAGES = (Message(role="user", content="2+2"),)


async def test_text_transport_with_a_tokenizer_is_not_token_level(tokenizer: Any) -> None:
    generate, seen = text_model(["4"])
    trajectory = await run_agent(MATH, generate, {"question": "2+2", "answer": 4}, tokenizer=tokenizer)
    assert seen[0].prompt_ids is not None  # offered to the transport
    assert not trajectory.token_level and trajectory.response_ids == () and trajectory.reward == 1.0


async def test_trajectories_round_trip_json_and_msgpack(tokenizer: Any) -> None:
    generate, _ = token_model(tokenizer, [CALC_2_PLUS_2, "\\boxed{4}"])
    trajectory = await run_agent(MATH, generate, {"question": "2+2", "answer": 4}, tokenizer=tokenizer)
    assert msgspec.json.decode(msgspec.json.encode(trajectory), type=Trajectory) == trajectory
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(trajectory), type=Trajectory) == trajectory


async def test_rollout_skips_chains_already_done() -> None:
    generate, seen = text_model(["4"])
    tasks = [{"id": "a", "question": "q"}, {"id": "b", "question": "q"}]
    trajectories = await rollout(MATH, generate, tasks, n=2, skip={("a", 0), ("b", 1)})
    assert [(t.task_id, t.chain_index) for t in trajectories] == [("a", 1), ("b", 0)]
    assert len(seen) == 2


# --- budgets, logprobs and versions on the trajectory ---------------------------


def clamping_model(tokenizer: Any, context: int) -> Generate:
    """A token transport that clamps max_new_tokens to the context left, as
    verl's server and our vLLM transport do, and samples filler to the limit."""
    filler = tokenizer.encode(" x", add_special_tokens=False)[0]

    async def generate(request: Request) -> Completion:
        assert request.prompt_ids is not None
        room = context - len(request.prompt_ids)
        if room < 1:
            raise ContextLengthError("no room")
        n = room if request.max_new_tokens is None else min(request.max_new_tokens, room)
        output = Output(text=" x" * n, finish_reason="length", token_ids=(filler,) * n)
        return Completion(outputs=(output,))

    return generate


async def test_an_engine_clamped_turn_ends_the_episode_with_context(tokenizer: Any) -> None:
    agent = Agent(model_name_or_path="tiny", max_new_tokens=500)
    prompt_len = len(tokenizer.encode(render([Message(role="user", content="q")], ()), add_special_tokens=False))
    trajectory = await run_agent(agent, clamping_model(tokenizer, prompt_len + 40), {"question": "q"}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "context" and trajectory.error is None
    assert len(trajectory.response_ids) == 40
    # No logprobs came back: absent, not zeros a trainer would read as probability 1.
    assert trajectory.response_logprobs is None and trajectory.response_versions is None
    # A per-turn limit that cuts a turn is "length", as before.
    short = Agent(model_name_or_path="tiny", max_new_tokens=10)
    cut = await run_agent(short, clamping_model(tokenizer, prompt_len + 40), {"question": "q"}, tokenizer=tokenizer)
    assert cut.finish_reason == "length"


async def test_a_context_error_ends_the_episode_with_context_and_keeps_the_prompt(tokenizer: Any) -> None:
    agent = Agent(model_name_or_path="tiny", reward_fn=math_reward_string_equal)
    trajectory = await run_agent(agent, clamping_model(tokenizer, 5), {"question": "q", "answer": "1"}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "context" and trajectory.error is None and trajectory.reward == 0.0
    assert trajectory.prompt_ids and not trajectory.token_level  # the prompt was tokenised; nothing sampled


async def test_the_first_prompt_is_capped_from_its_start(tokenizer: Any) -> None:
    generate, seen = token_model(tokenizer, ["4"])
    full = tokenizer.encode(render([Message(role="user", content="2+2 " * 50)], ()), add_special_tokens=False)
    agent = Agent(model_name_or_path="tiny", max_prompt_tokens=64)
    trajectory = await run_agent(agent, generate, {"question": "2+2 " * 50}, tokenizer=tokenizer)
    assert list(trajectory.prompt_ids) == full[-64:] and trajectory.prompt_tokens_dropped == len(full) - 64
    assert seen[0].prompt_ids == tuple(full[-64:])


async def test_logprobs_are_not_requested_when_the_agent_says_so(tokenizer: Any) -> None:
    generate, seen = token_model(tokenizer, ["4"])
    agent = Agent(model_name_or_path="tiny", logprobs=False)
    await run_agent(agent, generate, {"question": "2+2"}, tokenizer=tokenizer)
    assert seen[0].logprobs is False


async def test_versions_follow_tokens_and_tool_rounds_are_counted(tokenizer: Any) -> None:
    inner, _ = token_model(tokenizer, [CALC_2_PLUS_2, "\\boxed{4}"])
    step = iter([3, 4])

    async def versioned(request: Request) -> Completion:
        completion = await inner(request)
        (output,) = completion.outputs
        version = next(step)
        stamped = msgspec.structs.replace(output, weight_versions=(version,) * len(output.token_ids or ()))
        return msgspec.structs.replace(completion, outputs=(stamped,), weight_version=version)

    trajectory = await run_agent(MATH, versioned, {"question": "2+2", "answer": 4}, tokenizer=tokenizer)
    assert trajectory.num_turns == 2 and trajectory.tool_rounds == 1 and trajectory.weight_versions == (3, 4)
    versions = trajectory.response_versions
    assert versions is not None and len(versions) == len(trajectory.response_ids)
    assert [v for v, m in zip(versions, trajectory.response_mask, strict=True) if m == 0] == [-1] * trajectory.response_mask.count(0)
    sampled = [v for v, m in zip(versions, trajectory.response_mask, strict=True) if m == 1]
    assert sampled[0] == 3 and sampled[-1] == 4 and sorted(sampled) == sampled
