"""The Qwen3 chat format: ChatML, Hermes tool calls, ``<think>`` reasoning.

As Qwen3's own template writes it: tools in the system block (no default
system text), ``<tool_call>`` blocks after the content, tool results as a
user turn of ``<tool_response>`` blocks, and the assistant's reasoning in a
``<think>…</think>`` block before its content. Two rules of that template
matter to training:

- it keeps the reasoning only of the assistant turns after the last user
  query, and writes an earlier turn without it; and
- with thinking off it puts an empty ``<think>\\n\\n</think>\\n\\n`` in the
  generation prompt, which a re-render of the history leaves out.

So a re-render is not what the model saw. The agent loop never re-renders:
the trajectory holds the sampled ids, with only the tool results and the
next generation prompt spliced in (:func:`between`), so one rollout stays
one sample, token for token, in both modes. :func:`render` equals Qwen3's
upstream template (``templates/upstream/qwen3.jinja``) on the tests' corpus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..errors import ConfigError
from ..records import Message, ToolSchema
from .base import ParsedTurn, Template, Turn, split_reasoning
from .hermes import parse_tool_calls
from .qwen25 import IM_END, IM_START, _tojson, encode, render_tool_results, single_token, tool_call_json

__all__ = ["render", "between", "parse", "THINKING", "NO_THINKING", "EMPTY_THINK"]

EMPTY_THINK = "<think>\n\n</think>\n\n"
_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
_SYSTEM = ("system", "developer")


def generation_prompt(enable_thinking: bool) -> str:
    return f"{IM_START}assistant\n" + ("" if enable_thinking else EMPTY_THINK)


def _system(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> str:
    first = messages[0] if messages else None
    system = first.text if first is not None and first.role in _SYSTEM else None
    if tools:
        text = f"{IM_START}system\n" + (f"{system}\n\n" if system is not None else "") + _TOOLS_HEADER
        for tool in tools:
            text += "\n" + _tojson(msgspec.to_builtins(tool))
        return text + _TOOLS_FOOTER + f"{IM_END}\n"
    return f"{IM_START}system\n{system}{IM_END}\n" if system is not None else ""


def _is_query(message: Message) -> bool:
    text = message.text
    return message.role == "user" and not (text.startswith("<tool_response>") and text.endswith("</tool_response>"))


def _upstream_split(content: str) -> tuple[str, str]:
    """The template's own reading of a turn with ``</think>`` in its content:
    reasoning before the first ``</think>`` (after its last ``<think>``),
    content after the last one."""
    head = content.split("</think>")[0].rstrip("\n")
    return head.split("<think>")[-1].lstrip("\n"), content.split("</think>")[-1].lstrip("\n")


def _assistant(message: Message, keep_reasoning: bool, last: bool) -> str:
    content = message.text
    reasoning = message.reasoning_content
    if reasoning is None and "</think>" in content:
        reasoning, content = _upstream_split(content)
    reasoning = reasoning or ""
    if keep_reasoning and (last or reasoning):
        text = f"{IM_START}assistant\n<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
    else:
        text = f"{IM_START}assistant\n{content}"
    for k, call in enumerate(message.calls):
        if k > 0 or content:
            text += "\n"
        text += "<tool_call>\n" + tool_call_json(call) + "\n</tool_call>"
    return text + f"{IM_END}\n"


def render(
    messages: Sequence[Message],
    tools: Sequence[ToolSchema] = (),
    *,
    enable_thinking: bool = True,
    add_generation_prompt: bool = True,
) -> str:
    """A conversation as Qwen3's template writes it."""
    last_query = next((i for i in range(len(messages) - 1, -1, -1) if _is_query(messages[i])), len(messages) - 1)
    parts = [_system(messages, tools)]
    pending: list[Message] = []
    for index, message in enumerate(messages):
        if message.role == "tool":
            pending.append(message)
            continue
        if pending:
            parts.append(render_tool_results(pending))
            pending = []
        if message.role in _SYSTEM and index == 0:
            continue
        if message.role == "assistant":
            parts.append(_assistant(message, keep_reasoning=index > last_query, last=index == len(messages) - 1))
        else:
            role = "system" if message.role == "developer" else message.role
            parts.append(f"{IM_START}{role}\n{message.text}{IM_END}\n")
    if pending:
        parts.append(render_tool_results(pending))
    if add_generation_prompt:
        parts.append(generation_prompt(enable_thinking))
    return "".join(parts)


def between(tokenizer: Any, turn: Turn, *, enable_thinking: bool = True) -> list[int]:
    """The end of the sampled turn (if not sampled), the tool results, the
    next generation prompt (with the empty think block when thinking is off)."""
    ended = bool(turn.sampled) and turn.sampled[-1] == single_token(tokenizer, IM_END, "Qwen3")
    text = ("" if ended else IM_END) + "\n" + render_tool_results(turn.results) + generation_prompt(enable_thinking)
    return encode(tokenizer, text)


def parse(text: str) -> ParsedTurn:
    """Reasoning from the ``<think>`` block (its opening tag may have been in
    the prompt), tool calls from the rest only: a call written while thinking
    is not a call."""
    reasoning, rest = split_reasoning(text)
    parsed = parse_tool_calls(rest)
    return ParsedTurn(content=parsed.content, calls=parsed.calls, reasoning=reasoning)


def _check(tokenizer: Any) -> None:
    for token in (IM_END, "<think>", "</think>"):
        single_token(tokenizer, token, "Qwen3")


def _template(name: str, enable_thinking: bool) -> Template:
    def prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
        return encode(tokenizer, render(messages, tools, enable_thinking=enable_thinking))

    def between_ids(tokenizer: Any, turn: Turn) -> list[int]:
        return between(tokenizer, turn, enable_thinking=enable_thinking)

    def full(messages: Sequence[Message], tools: Sequence[ToolSchema]) -> str:
        return render(messages, tools, enable_thinking=enable_thinking)

    return Template(
        name=name,
        tool_format="hermes (<tool_call> JSON)",
        reasoning="<think> block" + ("" if enable_thinking else " (off: an empty one in the generation prompt)"),
        prompt_ids=prompt_ids,
        between_ids=between_ids,
        parse=parse,
        check=_check,
        render=full,
        with_options=_with_options,
    )


def _with_options(options: Mapping[str, Any]) -> Template:
    unknown = sorted(set(options) - {"enable_thinking"})
    thinking = options.get("enable_thinking", True)
    if unknown or not isinstance(thinking, bool):
        raise ConfigError(
            "template options",
            f"qwen3 takes enable_thinking (true or false); got {dict(options)!r}. "
            "template hf passes any option to the model's own chat template",
        )
    return THINKING if thinking else NO_THINKING


THINKING = _template("qwen3", enable_thinking=True)
NO_THINKING = _template("qwen3-nothink", enable_thinking=False)
