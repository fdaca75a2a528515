"""The contract, round two: what hostile user code, hostile text and
concurrent writers used to break. Each case failed before its fix; each
async one runs on asyncio and on trio."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import (
    Agent,
    Completion,
    Generate,
    Message,
    Middleware,
    OutputBusyError,
    Output,
    Request,
    Trajectory,
    compose,
    rollout,
    run_agent,
)
from agentfly_min.agent import rollout_stream
from agentfly_min.runfile import load_agent, read_done, run_rollout_file
from agentfly_min.testing import FakeOpenAIServer
from agentfly_min.tools import calculator, tool

from .test_cli import agent_toml

pytestmark = pytest.mark.anyio

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'


def calling_then_answering() -> Generate:
    """A model that calls the calculator, then answers."""

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        text = CALL if request.messages[-1].role == "user" else "\\boxed{4}"
        return Completion(outputs=(Output(text=text, finish_reason="stop"),))

    return generate


class Halt(BaseException):
    """A user's own BaseException subclass."""


# --- chains lost or poisoned -------------------------------------------------------


@tool
async def cancelling_tool(expression: str) -> str:
    """A tool whose library leaked a CancelledError nobody asked for.

    Args:
        expression: ignored.
    """
    raise asyncio.CancelledError("leaked by a library")


def raising_in_transport(exc: BaseException, on: str) -> Generate:
    inner = calling_then_answering()

    async def generate(request: Request) -> Completion:
        if request.messages[-1].text == on:
            await anyio.lowlevel.checkpoint()
            raise exc
        return await inner(request)

    return generate


def raising_middleware(exc: BaseException, on: str) -> Middleware:
    def wrap(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            if request.messages[-1].text == on:
                raise exc
            return await inner(request)

        return generate

    return wrap


TASKS = [{"id": f"t{i}", "question": f"q{i}", "answer": "4"} for i in range(6)]


@pytest.mark.parametrize(
    "where", ["tool", "transport", "middleware", "middleware-base-exception", "middleware-system-exit"]
)
async def test_anything_user_code_raises_ends_only_its_own_chain(where: str) -> None:
    """A CancelledError (asyncio) or any BaseException raised by user code
    when nothing cancelled the chain is that chain's recorded failure: the
    other chains all finish."""
    agent = Agent(model_name_or_path="m", tools=[calculator], max_turns=3)
    generate = calling_then_answering()
    expected = "CancelledError: leaked by a library"
    if where == "tool":
        agent = Agent(model_name_or_path="m", tools=[msgspec.structs.replace(cancelling_tool, name="calculator")], max_turns=3)
    elif where == "transport":
        generate = raising_in_transport(asyncio.CancelledError("leaked by a library"), on="q2")
    elif where == "middleware":
        generate = compose(raising_middleware(asyncio.CancelledError("leaked by a library"), on="q2"))(generate)
    elif where == "middleware-base-exception":
        generate, expected = compose(raising_middleware(Halt("stop"), on="q2"))(generate), "Halt: stop"
    else:
        generate, expected = compose(raising_middleware(SystemExit(3), on="q2"))(generate), "SystemExit: 3"
    trajectories = await rollout(agent, generate, TASKS, n=2)
    assert [(t.task_id, t.chain_index) for t in trajectories] == [(f"t{i}", c) for i in range(6) for c in range(2)]
    for t in trajectories:
        if where == "tool":
            # the tool's failure is told to the model; the episode goes on
            assert t.error is None and t.tool_error_kinds == {"raised": 1}
            assert t.messages[2].text == "Error: calculator raised CancelledError: leaked by a library"
        elif t.task_id == "t2":
            assert t.finish_reason == "error" and t.error == expected
        else:
            assert t.error is None and t.finish_reason == "answer"


async def test_a_real_cancellation_still_ends_the_rollout() -> None:
    started = anyio.Event()

    async def hanging(request: Request) -> Completion:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.move_on_after(5) as outer:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await rollout(Agent(model_name_or_path="m"), hanging, TASKS, n=2)
                raise AssertionError("the rollout returned although it was cancelled")

            tg.start_soon(run)
            await started.wait()
            tg.cancel_scope.cancel()
    assert not outer.cancelled_caught


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancelling_the_task_of_an_episode_on_asyncio_propagates() -> None:
    async def hanging(request: Request) -> Completion:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    task = asyncio.ensure_future(run_agent(Agent(model_name_or_path="m"), hanging, {"question": "q"}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_bad_task_among_good_ones_is_a_recorded_error_for_that_task() -> None:
    tasks: list[Any] = [{"question": "q0", "answer": "4"}, None, "just text", {"question": "q3", "answer": "4"}]
    agent = Agent(model_name_or_path="m", tools=[calculator], max_turns=3)
    listed = await rollout(agent, calling_then_answering(), tasks)
    streamed: list[Trajectory] = []
    async with rollout_stream(agent, calling_then_answering(), iter(tasks)) as trajectories:
        async for trajectory in trajectories:
            streamed.append(trajectory)
    for got in (listed, sorted(streamed, key=lambda t: t.task_id)):
        assert [t.task_id for t in got] == ["#0", "#1", "#2", "#3"]
        assert [t.error for t in got] == [
            None,
            "bad task: a task is a mapping (a dict), got NoneType",
            "bad task: a task is a mapping (a dict), got str",
            None,
        ]


@tool
def listdir(path: str) -> str:
    """List a directory whose one file name is not UTF-8.

    Args:
        path: the directory.
    """
    return "files: " + os.fsdecode(b"report-\xff.txt")


def test_a_lone_surrogate_in_a_tool_result_is_replaced_and_the_file_rollout_goes_on(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_server.configure()
    agent, spec = load_agent(agent_toml(tmp_path / "agent.toml", fake_server).read_bytes())
    agent = msgspec.structs.replace(agent, tools=(listdir,), reward_fn=None)
    call = '<tool_call>{"name": "listdir", "arguments": {"path": "."}}</tool_call>'
    tasks = [{"id": f"t{i}", "question": call if i % 3 == 1 else f"q{i}"} for i in range(10)]
    out = tmp_path / "out.jsonl"
    written: list[Trajectory] = []

    async def main() -> None:
        await run_rollout_file(agent, spec, iter(tasks), out, n=1, concurrency=4, work_dir=tmp_path, on_trajectory=written.append)

    anyio.run(main)
    lines = [msgspec.json.decode(line, type=Trajectory) for line in out.read_bytes().splitlines()]
    assert sorted(t.task_id for t in lines) == [f"t{i}" for i in range(10)]
    results = [m.text for t in lines for m in t.messages if m.role == "tool"]
    assert results and all(text == "files: report-\ufffd.txt" for text in results)
    assert read_done(out) == {(f"t{i}", 0) for i in range(10)}


async def test_a_turn_without_token_ids_makes_the_trajectory_say_it_is_not_token_exact(tokenizer: Any) -> None:
    seen: list[Request] = []

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        seen.append(request)
        turn = len(seen) - 1
        text = CALL if turn < 2 else "\\boxed{4}"
        ids = tuple(tokenizer.encode(text, add_special_tokens=False))
        return Completion(outputs=(Output(text=text, token_ids=None if turn == 1 else ids, finish_reason="stop"),))

    agent = Agent(model_name_or_path="m", tools=[calculator], max_turns=4)
    trajectory = await run_agent(agent, generate, {"question": "2+2?"}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "answer" and trajectory.num_turns == 3
    assert not trajectory.token_level and trajectory.token_gap == 1
    assert trajectory.response_ids == () and trajectory.response_mask == ()
    # the turn after the gap went as messages: its ids would have lacked turn 1
    assert seen[1].prompt_ids is not None and seen[2].prompt_ids is None


async def test_a_text_transport_has_no_gap(tokenizer: Any) -> None:
    trajectory = await run_agent(
        Agent(model_name_or_path="m", tools=[calculator]), calling_then_answering(), {"question": "q"}, tokenizer=tokenizer
    )
    assert not trajectory.token_level and trajectory.token_gap is None


async def test_a_logprob_of_minus_infinity_survives_the_round_trip_to_json(tokenizer: Any) -> None:
    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        ids = tuple(tokenizer.encode("\\boxed{4}", add_special_tokens=False))
        logprobs = (-math.inf,) + (-0.5,) * (len(ids) - 1)
        return Completion(outputs=(Output(text="\\boxed{4}", token_ids=ids, logprobs=logprobs, finish_reason="stop"),))

    trajectory = await run_agent(Agent(model_name_or_path="m"), generate, {"question": "q"}, tokenizer=tokenizer)
    assert trajectory.response_logprobs is not None and trajectory.response_logprobs[0] == -9999.0
    again = msgspec.json.decode(msgspec.json.encode(trajectory), type=Trajectory)
    assert again == trajectory


async def test_a_nan_logprob_is_no_logprobs(tokenizer: Any) -> None:
    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        ids = tuple(tokenizer.encode("\\boxed{4}", add_special_tokens=False))
        logprobs = (math.nan,) + (-0.5,) * (len(ids) - 1)
        return Completion(outputs=(Output(text="\\boxed{4}", token_ids=ids, logprobs=logprobs, finish_reason="stop"),))

    trajectory = await run_agent(Agent(model_name_or_path="m"), generate, {"question": "q"}, tokenizer=tokenizer)
    assert trajectory.token_level and trajectory.response_logprobs is None


# --- two writers ---------------------------------------------------------------------

APPENDER = """
import os, sys, time
path, count = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
for i in range(count):
    line = ('{"task_id": "other-%d", "chain_index": 0, "pad": "' % i + "x" * 200 + '"}\\n').encode()
    os.write(fd, line[:50])
    time.sleep(0.0002)
    os.write(fd, line[50:])
os.close(fd)
"""


def test_reading_what_is_done_never_changes_the_file_while_another_process_appends(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"task_id": "mine", "chain_index": 0}\n{"task_id": "cut')  # an interrupted run's last line
    count = 2000
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(out), str(count)])
    try:
        while writer.poll() is None:
            read_done(out)
    finally:
        writer.wait(timeout=60)
    lines = out.read_bytes().split(b"\n")
    complete = [line for line in lines if line.startswith(b'{"task_id": "other-') and line.endswith(b'"}')]
    assert len(complete) >= count - 1  # the first may have joined the cut line
    assert read_done(out) >= {("mine", 0)} | {(f"other-{i}", 0) for i in range(1, count)}


def test_a_second_rollout_on_the_same_output_is_refused(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_server.configure(latency=0.3)
    agent, spec = load_agent(agent_toml(tmp_path / "agent.toml", fake_server).read_bytes())
    out = tmp_path / "out.jsonl"
    tasks = [{"id": f"t{i}", "question": f"q{i}"} for i in range(4)]
    outcome: list[BaseException | None] = []

    async def one(delay: float) -> None:
        await anyio.sleep(delay)
        try:
            await run_rollout_file(agent, spec, iter(tasks), out, n=1, concurrency=4, work_dir=tmp_path, on_trajectory=lambda t: None)
            outcome.append(None)
        except OutputBusyError as exc:
            outcome.append(exc)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0.0)
            tg.start_soon(one, 0.1)

    anyio.run(main)
    assert outcome[0] is not None and "being written by another rollout" in str(outcome[0])
    assert outcome[1] is None
    assert read_done(out) == {(f"t{i}", 0) for i in range(4)}


def test_an_interrupted_runs_partial_line_is_cut_when_resuming(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_server.configure()
    agent, spec = load_agent(agent_toml(tmp_path / "agent.toml", fake_server).read_bytes())
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"task_id": "t0", "chain_index": 0}\n{"task_id": "t1", "cha')
    anyio.run(
        lambda: run_rollout_file(
            agent, spec, iter([{"id": f"t{i}", "question": f"q{i}"} for i in range(2)]), out,
            n=1, concurrency=2, work_dir=tmp_path, on_trajectory=lambda t: None,
        )
    )  # fmt: skip
    lines = out.read_bytes().splitlines()
    assert lines[0] == b'{"task_id": "t0", "chain_index": 0}' and len(lines) == 2
    assert msgspec.json.decode(lines[1], type=Trajectory).task_id == "t1"


# --- one chain stalls everyone ------------------------------------------------------


def answering() -> Generate:
    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(Output(text="\\boxed{4}", finish_reason="stop"),))

    return generate


async def test_an_async_reward_that_never_returns_is_a_reward_error() -> None:
    async def hanging(trajectory: Trajectory, task: Any) -> float:
        await anyio.sleep_forever()
        return 1.0

    agent = Agent(model_name_or_path="m", reward_fn=hanging, reward_timeout=0.2)
    with anyio.fail_after(30):
        (trajectory,) = await rollout(agent, answering(), [{"id": "t", "question": "q"}])
    assert trajectory.reward is None and trajectory.error is None
    assert trajectory.reward_error is not None and "did not return within 0.2 s" in trajectory.reward_error


async def test_a_synchronous_reward_that_hangs_is_abandoned_on_a_daemon_thread() -> None:
    import threading

    never = threading.Event()
    seen: list[bool] = []

    def hanging(trajectory: Trajectory, task: Any) -> float:
        seen.append(threading.current_thread().daemon)
        never.wait(60)
        return 1.0

    agent = Agent(model_name_or_path="m", reward_fn=hanging, reward_timeout=0.2)
    try:
        with anyio.fail_after(30):
            (trajectory,) = await rollout(agent, answering(), [{"id": "t", "question": "q"}])
    finally:
        never.set()
    assert seen == [True]
    assert trajectory.reward_error is not None and "did not return within" in trajectory.reward_error


async def test_a_slow_synchronous_reward_holds_no_other_chain() -> None:
    """Seven chains finish while the eighth's reward is still computing: the
    slow reward is released only once the other seven came out of the stream
    (on the event loop it would hold them, and its wait would run out)."""
    import threading

    release = threading.Event()

    def reward(trajectory: Trajectory, task: Any) -> float:
        if task["id"] == "slow":
            return 1.0 if release.wait(20) else 0.0
        return 0.5

    agent = Agent(model_name_or_path="m", reward_fn=reward)
    tasks = [{"id": "slow", "question": "q"}] + [{"id": f"t{i}", "question": "q"} for i in range(7)]
    order: list[str] = []
    async with rollout_stream(agent, answering(), tasks, concurrency=8) as trajectories:
        async for trajectory in trajectories:
            order.append(trajectory.task_id)
            if len(order) == 7:
                release.set()
            if trajectory.task_id == "slow":
                assert trajectory.reward == 1.0  # released by the others, not by its own wait running out
    assert order[-1] == "slow" and len(order) == 8


@tool(timeout=0.3)
def hanging_tool(expression: str) -> str:
    """A synchronous tool that never returns.

    Args:
        expression: ignored.
    """
    import threading

    threading.Event().wait()
    return "never"


HUNG_TOOL_SCRIPT = """
import anyio, sys
from agentfly_min import Agent, Completion, Output, Request, run_agent
from tests.test_contract_round_two import CALL, hanging_tool

async def generate(request: Request) -> Completion:
    text = CALL.replace("calculator", "hanging_tool") if request.messages[-1].role == "user" else "done"
    return Completion(outputs=(Output(text=text, finish_reason="stop"),))

async def main() -> None:
    agent = Agent(model_name_or_path="m", tools=[hanging_tool], max_turns=2)
    trajectory = await run_agent(agent, generate, {"id": "t", "question": "q"})
    assert trajectory.tool_error_kinds == {"timeout": 1}, trajectory
    print("episode done", flush=True)

anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_hung_synchronous_tool_does_not_hold_the_interpreter_at_exit(backend: str) -> None:
    """The tool's thread never ends; the process must still exit (on asyncio,
    anyio's worker threads are not daemons and used to hold it forever)."""
    from .conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-c", HUNG_TOOL_SCRIPT, backend], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "episode done" in done.stdout


async def test_a_refused_request_releases_its_token_estimate() -> None:
    """50 MB refused by the server without usage: its 12.5M-token estimate
    must not hold the next 15-token request (1,250 s at 600k a minute)."""
    from agentfly_min import Message, TransportError, rate_limit

    sleeps: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    async def server(request: Request) -> Completion:
        if len(request.messages[0].text) > 1000:
            raise TransportError("413 request entity too large")
        return Completion(outputs=(Output(text="ok", finish_reason="stop"),))

    limited = rate_limit(tokens_per_minute=600_000, clock=lambda: now[0], sleep=sleep)(server)
    with pytest.raises(TransportError):
        await limited(Request(messages=(Message(role="user", content="x" * 50_000_000),), max_new_tokens=1))
    await limited(Request(messages=(Message(role="user", content="hi"),), max_new_tokens=10))
    assert sleeps == []


# --- leaks --------------------------------------------------------------------------


async def test_the_key_stays_out_of_a_traceback_with_locals_on_the_aiohttp_path() -> None:
    """A request that fails inside aiohttp (nothing listens on the port): the
    traceback with every frame's locals, aiohttp's own included, shows no key."""
    import socket
    import traceback

    from agentfly_min import ClientConfig, open_backend

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = ClientConfig(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-leaky-key", model="m", max_retries=0, http_library="aiohttp")
    shown: list[str] = []
    async with open_backend(config) as generate:
        try:
            await generate(Request(messages=(Message(role="user", content="hi"),)))
        except Exception as exc:  # noqa: BLE001 - the test reads whatever failed
            shown.append("".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format()))
    assert shown and "headers" in shown[0]  # aiohttp's frames and their locals are there
    assert "sk-leaky-key" not in shown[0]


def test_the_key_is_refused_by_yaml_dump() -> None:
    import pickle

    import yaml

    from agentfly_min import ClientConfig

    config = ClientConfig(api_key="sk-leaky-key")
    with pytest.raises(TypeError, match="not serialised"):
        yaml.dump(msgspec.structs.asdict(config))
    assert pickle.loads(pickle.dumps(config)).api_key == config.api_key  # Ray's path keeps it


def test_a_toml_agent_file_takes_the_key_as_a_string(tmp_path: Path) -> None:
    from agentfly_min import ConfigError, Secret, decode_config
    from agentfly_min import ClientConfig

    agent, spec = load_agent('model = "m"\n\n[client]\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "sk-from-toml"\n')
    assert spec.client is not None and isinstance(spec.client.api_key, Secret)
    assert spec.client.api_key.reveal() == "sk-from-toml" and "sk-from-toml" not in repr(spec)
    with pytest.raises(ConfigError, match="api_key"):
        decode_config('api_key = ["sk-a", "sk-b"]', ClientConfig)


# --- what a failed or disobedient server leaves on record ------------------------------


async def test_a_chain_that_runs_out_of_retries_records_its_attempts() -> None:
    from agentfly_min import TransientError, retry

    async def unavailable(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        raise TransientError("service unavailable", status=503)

    async def no_wait(seconds: float) -> None:
        await anyio.lowlevel.checkpoint()

    generate = retry(max_retries=4, sleep=no_wait)(unavailable)
    (trajectory,) = await rollout(Agent(model_name_or_path="m"), generate, [{"id": "t", "question": "q"}])
    assert trajectory.error is not None and "RetriesExhaustedError" in trajectory.error
    assert trajectory.attempts == 5 and trajectory.retries == {"HTTP 503": 4}


class _StdlibServer:
    """An OpenAI-compatible server (stdlib, on a thread) that lists one model
    and answers every chat completion with ``content`` and ``completion_tokens``
    whatever was asked, recording each request's path and headers. Set as a
    proxy, it answers for every host itself."""

    def __init__(self, content: str = "ok", completion_tokens: int = 1) -> None:
        self.content, self.completion_tokens = content, completion_tokens
        self.seen: list[tuple[str, dict[str, str]]] = []

    def __enter__(self) -> str:
        import http.server
        import json
        import threading

        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, body: dict[str, Any]) -> None:
                owner.seen.append((self.path, dict(self.headers)))
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self._send({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]})

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers["Content-Length"]))
                message = {"role": "assistant", "content": owner.content}
                used = owner.completion_tokens
                usage = {"prompt_tokens": 3, "completion_tokens": used, "total_tokens": 3 + used}
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage})  # fmt: skip

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("library", ["aiohttp", "openai"])
async def test_a_server_that_returns_more_tokens_than_asked_is_refused(library: Any) -> None:
    from agentfly_min import ClientConfig, MalformedResponseError, open_backend

    with _StdlibServer("word " * 501, completion_tokens=501) as url:  # whatever it was asked
        async with open_backend(ClientConfig(base_url=f"{url}/v1", model="m", max_retries=0, http_library=library)) as generate:
            with pytest.raises(MalformedResponseError, match="501 tokens for a budget of 50"):
                await generate(Request(messages=(Message(role="user", content="hi"),), max_new_tokens=50))


def test_a_stream_with_no_chunk_or_no_finish_reason_is_not_an_answer() -> None:
    from agentfly_min import MalformedResponseError
    from agentfly_min.stream import Chunk, collect_chunks

    with pytest.raises(MalformedResponseError, match="without a chunk"):
        collect_chunks([])
    with pytest.raises(MalformedResponseError, match="without a finish_reason"):
        collect_chunks([Chunk(text="The answer is 4"), Chunk(text="2")])
    assert collect_chunks([Chunk(text="4"), Chunk(finish_reason="stop")]).outputs[0].text == "4"


def test_a_token_id_outside_the_vocabulary_is_named_as_such() -> None:
    from agentfly_min.transports._openai_wire import token_prompt_refused

    error = token_prompt_refused("Token id 5000 is out of vocabulary", "rid")
    assert "vocabulary" in str(error) and "need a vLLM server" not in str(error)


class _CountingTokenizer:
    """A tokenizer that counts the characters it is asked to encode."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.encoded = 0

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self.encoded += len(text)
        return self._inner.encode(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("size", [1_000_000, 3_000])
async def test_a_huge_tool_output_is_cut_before_it_is_tokenised(size: int) -> None:
    """1 MB of tool output against a budget of 100 tokens: only a few
    thousand characters are tokenised, and the ids are exactly what
    tokenising the whole output and cutting at the budget gives."""
    from agentfly_min.templates import Turn, get_template

    from .test_families import tokenizer_for

    @tool
    def dump(expression: str) -> str:
        """Prints a lot.

        Args:
            expression: ignored.
        """
        return "".join(f"line {i}: value {i * 7 % 1000} é\n" for i in range(size // 20))[:size]

    tokenizer = _CountingTokenizer(tokenizer_for("qwen2.5"))
    text = '<tool_call>\n{"name": "dump", "arguments": {"expression": "x"}}\n</tool_call>'
    ids = tuple(tokenizer.encode(text + "<|im_end|>", add_special_tokens=False))

    async def token_level(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(outputs=(Output(text=text, finish_reason="stop", token_ids=ids, logprobs=(-0.1,) * len(ids)),))

    agent = Agent(model_name_or_path="m", tools=[dump], max_turns=2, max_response_tokens=100)
    tokenizer.encoded = 0
    trajectory = await run_agent(agent, token_level, {"id": "t", "question": "q"}, tokenizer=tokenizer)
    assert trajectory.error is None and trajectory.finish_reason == "context"
    assert tokenizer.encoded < 20_000  # the prompt, and the output cut to a few budgets' worth
    whole = get_template("qwen2.5").between_ids(
        tokenizer, Turn(history=trajectory.messages[:2], sampled=ids, results=trajectory.messages[2:3], tools=(dump.schema,))
    )
    assert list(trajectory.response_ids) == [*ids, *whole[: 100 - len(ids)]]


# --- the environment, read as openai-python reads it -----------------------------------


@pytest.mark.parametrize("library", ["aiohttp", "openai"])
async def test_both_wire_paths_take_the_proxy_and_the_organization_from_the_environment(
    library: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentfly_min import ClientConfig, open_backend

    proxy = _StdlibServer("proxied")
    with proxy as proxy_url:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("http_proxy", proxy_url)
        monkeypatch.setenv("OPENAI_ORG_ID", "org-from-env")
        monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-from-env")
        # A host nobody resolves: only the proxy can answer for it.
        config = ClientConfig(base_url="http://api.example.invalid/v1", model="m", max_retries=0, http_library=library)
        async with open_backend(config) as generate:
            completion = await generate(Request(messages=(Message(role="user", content="hi"),), max_new_tokens=4))
    assert completion.outputs[0].text == "proxied"
    path, headers = proxy.seen[-1]
    assert path == "http://api.example.invalid/v1/chat/completions"  # the absolute form a proxy is sent
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["openai-organization"] == "org-from-env" and lowered["openai-project"] == "proj-from-env"


async def test_the_aiohttp_path_sends_requests_without_a_thread_hop(fake_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp's trust_env read the proxy settings and .netrc on a worker
    # thread for every request: two hops a request, which tripled the CPU a
    # request cost at 256 in flight. The environment is read once now.
    import concurrent.futures

    from agentfly_min import ClientConfig, open_backend

    fake_server.configure()
    submitted: list[object] = []
    submit = concurrent.futures.ThreadPoolExecutor.submit

    def counting(self: concurrent.futures.ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(fn)
        return submit(self, fn, *args, **kwargs)

    config = ClientConfig(base_url=fake_server.base_url, model="fake-echo", http_library="aiohttp", max_new_tokens=4)
    async with open_backend(config) as generate:
        await generate(Request(messages=(Message(role="user", content="warm-up"),)))
        monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", counting)
        for i in range(20):
            completion = await generate(Request(messages=(Message(role="user", content=f"q{i}"),)))
            assert completion.outputs[0].text
    assert submitted == []


def test_local_health_checks_do_not_go_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentfly_min.local.environment import local_urlopen

    with _StdlibServer() as url:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: a proxied call fails
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with local_urlopen(f"{url}/v1/models", timeout=10) as response:
            assert response.status == 200


def test_azure_takes_its_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentfly_min import ClientConfig
    from agentfly_min.transports._sdk import make_client

    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-from-env")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    config = ClientConfig(base_url="https://example.openai.azure.com", azure_api_version="2024-06-01", model="d")
    assert make_client(config, None).api_key == "azure-key-from-env"


async def test_a_huge_tool_output_without_a_budget_is_tokenised_off_the_event_loop() -> None:
    import threading

    from .test_families import tokenizer_for

    threads: list[bool] = []

    class Recording(_CountingTokenizer):
        def encode(self, text: str, *args: Any, **kwargs: Any) -> Any:
            if len(text) > 100_000:
                threads.append(threading.current_thread() is threading.main_thread())
            return super().encode(text, *args, **kwargs)

    @tool
    def dump(expression: str) -> str:
        """Prints a lot.

        Args:
            expression: ignored.
        """
        return "x = 1\n" * 100_000

    tokenizer = Recording(tokenizer_for("qwen2.5"))
    text = '<tool_call>\n{"name": "dump", "arguments": {"expression": "x"}}\n</tool_call>'
    ids = tuple(tokenizer.encode(text + "<|im_end|>", add_special_tokens=False))

    async def token_level(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        done = len(request.messages) > 1
        return Completion(outputs=(Output(text="4" if done else text, finish_reason="stop", token_ids=(19,) if done else ids),))

    trajectory = await run_agent(Agent(model_name_or_path="m", tools=[dump], max_turns=2), token_level, {"id": "t", "question": "q"}, tokenizer=tokenizer)
    assert trajectory.error is None and trajectory.token_level
    assert threads == [False]  # tokenised once, on a worker thread
