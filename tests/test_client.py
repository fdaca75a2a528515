"""The client transport against a real HTTP server on 127.0.0.1 (the fake
OpenAI server in its own process), every test through both wire paths: aiohttp
with msgspec (the default) and the real ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import anyio
import pytest

from agentfly_min import (
    ClientConfig,
    FunctionSchema,
    GenerationTimeoutError,
    MalformedResponseError,
    NamedToolChoice,
    PermanentError,
    Request,
    RetriesExhaustedError,
    ToolSchema,
    TransientError,
    compose,
    open_backend,
    retry,
    timeout,
)
from agentfly_min.testing import FakeOpenAIServer

from .support import says, user

pytestmark = pytest.mark.anyio

LIBRARY: list[Literal["aiohttp", "openai"]] = ["aiohttp"]


@pytest.fixture(autouse=True, params=["aiohttp", "openai"])
def library(request: pytest.FixtureRequest) -> Iterator[None]:
    LIBRARY[0] = request.param
    yield
    LIBRARY[0] = "aiohttp"


def config(server: FakeOpenAIServer, **overrides: object) -> ClientConfig:
    import msgspec

    base = ClientConfig(base_url=server.base_url, api_key="sk-test", timeout=10, max_retries=3, http_library=LIBRARY[0])
    return msgspec.structs.replace(base, **overrides)


async def test_chat_completion_with_n_logprobs_and_usage(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    async with open_backend(config(fake_server)) as generate:
        completion = await generate(Request(messages=says("hello there"), n=3, logprobs=True, max_new_tokens=8))
    assert [o.text for o in completion.outputs] == ["echo: hello there"] * 3
    assert all(o.logprobs == (-0.5, -0.5, -0.5) for o in completion.outputs)
    assert completion.usage.prompt_tokens == 2 and completion.usage.completion_tokens == 9
    assert completion.model == "fake-echo"  # found through /v1/models
    assert completion.attempts == 1


async def test_named_tool_choice_returns_parsed_tool_calls(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    tool = ToolSchema(function=FunctionSchema(name="lookup", parameters={"type": "object"}))
    async with open_backend(config(fake_server, model="fake-echo")) as generate:
        completion = await generate(
            Request(messages=says("find"), tools=(tool,), tool_choice=NamedToolChoice(name="lookup"))
        )
    (output,) = completion.outputs
    assert output.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in output.tool_calls] == [("lookup", '{"text": "find"}')]


async def test_transient_faults_are_retried_honouring_retry_after(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["429", "500", "503", "drop", "ok"], retry_after=0.05)
    fast = compose(retry(max_retries=4, initial_backoff=0.01, max_backoff=0.02), timeout(10))
    async with open_backend(config(fake_server), middleware=fast) as generate:
        completion = await generate(user("persist"))
    assert completion.outputs[0].text == "echo: persist"
    assert completion.attempts == 5
    assert [e.outcome for e in fake_server.log()] == ["429", "500", "503", "drop", "ok"]


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [("429", TransientError, 429), ("503", TransientError, 503), ("drop", TransientError, None),
     ("400", PermanentError, 400), ("malformed", MalformedResponseError, 200)],
)
async def test_faults_map_to_typed_errors(
    fake_server: FakeOpenAIServer, fault: str, error: type[Exception], status: int | None
) -> None:
    fake_server.configure(script=[fault], retry_after=1.5)
    async with open_backend(config(fake_server), middleware=compose()) as generate:
        with pytest.raises(error) as caught:
            await generate(user("x"))
    assert type(caught.value) is error
    assert getattr(caught.value, "status") == status
    if fault == "429":
        assert isinstance(caught.value, TransientError) and caught.value.retry_after == 1.5


async def test_permanent_error_is_not_retried(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["400", "ok"])
    async with open_backend(config(fake_server)) as generate:
        with pytest.raises(PermanentError, match="HTTP 400"):
            await generate(user("x"))
    assert len(fake_server.log()) == 1


async def test_too_long_retry_after_gives_up_at_once(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["429", "ok"], retry_after=120)
    async with open_backend(config(fake_server, max_retry_after=30)) as generate:
        with pytest.raises(RetriesExhaustedError, match="asked to wait 120 s"):
            await generate(user("x"))
    assert len(fake_server.log()) == 1


async def test_connection_refused_is_transient_and_exhausts_retries() -> None:
    with anyio.fail_after(30):
        broken = ClientConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, timeout=5, http_library=LIBRARY[0])
        async with open_backend(broken, middleware=compose(retry(max_retries=1, initial_backoff=0.01))) as generate:
            with pytest.raises(RetriesExhaustedError) as caught:
                await generate(user("x"))
    assert isinstance(caught.value.last_error, TransientError)
    assert "connection failed" in str(caught.value)


async def wait_for_disconnect(server: FakeOpenAIServer) -> bool:
    with anyio.move_on_after(5):
        while True:
            log = server.log()
            if log and log[0].disconnected:
                return True
            await anyio.sleep(0.05)
    return False


async def test_caller_cancellation_closes_the_connection(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["slow"], slow_seconds=30)
    async with open_backend(config(fake_server)) as generate:
        with anyio.move_on_after(0.5) as scope:
            await generate(user("abandoned"))
        assert scope.cancelled_caught
        assert await wait_for_disconnect(fake_server), "the server never saw the client hang up"
        with anyio.fail_after(5):  # the next request is not held up by the cancelled one
            completion = await generate(user("next"))
    assert completion.outputs[0].text == "echo: next"


async def test_timeout_middleware_closes_the_connection(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["slow"], slow_seconds=30)
    async with open_backend(config(fake_server), middleware=timeout(0.5)) as generate:
        with pytest.raises(GenerationTimeoutError):
            await generate(user("too slow"))
        assert await wait_for_disconnect(fake_server)
        assert (await generate(user("next"))).outputs[0].text == "echo: next"


async def test_every_attempt_ends_in_the_typed_timeout_on_either_wire_path(fake_server: FakeOpenAIServer) -> None:
    # Over the SDK the default stack's timeout layer holds each attempt to
    # config.timeout; over aiohttp the layer is left out and aiohttp's own
    # total deadline does it. A caller cannot tell the two apart.
    fake_server.configure(script=["slow", "slow"], slow_seconds=30)
    async with open_backend(config(fake_server, timeout=0.5, max_retries=1)) as generate:
        with anyio.fail_after(10), pytest.raises(RetriesExhaustedError) as caught:
            await generate(user("too slow, twice"))
    last = caught.value.last_error
    assert isinstance(last, GenerationTimeoutError) and last.seconds == 0.5
    assert [e.outcome for e in fake_server.log()] == ["slow", "slow"]


async def test_a_bare_call_is_still_held_to_config_timeout(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["slow"], slow_seconds=30)
    async with open_backend(config(fake_server, timeout=0.5), middleware=compose()) as generate:
        with anyio.fail_after(10), pytest.raises(TransientError) as caught:
            await generate(user("too slow"))
    if LIBRARY[0] == "aiohttp":  # the deadline that stands in for the layer raises what the layer would
        assert isinstance(caught.value, GenerationTimeoutError) and caught.value.seconds == 0.5
    assert await wait_for_disconnect(fake_server), "the server never saw the client hang up"


async def test_default_stack_retries_a_timed_out_attempt(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=["slow", "ok"], slow_seconds=30)
    async with open_backend(config(fake_server, timeout=0.5)) as generate:
        completion = await generate(user("second time lucky"))
    assert completion.attempts == 2
    assert [e.outcome for e in fake_server.log()] == ["slow", "ok"]
