"""The records every transport, middleware and agent speaks.

Messages, tool calls and tool schemas use the OpenAI chat wire shape, so
``msgspec.json.decode(body, type=Message)`` reads what an OpenAI-compatible
server sends and :func:`msgspec.json.encode` writes what it expects.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import Meta

from ._validation import Headers, check_fields
from .errors import ConfigError

__all__ = [
    "Role",
    "TextPart",
    "ImageURL",
    "ImagePart",
    "ContentPart",
    "FunctionCall",
    "ToolCall",
    "Message",
    "FunctionSchema",
    "ToolSchema",
    "NamedToolChoice",
    "ToolChoice",
    "Request",
    "Output",
    "Usage",
    "Completion",
    "Generate",
    "Middleware",
]

Role: TypeAlias = Literal["system", "developer", "user", "assistant", "tool"]
"""``developer`` is OpenAI's newer name for ``system``; templates render it as one."""

_PositiveInt = Annotated[int, Meta(ge=1)]
_NonNegInt = Annotated[int, Meta(ge=0)]


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True):
    """The function half of a tool call. ``arguments`` is the JSON text the
    model wrote, kept verbatim (it may not even be valid JSON)."""

    name: str
    arguments: str

    def __post_init__(self) -> None:
        check_fields(self)


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call in an assistant message, as on the wire."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def __post_init__(self) -> None:
        check_fields(self)


class TextPart(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    """A text part of a message's content, in the OpenAI shape
    (``{"type": "text", "text": ...}``)."""

    text: str


_IMAGE_URL = re.compile(r"(?:https?://\S+|data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]*)\Z")


class ImageURL(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where an image is: an ``http(s)`` URL the server fetches, or a
    ``data:image/...;base64,`` URI carrying it (what
    :func:`agentfly_min.images.image_part` makes). ``detail`` is OpenAI's
    resolution hint."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if not _IMAGE_URL.match(self.url):
            raise ConfigError(
                "ImageURL.url",
                f"an http(s) URL or a data:image/...;base64, URI, not {self.url[:60]!r} "
                "(agentfly_min.images.image_part makes one from a file, bytes or a PIL image)",
            )


class ImagePart(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="image_url"):
    """An image in a message's content, in the OpenAI shape
    (``{"type": "image_url", "image_url": {"url": ...}}``)."""

    image_url: ImageURL


ContentPart: TypeAlias = TextPart | ImagePart


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A chat message in the OpenAI shape.

    ``content`` is text, or a list of parts (text and images) as OpenAI's
    API takes it (:attr:`text` joins the text parts, :attr:`images` lists
    the images). ``reasoning_content`` is an assistant turn's
    thinking, kept apart from its content (as OpenAI-compatible servers return
    it for reasoning models). ``tool_calls`` appears on assistant messages
    (``null`` on the wire, as the OpenAI SDK dumps it, reads as none);
    ``tool_call_id`` (and optionally ``name``) on ``tool`` messages
    answering one.
    """

    role: Role
    content: str | tuple[ContentPart, ...] | None = None
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = ()
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.tool_calls is None:
            msgspec.structs.force_setattr(self, "tool_calls", ())

    @property
    def text(self) -> str:
        """The content as one string ("" for none)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The image parts, in order (none for text content)."""
        if self.content is None or isinstance(self.content, str):
            return ()
        return tuple(part for part in self.content if isinstance(part, ImagePart))

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        """The tool calls (never None)."""
        return self.tool_calls or ()


class FunctionSchema(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A function a model may call: ``parameters`` is a JSON Schema object."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None

    def __post_init__(self) -> None:
        check_fields(self)


class ToolSchema(msgspec.Struct, frozen=True, kw_only=True):
    """A tool offered to the model, as in the ``tools`` list of a request."""

    type: Literal["function"] = "function"
    function: FunctionSchema


class NamedToolChoice(msgspec.Struct, frozen=True, kw_only=True):
    """Force the model to call the named tool."""

    name: str


ToolChoice: TypeAlias = Literal["auto", "none", "required"] | NamedToolChoice


class Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One generation request.

    Sampling fields left as None take the transport config's defaults.
    ``presence_penalty`` and ``frequency_penalty`` are OpenAI's; ``top_k``,
    ``min_p`` and ``repetition_penalty`` vLLM's (sent to a server in the
    body's vLLM extensions). ``response_format`` is OpenAI's (see
    :func:`agentfly_min.structured.json_schema_format` to make one from a
    msgspec type). ``extra_body``, ``extra_headers`` and ``extra_query`` go
    to an HTTP server as they are, over the config's own.
    ``regex`` constrains the output to a regular expression (vLLM's
    structured outputs; sent to OpenAI-compatible vLLM servers as
    ``structured_outputs``), e.g. to force the shape of a tool call.
    ``prompt_ids`` lets token-level transports (vLLM, verl) skip rendering;
    text transports ignore it. ``request_id`` names the request and the
    session that keeps a trajectory on one server (verl's balancer, or an
    HTTP router through a header): 1 to 256 visible ASCII characters, so any
    header can carry it.
    """

    messages: tuple[Message, ...] = ()
    tools: tuple[ToolSchema, ...] = ()
    tool_choice: ToolChoice | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    max_new_tokens: _PositiveInt | None = None
    n: _PositiveInt = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    ignore_eos: bool = False
    logit_bias: dict[int, float] | None = None
    regex: str | None = None
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    top_k: Annotated[int, Meta(ge=-1)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] | None = None
    extra_headers: Headers | None = None
    extra_query: dict[str, str] | None = None
    prompt_ids: tuple[int, ...] | None = None
    request_id: Annotated[str, Meta(pattern=r"^[!-~]{1,256}$")] | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.messages and self.prompt_ids is None:
            raise ConfigError("Request.messages", "a request needs messages or prompt_ids")
        if self.response_format is not None:
            _check_response_format(self.response_format)
            if self.regex is not None:
                raise ConfigError("Request.response_format", "give a response_format or a regex, not both")


def _check_response_format(value: dict[str, Any]) -> None:
    kind = value.get("type")
    if kind == "json_schema":
        inner = value.get("json_schema")
        if not isinstance(inner, dict) or not isinstance(inner.get("schema"), dict) or not isinstance(inner.get("name"), str):
            raise ConfigError(
                "Request.response_format",
                'a json_schema format needs {"json_schema": {"name": str, "schema": {...}}} '
                "(agentfly_min.structured.json_schema_format makes one from a type)",
            )
    elif kind not in ("text", "json_object"):
        raise ConfigError("Request.response_format", f'type must be "text", "json_object" or "json_schema", not {kind!r}')


FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "abort", "content_filter"]


class Output(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One sample of a completion.

    ``token_ids`` and ``logprobs`` (one per token id, the sampled token's log
    probability) are set when the transport works in tokens.
    ``reasoning`` is the thinking a server parsed out of the text (its
    ``reasoning_content``), when it did. ``weight_versions`` (one per token
    id) is the policy version that sampled
    each token, where the transport knows it (verl's ``global_steps``; a
    request resumed after a weight update has tokens of two versions). It is
    None when the versions are known only as a range (a client that resumed
    the request itself, as verl's fully-async one does): then
    ``Completion.min_weight_version`` and ``weight_version`` bound them.
    """

    text: str
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    token_ids: tuple[int, ...] | None = None
    logprobs: tuple[float, ...] | None = None
    weight_versions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_fields(self)


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Tokens used; ``cached_tokens`` of the prompt came from the server's
    cache and ``reasoning_tokens`` of the completion were reasoning, where
    the server says."""

    prompt_tokens: _NonNegInt = 0
    completion_tokens: _NonNegInt = 0
    cached_tokens: _NonNegInt = 0
    reasoning_tokens: _NonNegInt = 0

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Completion(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The answer to a :class:`Request`: ``n`` outputs (at least one), usage,
    how many attempts the retry middleware needed (1 when there was no retry)
    and why each failed attempt failed (``retries``), and the seconds the
    rate limiter held the request back (``rate_limit_seconds``).

    ``prompt_ids`` are the prompt's token ids as the server saw them, when
    the transport knows them; ``weight_version`` is the newest policy version
    that sampled it (verl's ``global_steps``) and ``min_weight_version`` the
    oldest, when known (they differ when a request was resumed across a
    weight update); ``server`` names the server that answered, when it said
    (a fleet's servers do).
    """

    outputs: Annotated[tuple[Output, ...], Meta(min_length=1)]
    usage: Usage = Usage()
    attempts: _PositiveInt = 1
    retries: tuple[str, ...] = ()
    rate_limit_seconds: Annotated[float, Meta(ge=0.0)] = 0.0
    model: str = ""
    prompt_ids: tuple[int, ...] | None = None
    weight_version: int | None = None
    min_weight_version: int | None = None
    server: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)


Generate: TypeAlias = Callable[[Request], Awaitable[Completion]]
"""A transport: one request in, one completion (or a typed error) out."""

Middleware: TypeAlias = Callable[[Generate], Generate]
"""A function from transport to transport (rate limit, retry, timeout, ...)."""
