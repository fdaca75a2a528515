"""The ``tool`` decorator: a typed function becomes a :class:`Tool`."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeAlias, overload

import docstring_parser
import msgspec
from msgspec import Meta

from .._text import scrub, scrub_all
from .._user_code import run_in_daemon_thread
from .._validation import require_positive
from ..errors import ConfigError
from ..records import FunctionSchema, ToolSchema

__all__ = ["Tool", "ToolError", "tool", "ToolFunction"]

ToolFunction: TypeAlias = Callable[..., Any]


class ToolError(Exception):
    """Raise from a tool to hand the model a plain error message."""


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    """A tool the model may call.

    ``schema`` is what the model is shown; ``arguments`` is the struct type
    that the model's JSON arguments are decoded into (and validated by).
    ``timeout`` bounds one call, in seconds. A sync tool runs in a worker
    thread unless ``blocking`` is False (declared cheap: it runs inline, on
    the event loop, which saves a thread hop per call).
    """

    name: str
    description: str
    schema: ToolSchema
    function: ToolFunction
    arguments: type[msgspec.Struct]
    is_async: bool
    timeout: float = 30.0
    blocking: bool = True

    async def call(self, arguments_json: str) -> str:
        """Validate the model's arguments and run the tool; raise
        :class:`msgspec.ValidationError` / :class:`msgspec.DecodeError` for bad
        arguments and whatever the tool raises. Results that are not strings
        are written as JSON; lone surrogates in a result become U+FFFD."""
        decoded = msgspec.json.decode(arguments_json or "{}", type=self.arguments)
        kwargs = msgspec.structs.asdict(decoded)
        if self.is_async:
            result = await self.function(**kwargs)
        elif not self.blocking:
            result = self.function(**kwargs)
        else:
            # A sync tool runs in a thread, so a slow one does not stall the
            # event loop; if it overruns its timeout the thread is left to
            # finish on its own (threads cannot be killed), as a daemon that
            # does not hold the interpreter at exit.
            result = await run_in_daemon_thread(lambda: self.function(**kwargs), name=f"agentfly_min tool {self.name}")
        # A result holding lone surrogates (a file name that is not UTF-8)
        # could be neither tokenised nor written: they become U+FFFD.
        if isinstance(result, str):
            return scrub(result)
        try:
            return msgspec.json.encode(result).decode()
        except UnicodeEncodeError:
            return msgspec.json.encode(scrub_all(msgspec.to_builtins(result))).decode()


def _schema(name: str, fields: list[tuple[str, Any, Any]]) -> tuple[type[msgspec.Struct], dict[str, Any]]:
    struct = msgspec.defstruct(
        f"{name}_arguments", fields, kw_only=True, forbid_unknown_fields=True, frozen=True
    )
    schema = msgspec.json.schema(struct)
    defs: dict[str, Any] = schema.pop("$defs", {})
    ref = schema["$ref"].rsplit("/", 1)[1]
    body: dict[str, Any] = defs.pop(ref)
    body.pop("title", None)
    body.setdefault("required", [])
    if defs:
        body["$defs"] = defs
    return struct, body


def _build(function: ToolFunction, name: str | None, timeout: float, blocking: bool) -> Tool:
    if not (inspect.isfunction(function) or inspect.ismethod(function)):
        shown = name or type(function).__name__
        raise ConfigError(
            f"tool {shown}",
            f"@tool takes a function or method, not a {type(function).__name__} "
            "(its signature and docstring are what the model reads; wrap it in a def)",
        )
    tool_name = name or function.__name__
    doc = docstring_parser.parse(inspect.getdoc(function) or "")
    description = " ".join(part for part in (doc.short_description, doc.long_description) if part).strip()
    if not description:
        raise ConfigError(f"tool {tool_name}", "needs a docstring: it is the description the model reads")
    param_docs = {p.arg_name: (p.description or "").strip() for p in doc.params}
    hints = typing.get_type_hints(function, include_extras=True)
    signature = inspect.signature(function).parameters
    unknown = sorted(set(param_docs) - set(signature))
    if unknown:
        raise ConfigError(
            f"tool {tool_name}", f"the docstring's Args describe {', '.join(unknown)}, which the function does not take"
        )
    fields: list[tuple[str, Any, Any]] = []
    for param in signature.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {tool_name}", f"*{param.name} cannot be described to a model")
        if param.kind == param.POSITIONAL_ONLY:
            raise ConfigError(
                f"tool {tool_name}", f"parameter {param.name!r} is positional-only; the model's arguments arrive by name"
            )
        if param.name not in hints:
            raise ConfigError(f"tool {tool_name}", f"parameter {param.name!r} needs a type annotation")
        text = param_docs.get(param.name, "")
        if not text:
            raise ConfigError(
                f"tool {tool_name}", f"parameter {param.name!r} has no description in the docstring's Args section"
            )
        # Annotated built at run time: the type comes from the signature.
        annotation = Annotated.__class_getitem__((hints[param.name], Meta(description=text)))  # type: ignore[attr-defined]
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, annotation, msgspec.NODEFAULT))
        else:
            fields.append((param.name, annotation, param.default))
    arguments, parameters = _schema(tool_name, fields)
    schema = ToolSchema(function=FunctionSchema(name=tool_name, description=description, parameters=parameters))
    return Tool(
        name=tool_name,
        description=description,
        schema=schema,
        function=function,
        arguments=arguments,
        is_async=inspect.iscoroutinefunction(function),
        timeout=timeout,
        blocking=blocking,
    )


@overload
def tool(function: ToolFunction, /) -> Tool: ...
@overload
def tool(*, name: str | None = None, timeout: float = 30.0, blocking: bool = True) -> Callable[[ToolFunction], Tool]: ...
def tool(
    function: ToolFunction | None = None, /, *, name: str | None = None, timeout: float = 30.0, blocking: bool = True
) -> Tool | Callable[[ToolFunction], Tool]:
    """Make a :class:`Tool` from a typed function, sync or async.

    The description comes from the docstring, each parameter's description
    from its ``Args:`` entry (Google, NumPy or reST style), and the JSON
    Schema from the signature, ``Annotated[..., msgspec.Meta(...)]``
    constraints included. Missing descriptions are an error here, at
    decoration time. Use as ``@tool`` or ``@tool(name=..., timeout=...)``.

    A sync function runs in a worker thread, so a slow one cannot stall the
    event loop; ``@tool(blocking=False)`` declares it cheap (a lookup, a
    small computation) and runs it inline, without the thread hop. (Its
    ``timeout`` then cannot interrupt it: only a function that returns
    quickly should say so.)
    """
    require_positive("tool.timeout", timeout)
    if function is not None:
        return _build(function, name, timeout, blocking)
    return lambda f: _build(f, name, timeout, blocking)

