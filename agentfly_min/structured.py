"""Structured output: a ``response_format`` from a msgspec type, and the
model's answer decoded back into it.

The schema is msgspec's own (:func:`msgspec.json.schema`), with the root
type inlined: OpenAI wants an object at the root, not a ``$ref``. vLLM
(in process, over HTTP and under verl) constrains its sampling to the
schema; a hosted API does what it promises for ``strict`` schemas.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .errors import StructuredOutputError
from .records import Completion

__all__ = ["json_schema_format", "decode_output"]

T = TypeVar("T")

_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _strict(schema: Any) -> None:
    # OpenAI's strict mode: every object closed, every property required.
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            missing = sorted(set(schema["properties"]) - set(schema.get("required", ())))
            if missing:
                title = schema.get("title", "an object")
                raise ValueError(
                    f"strict schemas need every field required; {title} has defaults for {', '.join(missing)}"
                )
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)


def json_schema_format(type_: Any, *, name: str | None = None, strict: bool = False) -> dict[str, Any]:
    """The ``response_format`` asking for JSON of ``type_`` (a msgspec
    Struct, a dataclass, a TypedDict, ...): pass it as
    ``Request(response_format=...)``. ``strict`` asks OpenAI's models to
    follow the schema exactly, which needs every field required (a field
    with a default raises ``ValueError`` here, not at the server)."""
    schema: dict[str, Any] = msgspec.json.schema(type_)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        defs = dict(schema.get("$defs", {}))
        root = dict(defs[ref.removeprefix("#/$defs/")])
        schema = {**root, "$defs": defs} if len(defs) > 1 or _refers(root) else root
    if strict:
        _strict(schema)
    title = name or str(schema.get("title") or getattr(type_, "__name__", "output"))
    inner: dict[str, Any] = {"name": _NAME.sub("_", title)[:64] or "output", "schema": schema}
    if strict:
        inner["strict"] = True
    return {"type": "json_schema", "json_schema": inner}


def _refers(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "$ref" in schema or any(_refers(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_refers(v) for v in schema)
    return False


def decode_output(answer: Completion | str, type_: type[T]) -> T:
    """Decode a model's JSON answer (a completion's first output, or its
    text) into ``type_``. What does not decode, or does not fit the type,
    raises :class:`StructuredOutputError` with the reason and the start of
    the text: model output is never trusted to match, even when sampling
    was constrained (a ``length`` finish cuts the JSON short)."""
    text = answer if isinstance(answer, str) else (answer.outputs[0].text if answer.outputs else "")
    try:
        return msgspec.json.decode(text, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        cut = "" if isinstance(answer, str) or not answer.outputs else f" (finish reason {answer.outputs[0].finish_reason})"
        raise StructuredOutputError(f"the answer is not a {getattr(type_, '__name__', type_)}{cut}: {exc}; text starts {text[:200]!r}") from None
