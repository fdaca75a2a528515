"""What openai-python users set on a client, each checked on the wire: the
fake server records every request as it arrived (path, query, headers,
body), and answers like OpenAI's API where it matters (reasoning models
refuse ``max_tokens``; a ``response_format`` gets JSON of its schema)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import msgspec
import openai
import pytest

from agentfly_min import (
    ClientConfig,
    ConfigError,
    PermanentError,
    Request,
    MalformedResponseError,
    TransportError,
    StructuredOutputError,
    collect,
    compose,
    decode_config,
    open_backend,
    open_stream,
)
from agentfly_min.structured import decode_output, json_schema_format
from agentfly_min.testing import FakeOpenAIServer
from agentfly_min.testing.fake_openai import SeenRequest

from .support import says

pytestmark = pytest.mark.anyio

LIBRARY: list[Literal["aiohttp", "openai"]] = ["aiohttp"]


@pytest.fixture(autouse=True, params=["aiohttp", "openai"])
def library(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every option on both wire paths (aiohttp with msgspec, and the SDK)."""
    LIBRARY[0] = request.param
    yield
    LIBRARY[0] = "aiohttp"


def config(server: FakeOpenAIServer, **overrides: Any) -> ClientConfig:
    settings: dict[str, Any] = {"model": "fake-echo", "timeout": 10, "max_retries": 0, "http_library": LIBRARY[0], **overrides}
    return ClientConfig(base_url=server.base_url, api_key="k", **settings)


def chats(server: FakeOpenAIServer) -> list[SeenRequest]:
    return [seen for seen in server.requests() if seen.path.endswith("/chat/completions")]


async def test_extras_of_config_and_request_reach_the_wire_the_request_winning(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    settings = config(
        fake_server,
        extra_body={"priority": 1, "kept": "config"},
        extra_headers={"x-team": "rl", "x-over": "config"},
        extra_query={"tenant": "a", "over": "config"},
    )
    request = Request(
        messages=says("extras"),
        extra_body={"priority": 7},
        extra_headers={"x-over": "request"},
        extra_query={"over": "request"},
        request_id="episode-1",
    )
    async with open_backend(settings) as generate:
        await generate(request)
    (seen,) = chats(fake_server)
    assert seen.body["priority"] == 7 and seen.body["kept"] == "config"
    assert seen.headers["x-team"] == "rl" and seen.headers["x-over"] == "request"
    assert seen.headers["x-session-id"] == "episode-1"
    assert dict(part.split("=") for part in seen.query.split("&")) == {"tenant": "a", "over": "request"}


async def test_default_headers_organization_and_project_go_on_every_call(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    settings = config(fake_server, model=None, default_headers={"x-app": "agentfly"}, organization="org-1", project="proj-9")
    async with open_backend(settings) as generate:  # no model: the server's list is asked first
        await generate(Request(messages=says("who")))
    seen = fake_server.requests()
    assert [s.path for s in seen] == ["/v1/models", "/v1/chat/completions"]
    for call in seen:
        assert call.headers["x-app"] == "agentfly"
        assert call.headers["openai-organization"] == "org-1"
        assert call.headers["openai-project"] == "proj-9"
        assert call.headers["authorization"] == "Bearer k"


async def test_a_user_supplied_http_client_carries_the_requests(fake_server: FakeOpenAIServer) -> None:
    if LIBRARY[0] == "aiohttp":
        with pytest.raises(ConfigError, match="goes through the openai SDK"):
            async with open_backend(config(fake_server), http_client=object()):
                pass
    fake_server.configure()
    sent: list[str] = []

    async def record(request: Any) -> None:
        sent.append(str(request.url))

    # The SDK's own kind of HTTP client, with a hook as a proxy or an mTLS
    # setup would have its transport.
    mine = openai.DefaultAsyncHttpxClient(event_hooks={"request": [record]})
    async with open_backend(config(fake_server, http_library="auto"), http_client=mine) as generate:
        completion = await generate(Request(messages=says("through mine")))
    assert completion.outputs[0].text == "echo: through mine"
    assert sent == [f"{fake_server.base_url}/chat/completions"]
    assert mine.is_closed


@pytest.mark.parametrize(
    ("model", "field", "sent"),
    [
        ("o3-mini", "auto", "max_completion_tokens"),
        ("gpt-5", "auto", "max_completion_tokens"),
        ("openai/o1", "auto", "max_completion_tokens"),
        ("gpt-4o", "auto", "max_tokens"),
        ("qwen3", "max_completion_tokens", "max_completion_tokens"),
        ("o4-mini", "max_tokens", "max_tokens"),
    ],
)
async def test_the_budget_goes_in_the_field_the_model_takes(
    fake_server: FakeOpenAIServer, model: str, field: Literal["auto", "max_tokens", "max_completion_tokens"], sent: str
) -> None:
    fake_server.configure(models=(model,))
    async with open_backend(config(fake_server, model=model, max_tokens_field=field)) as generate:
        request = Request(messages=says("budget"), max_new_tokens=17)
        if model.startswith("o4") and field == "max_tokens":
            # What OpenAI answers a reasoning model sent max_tokens, as a typed error.
            with pytest.raises(PermanentError, match="max_completion_tokens") as caught:
                await generate(request)
            assert caught.value.status == 400
        else:
            await generate(request)
        async with open_stream(config(fake_server, model=model, max_tokens_field=field), middleware=compose()) as stream:
            if not (model.startswith("o4") and field == "max_tokens"):
                await collect(stream, request)
    (other,) = {"max_tokens", "max_completion_tokens"} - {sent}
    seen = chats(fake_server)
    assert seen and all(call.body[sent] == 17 and other not in call.body for call in seen)


class Verdict(msgspec.Struct, frozen=True):
    answer: str
    steps: int
    sure: bool


async def test_response_format_from_a_type_and_the_answer_decoded_back(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    form = json_schema_format(Verdict, strict=True)
    async with open_backend(config(fake_server)) as generate:
        completion = await generate(Request(messages=says("two plus two"), response_format=form))
    assert decode_output(completion, Verdict) == Verdict(answer="two plus two", steps=3, sure=True)
    (seen,) = chats(fake_server)
    assert seen.body["response_format"] == form
    schema = form["json_schema"]["schema"]
    assert form["json_schema"]["name"] == "Verdict" and form["json_schema"]["strict"] is True
    assert schema["type"] == "object" and schema["additionalProperties"] is False  # the root inlined, closed
    assert sorted(schema["required"]) == ["answer", "steps", "sure"]


def test_structured_output_errors_are_typed_and_strict_needs_every_field() -> None:
    class Loose(msgspec.Struct):
        answer: str
        note: str = ""

    with pytest.raises(ValueError, match="note"):
        json_schema_format(Loose, strict=True)
    assert "strict" not in json_schema_format(Loose)["json_schema"]
    with pytest.raises(StructuredOutputError, match="not a Verdict") as caught:
        decode_output('{"answer": "4", "steps": "many"}', Verdict)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(StructuredOutputError, match="text starts"):
        decode_output('{"answer": "4", "ste', Verdict)


def test_bad_response_formats_and_headers_are_refused_when_built() -> None:
    with pytest.raises(ConfigError, match="response_format"):
        Request(messages=says("x"), response_format={"type": "xml"})
    with pytest.raises(ConfigError, match="json_schema"):
        Request(messages=says("x"), response_format={"type": "json_schema", "schema": {}})
    with pytest.raises(ConfigError, match="not both"):
        Request(messages=says("x"), response_format={"type": "json_object"}, regex="a+")
    with pytest.raises(ConfigError, match="extra_headers"):
        Request(messages=says("x"), extra_headers={"x-ok": "a\r\nx-injected: 1"})
    with pytest.raises(ConfigError, match="default_headers"):
        ClientConfig(default_headers={"bad name": "v"})
    with pytest.raises(ConfigError, match="max_tokens_field"):
        decode_config('max_tokens_field = "tokens"', ClientConfig)
    with pytest.raises(ConfigError, match="presence_penalty"):
        Request(messages=says("x"), presence_penalty=3.0)


async def test_penalties_and_vllm_sampling_extensions_are_sent(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    request = Request(
        messages=says("sample"), presence_penalty=0.5, frequency_penalty=-0.25, top_k=20, min_p=0.05, repetition_penalty=1.1
    )
    async with open_backend(config(fake_server)) as generate:
        await generate(request)
    (seen,) = chats(fake_server)
    expected = {"presence_penalty": 0.5, "frequency_penalty": -0.25, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}
    assert {name: seen.body.get(name) for name in expected} == expected
    async with open_backend(config(fake_server)) as generate:
        await generate(Request(messages=says("plain")))
    plain = chats(fake_server)[-1]
    assert not set(expected) & set(plain.body)  # unset options are left to the server


async def test_reasoning_and_cached_and_reasoning_token_counts(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(reasoning="first I think")
    request = Request(messages=says("count these words"))
    async with open_backend(config(fake_server)) as generate:
        completion = await generate(request)
    async with open_stream(config(fake_server)) as stream:
        streamed = await collect(stream, request)
    for answer in (completion, streamed):
        assert answer.outputs[0].reasoning == "first I think"
        assert answer.outputs[0].text == "echo: count these words"
        assert (answer.usage.prompt_tokens, answer.usage.cached_tokens, answer.usage.reasoning_tokens) == (3, 1, 1)


async def test_the_server_request_id_is_on_every_error(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(script=("400", "500", "malformed"))
    async with open_backend(config(fake_server)) as generate:
        with pytest.raises(PermanentError) as refused:
            await generate(Request(messages=says("one")))
        with pytest.raises(TransportError) as failed:
            await generate(Request(messages=says("two")))
        with pytest.raises(MalformedResponseError) as unreadable:
            await generate(Request(messages=says("three")))
    for caught in (refused, failed, unreadable):
        error: Any = caught.value
        assert error.request_id is not None and error.request_id.startswith("req-fake-")
        assert f"(request id {error.request_id})" in str(error)


async def test_azure_goes_through_the_sdks_azure_client(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(models=("my-deployment",))
    if LIBRARY[0] == "aiohttp":
        with pytest.raises(ConfigError, match="Azure goes through the openai SDK"):
            ClientConfig(base_url=fake_server.url, azure_api_version="2024-10-21", http_library="aiohttp")
    settings = ClientConfig(
        base_url=fake_server.url, api_key="azure-key", model="my-deployment", azure_api_version="2024-10-21", max_retries=0
    )
    async with open_backend(settings) as generate:
        completion = await generate(Request(messages=says("on azure")))
    assert completion.outputs[0].text == "echo: on azure"
    (seen,) = chats(fake_server)
    assert seen.path == "/openai/deployments/my-deployment/chat/completions"
    assert seen.query == "api-version=2024-10-21"
    assert seen.headers["api-key"] == "azure-key"  # Azure's header (older SDKs also send a bearer)


@pytest.mark.parametrize(
    ("library", "extra", "agent"),
    [("auto", {}, "aiohttp/"), ("aiohttp", {}, "aiohttp/"), ("openai", {}, "OpenAI/Python"), ("auto", {"azure_api_version": "2024-10-21"}, "OpenAI/Python")],
)
async def test_the_wire_path_is_the_one_chosen(fake_server: FakeOpenAIServer, library: str, extra: dict[str, str], agent: str) -> None:
    if LIBRARY[0] == "openai":
        pytest.skip("the library is the parameter here")
    fake_server.configure(models=("fake-echo",))
    settings = ClientConfig(base_url=fake_server.url, api_key="k", model="fake-echo", max_retries=0, http_library=library, **extra)  # type: ignore[arg-type]
    async with open_backend(settings) as generate:
        await generate(Request(messages=says("which")))
    (seen,) = chats(fake_server)
    assert agent in seen.headers["user-agent"], seen.headers["user-agent"]
