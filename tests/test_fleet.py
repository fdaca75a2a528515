"""Token-exact RL rollouts over HTTP, across vLLM servers behind vLLM's
router: one fleet of two servers on the tiny model for the module, with
the router in front (consistent hashing on the session header). Failures
of servers and of the router itself, and what is refused before a request
is sent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import (
    Agent,
    ClientConfig,
    Completion,
    ConfigError,
    Generate,
    Request,
    open_backend,
    rollout,
    run_agent,
)
from agentfly_min.agent import Trajectory, rollout_stream
from agentfly_min.local._shm import shm_entries
from agentfly_min.local.fleet import Fleet, FleetError, Router
from agentfly_min.testing import FakeOpenAIServer
from agentfly_min.tools import calculator

from .conftest import WORK
from .support import says
from .vllm_support import assert_gone, engine_children

CALL = r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\*[1-9]"\}\}\n</tool_call>'


@pytest.fixture(scope="module")
def fleet(tiny_model_path: Path) -> Iterator[Fleet]:
    before = {p.pid for p in engine_children()}
    shm_before = shm_entries()
    with Fleet(tiny_model_path, work_dir=WORK, servers=2) as running:
        started = [p for p in engine_children() if p.pid not in before]
        assert len(started) >= 3  # two servers (and their engines) and the router
        yield running
    assert_gone(started, timeout=60)
    assert shm_entries() - shm_before == set()


def forcing(inner: Generate, record: dict[str, list[tuple[Request, Completion]]], *, calls: int = 1) -> Generate:
    """The random model calls the calculator on its first ``calls`` turns (a
    regex, sent to vLLM as structured outputs), then answers freely."""

    async def generate(request: Request) -> Completion:
        assert request.request_id is not None
        turn = sum(1 for m in request.messages if m.role == "assistant")
        sent = msgspec.structs.replace(request, regex=CALL) if turn < calls else request
        completion = await inner(sent)
        record[request.request_id].append((request, completion))
        return completion

    return generate


def token_config(base_url: str, **overrides: Any) -> ClientConfig:
    return ClientConfig(base_url=base_url, token_ids=True, timeout=120, **overrides)


def check_token_exact(trajectories: list[Any], record: dict[str, list[tuple[Request, Completion]]]) -> None:
    for t in trajectories:
        assert t.error is None, t.error
        assert t.token_level and t.num_turns >= 2 and t.tool_calls >= 1
        assert t.messages[2].text.isdigit()  # the forced call ran
        sampled = [i for _, c in record[t.request_id] for i in (c.outputs[0].token_ids or ())]
        assert [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m] == sampled
        assert t.response_logprobs is not None and len(t.response_logprobs) == len(t.response_ids)
        assert t.prompt_mismatches == ()  # each server saw exactly the ids sent
        for request, completion in record[t.request_id]:
            assert completion.prompt_ids == request.prompt_ids


@pytest.mark.slow
@pytest.mark.anyio
async def test_token_exact_rollouts_through_one_server_and_through_the_router(fleet: Fleet, tokenizer: Any) -> None:
    agent = Agent(model_name_or_path=fleet.model, tools=[calculator], backend="client", max_turns=3, max_new_tokens=64)
    tasks = [{"id": f"t{i}", "question": f"What is {i} times {i}?"} for i in range(8)]
    # One server, directly.
    record: dict[str, list[tuple[Request, Completion]]] = defaultdict(list)
    direct = f"http://127.0.0.1:{fleet.servers[0].port}/v1"
    async with open_backend(token_config(direct)) as generate:
        trajectories = await rollout(agent, forcing(generate, record), tasks[:2], tokenizer=tokenizer)
    check_token_exact(trajectories, record)
    assert {s for t in trajectories for s in t.servers} == {"server-0"}
    # Two servers, behind the router: every turn of a session on one server.
    record.clear()
    async with open_backend(token_config(fleet.base_url)) as generate:
        trajectories = await rollout(agent, forcing(generate, record, calls=2), tasks, n=2, tokenizer=tokenizer)
    check_token_exact(trajectories, record)
    for t in trajectories:
        assert len(t.servers) == t.num_turns and len(set(t.servers)) == 1 and t.session_moves == 0
    assert {t.servers[0] for t in trajectories} == {"server-0", "server-1"}  # and both servers in play


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_chat_path_stays_the_default_and_carries_the_session(fleet: Fleet) -> None:
    agent = Agent(model_name_or_path=fleet.model, backend="client", max_turns=1, max_new_tokens=8)
    async with open_backend(ClientConfig(base_url=fleet.base_url, timeout=60)) as generate:
        trajectories = await rollout(agent, generate, [{"id": f"c{i}", "question": "hi"} for i in range(4)])
    for t in trajectories:
        assert t.error is None and not t.token_level and t.servers and t.servers[0].startswith("server-")


@pytest.mark.slow
@pytest.mark.anyio
async def test_requests_without_a_session_spread_over_the_servers(fleet: Fleet) -> None:
    """With the default consistent_hash, requests without a request id all
    went to one server (the router hashed the empty key)."""
    async with open_backend(ClientConfig(base_url=fleet.base_url, timeout=60)) as generate:
        servers = [(await generate(Request(messages=says("hi"), max_new_tokens=2))).server for _ in range(16)]
    assert set(servers) == {"server-0", "server-1"}  # a 1 in 32,768 chance of one server by luck


@pytest.mark.slow
@pytest.mark.anyio
async def test_chains_ride_out_a_router_that_dies(fleet: Fleet) -> None:
    """Every in-flight chain used to fail within about 15 s, and a new
    router took a new port. The watcher starts it again on the same address
    and the client's retries carry the chains over."""
    router = fleet.router
    assert router is not None
    port, restarts = router.port, router.restarts
    agent = Agent(model_name_or_path=fleet.model, backend="client", max_turns=1, max_new_tokens=16)
    tasks = [{"id": f"r{i}", "question": "hi"} for i in range(32)]
    trajectories: list[Trajectory] = []
    async with open_backend(ClientConfig(base_url=fleet.base_url, timeout=60)) as generate:
        async with rollout_stream(agent, generate, tasks, concurrency=8) as finished:
            async for trajectory in finished:
                trajectories.append(trajectory)
                if len(trajectories) == 4:
                    router.kill()  # with 8 chains in flight and 20 not started
    assert [t.error for t in trajectories] == [None] * 32
    assert sum(sum(t.retries.values()) for t in trajectories) >= 1  # the crash was felt
    with anyio.fail_after(30):  # the watcher counts the restart once the router answers its health check
        while router.restarts == restarts:
            await anyio.sleep(0.1)
    assert router.restarts == restarts + 1 and fleet.router is router and router.port == port


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_server_that_cannot_do_token_prompts_is_a_clear_error_at_once(fake_server: FakeOpenAIServer, tokenizer: Any) -> None:
    fake_server.configure()
    agent = Agent(model_name_or_path="fake-echo", backend="client", max_turns=2)
    async with open_backend(token_config(fake_server.base_url, max_retries=0)) as generate:
        trajectory = await run_agent(agent, generate, {"question": "q"}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "error" and trajectory.num_turns == 0
    assert trajectory.error is not None and "return_token_ids" in trajectory.error and "PermanentError" in trajectory.error
    assert len([e for e in fake_server.log()]) == 1  # one request, no retries, no fall-back to text


def test_session_keys_a_header_cannot_carry_are_refused_when_the_request_is_built() -> None:
    for bad in ("has space", "é", "x" * 257, "line\nbreak", ""):
        with pytest.raises(ConfigError, match="Request.request_id"):
            Request(prompt_ids=(1,), request_id=bad)
    with pytest.raises(ConfigError, match="ClientConfig.session_header"):
        ClientConfig(session_header="bad header")
    Request(prompt_ids=(1,), request_id="task-7:chain-0/abc")  # visible ASCII is fine


@pytest.mark.anyio
async def test_task_ids_of_any_text_still_make_header_safe_sessions() -> None:
    seen: list[str] = []

    async def generate(request: Request) -> Completion:
        from agentfly_min import Output

        assert request.request_id is not None
        seen.append(request.request_id)
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(Output(text="ok", finish_reason="stop"),))

    agent = Agent(model_name_or_path="m")
    trajectory = await run_agent(agent, generate, {"id": "tâche n°1 " + "x" * 300, "question": "q"})
    assert trajectory.error is None and len(seen[0]) <= 256 and seen[0].isascii() and " " not in seen[0]


def test_a_router_that_does_not_come_up_is_an_error_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="vllm-router exited") as info:
        with Router(["http://127.0.0.1:9"], work_dir=tmp_path, extra_args=("--no-such-flag",), timeout=30):
            pass
    assert "no-such-flag" in str(info.value)  # the router's own words


@pytest.mark.slow
@pytest.mark.anyio
async def test_killing_a_server_mid_rollout_loses_no_chain(tiny_model_path: Path, tokenizer: Any, anyio_backend: str) -> None:
    """A server dies while sessions are on it: their next turns fail over to
    the live server (the router's retries, then ours on its 5xx), every chain
    ends with a trajectory, and the ones that moved say so."""
    if anyio_backend != "asyncio":
        pytest.skip("one fleet crash is enough: the transport is the same on both loops, tested above")
    before = {p.pid for p in engine_children()}
    with Fleet(tiny_model_path, work_dir=WORK, servers=2) as crashing:
        started = [p for p in engine_children() if p.pid not in before]
        record: dict[str, list[tuple[Request, Completion]]] = defaultdict(list)
        agent = Agent(model_name_or_path=crashing.model, tools=[calculator], backend="client", max_turns=4, max_new_tokens=64)
        tasks = [{"id": f"k{i}", "question": f"What is {i} times {i}?"} for i in range(8)]
        killed = anyio.Event()

        async def kill_after_first_turns() -> None:
            while sum(1 for turns in record.values() if turns) < len(tasks):
                await anyio.sleep(0.05)
            victim = max((0, 1), key=lambda k: sum(1 for turns in record.values() if turns[0][1].server == f"server-{k}"))
            crashing.kill(victim)
            killed.set()

        def after_the_crash(inner: Generate) -> Generate:
            async def generate(request: Request) -> Completion:
                if any(m.role == "assistant" for m in request.messages):
                    await killed.wait()  # every session has one turn on its server; then one server dies
                return await inner(request)

            return generate

        config = token_config(crashing.base_url, max_retries=8)
        async with open_backend(config) as generate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_after_first_turns)
                trajectories = await rollout(agent, forcing(after_the_crash(generate), record, calls=3), tasks, tokenizer=tokenizer)
        assert killed.is_set()
    assert_gone(started, timeout=60)
    assert len(trajectories) == 8  # every chain ended with a trajectory
    moved = [t for t in trajectories if t.session_moves]
    assert moved, [(t.servers, t.error) for t in trajectories]
    for t in moved:
        assert len(set(t.servers)) == 2
    finished = [t for t in trajectories if t.error is None]
    assert finished and all(t.token_level for t in finished)
    for t in trajectories:
        assert t.error is None or "RetriesExhausted" in t.error or "TransientError" in t.error, t.error
