"""The gateway driven by real clients (the openai SDK, the OpenAI Agents SDK,
LangChain), over a scripted token-level transport: for the same sampled
tokens, the trajectories equal what our own agent loop builds. The engine
tests are in test_gateway_engine.py."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest

from agentfly_min import Agent, Completion, Output, Request, Trajectory, Usage, run_agent, tool
from agentfly_min.gateway import GatewayConfig, command_agent, open_gateway, rollout_external, run_external
from agentfly_min.templates import get_template
from agentfly_min.templates.chat import template_messages  # arguments as objects, as templates take them

from .support import token_model

pytestmark = pytest.mark.anyio

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
TURNS = [CALL, "It is 3."]
QUESTION = "What is 1+2?"


@tool
def add(a: int, b: int) -> str:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return str(a + b)


SCHEMA = msgspec.to_builtins(add.schema)


def _client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)


async def sdk_agent(base_url: str, *, stream: bool) -> None:
    """An agent written on the openai SDK, as a user writes one."""
    async with _client(base_url) as client:
        messages: list[Any] = [{"role": "user", "content": QUESTION}]
        for _ in range(4):
            if stream:
                content, calls = "", dict[int, dict[str, Any]]()
                async for chunk in await client.chat.completions.create(model="policy", messages=messages, tools=[SCHEMA], stream=True):
                    delta = chunk.choices[0].delta if chunk.choices else None
                    if delta is None:
                        continue
                    content += delta.content or ""
                    for part in delta.tool_calls or ():
                        entry = calls.setdefault(part.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                        entry["id"] = part.id or entry["id"]
                        if part.function is not None:
                            entry["function"]["name"] += part.function.name or ""
                            entry["function"]["arguments"] += part.function.arguments or ""
                message: dict[str, Any] = {"role": "assistant", "content": content or None}
                if calls:
                    message["tool_calls"] = [calls[k] for k in sorted(calls)]
            else:
                answer = await client.chat.completions.create(model="policy", messages=messages, tools=[SCHEMA])
                message = answer.choices[0].message.model_dump(exclude_none=True)
            messages.append(message)
            if not message.get("tool_calls"):
                return
            for call in message["tool_calls"]:
                result = await add.call(call["function"]["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})


def agents_sdk_agent(base_url: str) -> None:
    """An OpenAI Agents SDK agent with a function tool, on its
    chat-completions model (the SDK runs on asyncio: its own loop here)."""
    from agents import Agent as SdkAgent
    from agents import OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)

    @function_tool
    def add_numbers(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    async def main() -> None:
        async with _client(base_url) as client:
            model = OpenAIChatCompletionsModel(model="policy", openai_client=client)
            agent = SdkAgent(name="adder", instructions="Use the tool.", tools=[add_numbers], model=model)
            result = await Runner.run(agent, QUESTION)
            assert result.final_output == "It is 3."

    asyncio.run(main())


def langchain_agent(base_url: str) -> None:
    """A LangChain agent (``create_agent``, LangGraph underneath) on ChatOpenAI."""
    from langchain.agents import create_agent
    from langchain_openai import ChatOpenAI

    def add_numbers(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    async def main() -> None:
        model = ChatOpenAI(model="policy", base_url=base_url, api_key="unused", max_retries=0)  # type: ignore[arg-type]
        agent = create_agent(model, tools=[add_numbers])
        state = await agent.ainvoke({"messages": [{"role": "user", "content": QUESTION}]})
        assert state["messages"][-1].content == "It is 3."

    asyncio.run(main())


def _turns_for(name: str) -> list[str]:
    return [CALL.replace('"add"', '"add_numbers"'), TURNS[1]] if name in ("agents", "langchain") else TURNS


Client = Callable[[str], Awaitable[None]]
CLIENTS: dict[str, Client] = {
    "sdk": lambda url: sdk_agent(url, stream=False),
    "sdk-stream": lambda url: sdk_agent(url, stream=True),
    "agents": lambda url: anyio.to_thread.run_sync(agents_sdk_agent, url),
    "langchain": lambda url: anyio.to_thread.run_sync(langchain_agent, url),
}


async def _through_gateway(tokenizer: Any, name: str) -> tuple[Trajectory, list[Request]]:
    generate, seen = token_model(tokenizer, _turns_for(name))
    async with open_gateway(generate, tokenizer) as gateway:
        session = gateway.open_session({"id": "t1"})
        await CLIENTS[name](session.base_url)
        trajectories = await gateway.end_session(session.id)
    assert len(trajectories) == 1, [t.finish_reason for t in trajectories]
    return trajectories[0], seen


@pytest.mark.parametrize("name", list(CLIENTS))
async def test_a_real_client_gives_the_trajectory_our_loop_builds(tokenizer: Any, name: str) -> None:
    ours, seen = await _through_gateway(tokenizer, name)
    assert ours.error is None and ours.token_level and ours.num_turns == 2 and ours.finish_reason == "answer"
    # Our own loop, on the same first messages and tools the client sent, sampling the same tokens.
    first = seen[0]
    schema = first.tools[0]
    loop_tool = msgspec.structs.replace(add, name=schema.function.name, schema=schema)
    agent = Agent(model_name_or_path="tiny", tools=[loop_tool], template="qwen2.5", max_turns=4)
    task = {"id": "t1", "messages": msgspec.to_builtins(first.messages)}
    generate, _ = token_model(tokenizer, _turns_for(name))
    theirs = await run_agent(agent, generate, task, tokenizer=tokenizer)
    assert theirs.error is None and theirs.num_turns == 2
    assert ours.prompt_ids == theirs.prompt_ids
    assert ours.response_ids == theirs.response_ids
    assert ours.response_mask == theirs.response_mask
    assert ours.response_logprobs == theirs.response_logprobs
    assert ours.response_sources == theirs.response_sources
    assert [(m.role, m.text) for m in ours.messages] == [(m.role, m.text) for m in theirs.messages]
    assert ours.tool_calls == 1 and ours.tool_rounds == 1
    # Every masked-in id was sampled by the transport, in order.
    sampled = [i for i, m in zip(ours.response_ids, ours.response_mask, strict=True) if m]
    assert len(sampled) == sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in _turns_for(name))


async def test_the_record_equals_the_upstream_template_render(tokenizer: Any) -> None:
    """The oracle: the model's own chat template (rendered by transformers)
    of the final messages holds exactly the recorded ids."""
    ours, seen = await _through_gateway(tokenizer, "sdk")
    text = tokenizer.apply_chat_template(template_messages(ours.messages), tools=[SCHEMA], tokenize=False)
    full = tokenizer.encode(text, add_special_tokens=False)
    ids = list(ours.prompt_ids + ours.response_ids)
    assert full[: len(ids)] == ids


async def _post(url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post(url, content=content, headers={"Content-Type": "application/json", **(headers or {})})


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _hello() -> dict[str, Any]:
    return {"model": "policy", "messages": [{"role": "user", "content": QUESTION}], "tools": [SCHEMA]}


async def test_an_agent_that_rewrites_its_history_gets_several_token_exact_segments(tokenizer: Any) -> None:
    """Turn 1 calls the tool; turn 2 (after the result) calls it again; then
    the agent drops the first exchange (a summariser would) and asks again:
    a new segment from a fresh render, the old one kept whole."""
    generate, seen = token_model(tokenizer, [CALL, CALL, "It is 3."])
    async with open_gateway(generate, tokenizer) as gateway:
        session = gateway.open_session({"id": "t2"})
        async with _client(session.base_url) as client:
            messages: list[Any] = [{"role": "user", "content": QUESTION}]
            for _ in range(2):
                answer = await client.chat.completions.create(model="p", messages=messages, tools=[SCHEMA])
                message = answer.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                assert message.tool_calls
                messages.append({"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "3"})
            rewritten = [messages[0], {"role": "user", "content": "(summary: the tool said 3)"}, *messages[3:]]
            final = await client.chat.completions.create(model="p", messages=rewritten, tools=[SCHEMA])
            assert final.choices[0].message.content == "It is 3."
        trajectories = await gateway.end_session(session.id)
    assert [t.segment for t in trajectories] == [0, 1]
    assert [t.first_turn for t in trajectories] == [0, 2]
    assert [t.num_turns for t in trajectories] == [2, 1]
    assert [t.finish_reason for t in trajectories] == ["rewritten", "answer"]
    assert [m.role for m in trajectories[1].messages] == ["user", "user", "assistant", "tool", "assistant"]
    template = get_template("qwen2.5")
    for t in trajectories:
        assert t.token_level and t.error is None
        text = tokenizer.apply_chat_template(template_messages(t.messages), tools=[SCHEMA], tokenize=False)
        full = tokenizer.encode(text, add_special_tokens=False)
        assert full[: len(t.prompt_ids) + len(t.response_ids)] == list(t.prompt_ids + t.response_ids)
        # The segment's prompt is a fresh render of its first request, nothing of the old ids.
        first_request = [m for m in t.messages[: len(t.messages) - 2 * t.num_turns + 1]]
        assert list(t.prompt_ids) == template.prompt_ids(tokenizer, first_request, [add.schema])
    # The third request went out as a fresh prompt, not the old ids plus something.
    assert seen[2].prompt_ids == trajectories[1].prompt_ids


async def test_hostile_clients_get_openai_errors_and_nothing_is_recorded(tokenizer: Any) -> None:
    generate, seen = token_model(tokenizer, TURNS)
    async with open_gateway(generate, tokenizer, GatewayConfig(max_body_bytes=1 << 20)) as gateway:
        session = gateway.open_session({"id": "t3"})
        url = f"{session.base_url}/chat/completions"
        assert _error(await _post(url, b"{not json"), 400)["code"] == "invalid_json"
        assert _error(await _post(url, {"model": "p", "messages": [{"role": "wizard"}]}), 400)["code"] == "invalid_request"
        assert _error(await _post(url, {"model": "p", "messages": []}), 400)["param"] == "messages"
        assert _error(await _post(url, {**_hello(), "n": 2}), 400)["param"] == "n"
        unknown = gateway.session_url("nobody") + "/chat/completions"
        assert _error(await _post(unknown, _hello()), 404)["code"] == "session_not_found"
        assert _error(await _post(f"{gateway.url}/v1/chat/completions", _hello()), 400)["code"] == "session_missing"
        orphan = {**_hello(), "messages": [*_hello()["messages"], {"role": "tool", "tool_call_id": "call_never", "content": "3"}]}
        assert _error(await _post(url, orphan), 400)["param"] == "messages[1]"
        huge = {**_hello(), "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]}
        assert _error(await _post(url, huge), 413)["code"] == "request_too_large"
        assert _error(await _post(f"{gateway.url}/v1/nothing", _hello()), 404)["type"] == "not_found_error"
        assert not seen  # nothing reached the policy
        # The session is intact: a good request works, by path and by header.
        ok = await _post(f"{gateway.url}/v1/chat/completions", _hello(), {"X-Session-Id": session.id})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "tool_calls"
        trajectories = await gateway.end_session(session.id)
        assert len(trajectories) == 1 and trajectories[0].num_turns == 1
        assert _error(await _post(url, _hello()), 410)["code"] == "session_ended"
        with pytest.raises(openai.NotFoundError, match="session_not_found|no session"):
            async with _client(gateway.session_url("nobody")) as client:
                await client.chat.completions.create(model="p", messages=[{"role": "user", "content": "hi"}])


def _held(tokenizer: Any, events: dict[str, anyio.Event]) -> Callable[[Request], Awaitable[Completion]]:
    """A transport whose turn waits for ``release`` (and notes a cancellation)."""
    ids = tuple(tokenizer.encode("It is 3.", add_special_tokens=False))

    async def generate(request: Request) -> Completion:
        events["started"].set()
        try:
            await events["release"].wait()
        except anyio.get_cancelled_exc_class():
            events["cancelled"].set()
            raise
        return Completion(outputs=(Output(text="It is 3.", finish_reason="stop", token_ids=ids, logprobs=(0.0,) * len(ids)),), usage=Usage())

    return generate


async def test_concurrent_requests_in_one_session_are_refused_while_one_runs(tokenizer: Any) -> None:
    events = {k: anyio.Event() for k in ("started", "release", "cancelled")}
    async with open_gateway(_held(tokenizer, events), tokenizer) as gateway:
        session = gateway.open_session()
        url = f"{session.base_url}/chat/completions"
        results: list[httpx.Response] = []

        async def first() -> None:
            results.append(await _post(url, _hello()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await events["started"].wait()
            assert _error(await _post(url, _hello()), 409)["code"] == "session_busy"
            events["release"].set()
        assert results[0].status_code == 200
        trajectories = await gateway.end_session(session.id)
        assert len(trajectories) == 1 and trajectories[0].num_turns == 1


async def test_a_client_that_leaves_mid_stream_cancels_the_turn_and_records_nothing(tokenizer: Any) -> None:
    events = {k: anyio.Event() for k in ("started", "release", "cancelled")}
    async with open_gateway(_held(tokenizer, events), tokenizer) as gateway:
        session = gateway.open_session()
        async with httpx.AsyncClient(timeout=30) as client:
            body = json.dumps({**_hello(), "stream": True}).encode()
            async with client.stream("POST", f"{session.base_url}/chat/completions", content=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    assert line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"]["role"] == "assistant"
                    break  # the stream began; the client leaves
        with anyio.fail_after(10):
            await events["cancelled"].wait()
        # Not busy any more: the next request is served.
        events["release"].set()
        again = await _post(f"{session.base_url}/chat/completions", _hello())
        assert again.status_code == 200, again.text
        trajectories = await gateway.end_session(session.id)
        assert len(trajectories) == 1 and trajectories[0].num_turns == 1  # the abandoned turn is not in it


async def test_a_failing_transport_is_an_openai_error_and_the_episode_says_so(tokenizer: Any) -> None:
    async def broken(request: Request) -> Completion:
        raise RuntimeError("the engine is on fire")

    async with open_gateway(broken, tokenizer) as gateway:
        session = gateway.open_session({"id": "t4"})
        with pytest.raises(openai.InternalServerError, match="on fire"):
            async with _client(session.base_url) as client:
                await client.chat.completions.create(model="p", messages=[{"role": "user", "content": "hi"}])
        [trajectory] = await gateway.end_session(session.id)
    assert trajectory.finish_reason == "error" and trajectory.error is not None and "on fire" in trajectory.error


async def test_external_agents_are_run_rewarded_and_their_failures_recorded(tokenizer: Any) -> None:
    async def reward(trajectory: Trajectory, task: Any) -> float:
        return float(trajectory.final_text() == f"It is {task['answer']}.")

    generate, _ = token_model(tokenizer, ["It is 3."])

    async def good(base_url: str, task: Any) -> None:
        async with _client(base_url) as client:
            await client.chat.completions.create(model="p", messages=[{"role": "user", "content": task["question"]}])

    async def bad(base_url: str, task: Any) -> None:
        await good(base_url, task)
        raise KeyError("the agent's own bug")

    tasks = [{"id": "a", "question": QUESTION, "answer": 3}, {"id": "b", "question": QUESTION, "answer": 4}]
    async with open_gateway(generate, tokenizer, reward_fn=reward) as gateway:
        done = await rollout_external(gateway, good, tasks, n=2)
        assert [(t.task_id, t.chain_index, t.reward) for t in done] == [("a", 0, 1.0), ("a", 1, 1.0), ("b", 0, 0.0), ("b", 1, 0.0)]
        [failed] = await run_external(gateway, bad, tasks[0])
        assert failed.error is not None and "KeyError" in failed.error and failed.reward is None and failed.num_turns == 1
        assert gateway.session_ids() == []


async def test_a_command_agent_gets_the_url_in_its_environment(tokenizer: Any) -> None:
    script = (
        "import os, openai\n"
        "client = openai.OpenAI()\n"  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
        "answer = client.chat.completions.create(model='p', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(answer.choices[0].message.content)\n"
    )
    generate, _ = token_model(tokenizer, ["It is 3."])
    async with open_gateway(generate, tokenizer) as gateway:
        [t] = await run_external(gateway, command_agent([sys.executable, "-c", script]), {"id": "c"})
        assert t.error is None and t.final_text() == "It is 3." and t.token_level
        [failed] = await run_external(gateway, command_agent([sys.executable, "-c", "raise SystemExit(3)"]), {"id": "d"})
        assert failed.error is not None and "exited with 3" in failed.error


async def test_models_lists_the_served_name(tokenizer: Any) -> None:
    generate, _ = token_model(tokenizer, TURNS)
    async with open_gateway(generate, tokenizer, GatewayConfig(model="my-policy")) as gateway:
        session = gateway.open_session()
        async with _client(session.base_url) as client:
            models = await client.models.list()
        assert [m.id for m in models.data] == ["my-policy"]
        await gateway.end_session(session.id)
