"""Configs: validated when built, decoded strictly, secrets kept secret."""

from __future__ import annotations

import logging
from typing import Any, cast

import msgspec
import pytest

from agentfly_min import (
    AsyncVerlConfig,
    AsyncVLLMConfig,
    ClientConfig,
    ConfigError,
    Secret,
    decode_config,
    encode_config,
)


def test_seed_example_builds() -> None:
    config = ClientConfig(
        base_url="http://localhost:8000/v1",
        api_key="your-api-key",
        max_requests_per_minute=200,
        timeout=300,
        temperature=0.7,
        max_new_tokens=1024,
    )
    assert config.max_requests_per_minute == 200 and config.temperature == 0.7
    assert AsyncVLLMConfig(
        pipeline_parallel_size=2, data_parallel_size=1, tensor_parallel_size=1, gpu_memory_utilization=0.8
    ).pipeline_parallel_size == 2


@pytest.mark.parametrize(
    ("build", "field", "says"),
    [
        (lambda: ClientConfig(timeout=0), "ClientConfig.timeout", "> 0.0"),
        (lambda: ClientConfig(base_url="localhost:8000"), "ClientConfig.base_url", "matching regex"),
        (lambda: ClientConfig(base_url="ftp://host/v1"), "ClientConfig.base_url", "matching regex"),
        (lambda: ClientConfig(max_requests_per_minute=0), "ClientConfig.max_requests_per_minute", "> 0.0"),
        (lambda: ClientConfig(max_tokens_per_minute=-1.0), "ClientConfig.max_tokens_per_minute", "> 0.0"),
        (lambda: ClientConfig(temperature=2.5), "ClientConfig.temperature", "<= 2.0"),
        (lambda: ClientConfig(max_new_tokens=0), "ClientConfig.max_new_tokens", ">= 1"),
        (lambda: ClientConfig(max_retries=-1), "ClientConfig.max_retries", ">= 0"),
        (lambda: ClientConfig(max_concurrency=0), "ClientConfig.max_concurrency", ">= 1"),
        (lambda: ClientConfig(timeout=True), "ClientConfig.timeout", "got `bool`"),
        (lambda: AsyncVLLMConfig(tensor_parallel_size=0), "AsyncVLLMConfig.tensor_parallel_size", ">= 1"),
        (lambda: AsyncVLLMConfig(pipeline_parallel_size=0), "AsyncVLLMConfig.pipeline_parallel_size", ">= 1"),
        (lambda: AsyncVLLMConfig(data_parallel_size=-1), "AsyncVLLMConfig.data_parallel_size", ">= 1"),
        (lambda: AsyncVLLMConfig(gpu_memory_utilization=0.0), "AsyncVLLMConfig.gpu_memory_utilization", "> 0.0"),
        (lambda: AsyncVLLMConfig(gpu_memory_utilization=1.01), "AsyncVLLMConfig.gpu_memory_utilization", "<= 1.0"),
        (lambda: AsyncVLLMConfig(dtype=cast(Any, "fp3")), "AsyncVLLMConfig.dtype", "Invalid enum value 'fp3'"),
        (lambda: AsyncVLLMConfig(engine_args={"seed": 1}), "AsyncVLLMConfig.engine_args", "seed is a named field"),
        (
            lambda: AsyncVLLMConfig(engine_args={"disable_log_stats": False}),
            "AsyncVLLMConfig.engine_args",
            "disable_log_stats (the named field log_stats) is a named field",
        ),
        (lambda: AsyncVerlConfig(top_p=0), "AsyncVerlConfig.top_p", "> 0.0"),
        (lambda: AsyncVerlConfig(on_abort=cast(Any, "ignore")), "AsyncVerlConfig.on_abort", "Invalid enum value"),
        (lambda: AsyncVerlConfig(max_aborts=-1), "AsyncVerlConfig.max_aborts", ">= 0"),
    ],
)
def test_bad_values_fail_when_built_naming_the_field(build: object, field: str, says: str) -> None:
    assert callable(build)
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.field == field
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_decode_toml_and_json() -> None:
    toml = b'base_url = "http://127.0.0.1:9/v1"\nmax_requests_per_minute = 30\ntimeout = 5\n'
    config = decode_config(toml, ClientConfig)
    assert config.base_url == "http://127.0.0.1:9/v1" and config.max_requests_per_minute == 30
    vllm = decode_config(b'{"tensor_parallel_size": 2, "engine_args": {"swap_space": 0}}', AsyncVLLMConfig, format="json")
    assert vllm.tensor_parallel_size == 2 and vllm.engine_args == {"swap_space": 0}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'base_url = "http://x/v1"\ntimout = 3\n', "unknown field `timout`"),
        (b"timeout = -3\n", "ClientConfig.timeout: Expected `float` > 0.0"),
        (b'timeout = "soon"\n', "ClientConfig.timeout: Expected `float`, got `str`"),
        (b"timeout = \n", "not valid TOML"),
    ],
)
def test_decode_refuses_unknown_mistyped_and_out_of_range(text: bytes, says: str) -> None:
    with pytest.raises(ConfigError, match="ClientConfig") as caught:
        decode_config(text, ClientConfig)
    assert says in str(caught.value)


def test_api_key_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    config = ClientConfig(api_key="sk-very-secret")
    assert isinstance(config.api_key, Secret)
    assert config.api_key.reveal() == "sk-very-secret"
    logging.getLogger("test").warning("config %s %r", config, config)
    shown = [repr(config), str(config), f"{config}", f"{config.api_key}", caplog.text, encode_config(config).decode()]
    for text in shown:
        assert "sk-very-secret" not in text
    assert "**********" in repr(config)
    # A plain msgspec encode refuses rather than leaking it.
    with pytest.raises(TypeError):
        msgspec.json.encode(config)
    # A key decoded from a file is wrapped too.
    decoded = decode_config(b'api_key = "sk-from-file"\n', ClientConfig)
    assert isinstance(decoded.api_key, Secret) and "sk-from-file" not in repr(decoded)


def test_api_key_does_not_leak_through_generic_paths() -> None:
    import json
    import pickle
    import traceback

    config = ClientConfig(api_key="sk-very-secret")
    key = config.api_key
    assert isinstance(key, Secret)
    # How configs reach experiment trackers and JSON logs: refused, not leaked.
    with pytest.raises(TypeError):
        json.dumps(msgspec.structs.asdict(config))
    with pytest.raises(TypeError):
        msgspec.to_builtins(config)
    with pytest.raises(TypeError):
        "Bearer " + key  # type: ignore[operator]
    with pytest.raises(AttributeError):
        key.encode()  # type: ignore[attr-defined]
    shown = [str(key), repr(key), f"{key:>20}", "%s" % key, " ".join([str(key)])]
    try:
        raise RuntimeError("failed")
    except RuntimeError as exc:
        shown.append("".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format()))
    assert all("sk-very-secret" not in text for text in shown)
    # Ray ships configs to its workers by pickling: the key must survive that.
    assert pickle.loads(pickle.dumps(config)).api_key == key and key.reveal() == "sk-very-secret"


def test_a_masked_key_read_back_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentfly_min.transports._openai_wire import _api_key

    written = encode_config(ClientConfig(api_key="sk-very-secret"))
    assert b"sk-very-secret" not in written
    read = decode_config(written, ClientConfig, format="json")
    assert read.api_key is None  # not a key made of asterisks
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert _api_key(read) == "sk-from-env"


def test_api_key_absent_from_error_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        ClientConfig(api_key="sk-very-secret", timeout=-1)
    assert "sk-very-secret" not in str(caught.value)


def test_configs_are_frozen() -> None:
    config = ClientConfig()
    with pytest.raises(AttributeError):
        config.timeout = 3  # type: ignore[misc]


def test_open_backend_refuses_a_transport_without_what_it_needs() -> None:
    from agentfly_min import open_backend

    with pytest.raises(ConfigError, match="needs the model path"):
        open_backend(AsyncVLLMConfig())  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="needs verl's `server` client and the `tokenizer`"):
        open_backend(AsyncVerlConfig())  # type: ignore[call-overload]
