"""The three backend configs, validated when they are built.

Each is a frozen msgspec struct. Building one with an out-of-range value, or
decoding one (:func:`decode_config`) with an unknown or mistyped field, raises
:class:`~agentfly_min.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar

import msgspec
from msgspec import Meta

from ._validation import HeaderName, Headers, check_fields
from .errors import ConfigError

__all__ = [
    "Secret",
    "EngineArg",
    "AsyncVLLMConfig",
    "AsyncVerlConfig",
    "ClientConfig",
    "BackendConfig",
    "decode_config",
    "encode_config",
]

_MASK = "**********"


class Secret:
    """A secret (an API key) that does not show itself.

    Not a ``str``: every generic path shows a mask or refuses. ``str``,
    ``repr``, formatting and logging print ``**********``; ``json.dumps``
    (after ``msgspec.structs.asdict``, as experiment trackers do),
    ``msgspec.to_builtins`` and plain ``msgspec`` encoding refuse it;
    concatenation and ``.encode()`` fail; ``yaml.dump`` refuses it.
    :meth:`reveal` returns the key, for the one place that sends it.
    Pickling (protocol 3 or later) keeps the real key, because Ray ships
    configs to its workers that way: treat pickles as secret.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))

    def __reduce_ex__(self, protocol: object) -> tuple[type[Secret], tuple[str]]:
        # pickle (Ray's cloudpickle, copy) asks with protocol 3 or later;
        # yaml.dump's object representer asks with protocol 2 and would print
        # the key in clear: it is refused, as json.dumps refuses it.
        if not isinstance(protocol, int) or protocol < 3:
            raise TypeError("a Secret is not serialised (yaml.dump, pickle protocol 2): reveal() it deliberately")
        return self.__reduce__()


_Parallel = Annotated[int, Meta(ge=1)]
_Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
_TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
_PositiveInt = Annotated[int, Meta(ge=1)]
_PositiveFloat = Annotated[float, Meta(gt=0.0)]

EngineArg: TypeAlias = (
    str | int | float | bool | None | list[str | int | float] | dict[str, str | int | float | bool | None]
)
"""A value passed through to ``vllm.AsyncEngineArgs`` unchanged."""


# Named fields of AsyncVLLMConfig under another name in vLLM's AsyncEngineArgs.
_VLLM_NAMES = {"disable_log_stats": "log_stats"}


class AsyncVLLMConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An in-process vLLM async engine.

    The named fields are the engine arguments people set most; any other
    ``AsyncEngineArgs`` field goes in ``engine_args`` and is checked against
    vLLM's own list when the engine is built (a misspelt name is an error,
    never silently dropped). A key may not repeat a named field.

    ``log_stats`` is off by default, as in verl's rollout servers: vLLM's
    stat loggers (Prometheus metrics and a throughput line every 10 s) run
    on the engine's event loop for every step of every request, and cost
    about 0.9 ms of CPU per 32-token answer here (on two cores, where that
    loop competes with the model, 2,712 tokens/s with them against 3,500).
    """

    pipeline_parallel_size: _Parallel = 1
    tensor_parallel_size: _Parallel = 1
    data_parallel_size: _Parallel = 1
    gpu_memory_utilization: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.9
    max_model_len: Annotated[int, Meta(ge=16)] | None = None
    max_num_seqs: _PositiveInt | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool = False
    seed: int = 0
    kv_cache_memory_bytes: _PositiveInt | None = None
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool = False
    log_stats: bool = False
    engine_args: dict[str, EngineArg] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        # vLLM's name for a named field that we spell otherwise counts too.
        clash = sorted(set(self.engine_args) & (set(self.__struct_fields__) | set(_VLLM_NAMES)))
        if clash:
            named = [f"{key} (the named field {_VLLM_NAMES[key]})" if key in _VLLM_NAMES else key for key in clash]
            raise ConfigError(
                "AsyncVLLMConfig.engine_args",
                f"{', '.join(named)} {'is a named field' if len(clash) == 1 else 'are named fields'}"
                "; set it directly, not through engine_args",
            )


class AsyncVerlConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rollouts through verl's rollout servers (``LLMServerClient``).

    The sampling fields are the defaults for requests that leave them unset.
    ``on_abort`` says what to do when verl aborts a request (it does while it
    loads new weights): ``"resume"`` sends the prompt plus the tokens sampled
    so far and continues, ``"retry"`` discards them and starts again,
    ``"error"`` raises :class:`~agentfly_min.errors.TransientError`. At most
    ``max_aborts`` aborts are absorbed per request; before the k-th resend the
    transport waits ``min(abort_backoff_max, abort_backoff * 2**(k-1))``
    seconds, less up to a quarter of jitter (weights take seconds to load).

    ``max_model_len`` is the server's context (verl's
    ``rollout.max_model_len``): verl's vLLM server clamps ``max_tokens`` to
    the context left and reports such a cut as ``"completed"``, like a stop,
    so an answer that fills the context without ending on the end-of-turn
    token is read as ``"length"`` only when the transport knows it.
    """

    temperature: _Temperature = 1.0
    top_p: _TopP = 1.0
    top_k: Annotated[int, Meta(ge=-1)] = -1
    max_new_tokens: _PositiveInt = 512
    logprobs: bool = True
    on_abort: Literal["resume", "retry", "error"] = "resume"
    max_aborts: Annotated[int, Meta(ge=0)] = 16
    abort_backoff: Annotated[float, Meta(ge=0.0)] = 0.25
    abort_backoff_max: Annotated[float, Meta(ge=0.0)] = 4.0
    max_model_len: _PositiveInt | None = None

    def __post_init__(self) -> None:
        check_fields(self)


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An OpenAI-compatible chat-completions endpoint.

    ``api_key`` may be given as a ``str`` or a :class:`Secret` and is always
    kept as a :class:`Secret` (a TOML or JSON string is read into one);
    unset, ``$OPENAI_API_KEY`` is read when the client is opened. ``model`` defaults to the server's model
    when it lists exactly one. ``timeout`` is per attempt, in seconds;
    ``max_retries`` counts retries after the first attempt. Rate limits are
    held over every window (GCRA): ``rate_limit_burst`` requests may go back
    to back, after which they are spaced ``60 / max_requests_per_minute``
    seconds apart. ``max_retry_after`` caps how long a server's
    ``Retry-After`` is obeyed; a longer one ends the retries.

    ``token_ids``: a request that carries ``prompt_ids`` (the agent loop's,
    with a tokenizer) goes to ``/v1/completions`` with the ids as the prompt,
    and the sampled ids and their logprobs come back (vLLM's
    ``return_token_ids``), so trajectories over HTTP are token-exact; a
    server that cannot do it is a clear error at the first request. Off, the
    chat endpoint is used, for text-only use and non-vLLM servers.
    ``session_header`` carries the request id (a trajectory's, on every
    turn): vLLM's router keeps a session on one server by it
    (``x-session-id``); None sends none.

    What openai-python users set on their client: ``default_headers``,
    ``organization`` and ``project`` go on every call (the SDK's own
    options); ``extra_body``, ``extra_headers`` and ``extra_query`` on every
    generation request, under a request's own. ``max_tokens_field`` names the
    budget: OpenAI's reasoning models (o1, o3, o4, gpt-5) refuse
    ``max_tokens`` and take ``max_completion_tokens``; ``"auto"`` sends the
    latter to those model names and the former to everything else (vLLM
    and most providers take both). ``azure_api_version`` set, the SDK's Azure
    client is used, with ``base_url`` as the Azure endpoint and ``model`` as
    the deployment.

    ``http_library`` chooses what sends the requests: ``"aiohttp"`` (with
    msgspec; about a tenth of the SDK's CPU per request, bridged onto an
    asyncio thread under trio) or ``"openai"`` (the SDK, needed for Azure and
    a caller's own ``http_client``). ``"auto"`` takes aiohttp for plain calls
    unless one of those is set; streams always go through the SDK. Both give
    the same records and the same typed errors.
    """

    base_url: Annotated[str, Meta(pattern=r"^https?://[^\s/]+\S*$")] = "http://localhost:8000/v1"
    if TYPE_CHECKING:
        # A plain str is accepted and kept as a Secret (msgspec cannot hold a
        # str-or-custom union, so the runtime annotation is the narrower one).
        api_key: str | Secret | None = None
    else:
        api_key: Secret | None = None
    model: str | None = None
    max_requests_per_minute: _PositiveFloat | None = None
    max_tokens_per_minute: _PositiveFloat | None = None
    rate_limit_burst: _PositiveInt = 1
    timeout: _PositiveFloat = 300.0
    temperature: _Temperature = 1.0
    top_p: _TopP = 1.0
    max_new_tokens: _PositiveInt = 1024
    max_retries: Annotated[int, Meta(ge=0)] = 5
    max_retry_after: _PositiveFloat = 60.0
    max_concurrency: _PositiveInt | None = None
    token_ids: bool = False
    session_header: HeaderName | None = "x-session-id"
    default_headers: Headers | None = None
    organization: str | None = None
    project: str | None = None
    extra_body: dict[str, Any] | None = None
    extra_headers: Headers | None = None
    extra_query: dict[str, str] | None = None
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    azure_api_version: Annotated[str, Meta(min_length=1)] | None = None
    http_library: Literal["auto", "aiohttp", "openai"] = "auto"

    def __post_init__(self) -> None:
        key: object = self.api_key
        if isinstance(key, str):  # keep it out of sight all the same
            key = Secret(key)
        if isinstance(key, Secret) and key.reveal() == _MASK:
            # The mask encode_config writes is not a key: read it as unset, so
            # a decoded log line falls back to $OPENAI_API_KEY, not to "*****".
            key = None
        msgspec.structs.force_setattr(self, "api_key", key)
        check_fields(self)
        if self.http_library == "aiohttp" and self.azure_api_version is not None:
            raise ConfigError("ClientConfig.http_library", "Azure goes through the openai SDK: use \"openai\" or \"auto\"")


BackendConfig: TypeAlias = AsyncVLLMConfig | AsyncVerlConfig | ClientConfig

_C = TypeVar("_C", AsyncVLLMConfig, AsyncVerlConfig, ClientConfig)


def read_secret(kind: type, value: object) -> object:
    """msgspec's ``dec_hook`` for configs: a key written as a string is read
    into a :class:`Secret`; anything else is a validation error naming it."""
    if kind is Secret:
        if isinstance(value, str):
            return Secret(value)
        raise TypeError(f"Expected `str`, got `{type(value).__name__}`")  # msgspec makes it a ValidationError
    raise TypeError(f"Expected `{kind.__name__}`, got `{type(value).__name__}`")


def decode_config(data: bytes | str, type: type[_C], *, format: Literal["toml", "json"] = "toml") -> _C:
    """Decode a config from TOML or JSON; unknown fields, wrong types and
    out-of-range values raise :class:`ConfigError`. A key given as the mask
    that :func:`encode_config` writes reads as unset."""
    try:
        if format == "toml":
            return msgspec.toml.decode(data, type=type, dec_hook=read_secret)
        return msgspec.json.decode(data, type=type, dec_hook=read_secret)
    except msgspec.ValidationError as exc:
        raise _named(type.__name__, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(type.__name__, f"not valid {format.upper()}: {exc}") from None


_AT = re.compile(r"^(?P<reason>.*) - at `\$\.(?P<path>[^`]*)`$", re.DOTALL)


def _named(struct: str, text: str) -> ConfigError:
    """One error naming the field, whether msgspec found the problem
    ("... - at `$.timeout`") or the struct's own check did (its message
    already starts with the field's name)."""
    if text.startswith(f"{struct}."):
        field, _, reason = text.partition(": ")
        return ConfigError(field, reason)
    match = _AT.match(text)
    if match:
        return ConfigError(f"{struct}.{match['path']}", match["reason"])
    return ConfigError(struct, text)


def _mask_secret(obj: object) -> object:
    if isinstance(obj, Secret):
        return _MASK
    raise NotImplementedError(f"cannot encode {obj.__class__.__name__}")


def encode_config(config: BackendConfig) -> bytes:
    """JSON for logs and result files, with every secret masked."""
    return msgspec.json.encode(config, enc_hook=_mask_secret)
