"""Any model's own chat template (Jinja, from its tokenizer), for families
with no built-in entry.

The first prompt is the template's render. Between turns, the splice is
derived: the conversation is rendered without the new tool results and
with them (and the next generation prompt); if the first render is a prefix
of the second, the difference is what the template puts there, preceded by
whatever of the assistant turn's ending the model did not sample (the text
after its end-of-turn token, "\\n" in ChatML). A template that is not
prefix-stable (it rewrites earlier turns, as Qwen3's does with reasoning)
cannot be spliced without re-tokenising, so the episode ends with a
:class:`TemplateError` saying where, recorded on the trajectory: use the
family's built-in template, which splices without re-rendering.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..errors import AgentflyError
from ..records import Message, ToolSchema
from .base import ParsedTurn, Template, Turn, split_reasoning
from .hermes import parse_tool_calls
from .qwen25 import encode
from .chat import template_messages

__all__ = ["TEMPLATE", "TemplateError", "hf_template", "render_text"]


class TemplateError(AgentflyError, ValueError):
    """A chat template cannot be used token-exactly (it rewrites history)."""


def render_text(
    tokenizer: Any,
    messages: Sequence[Message],
    tools: Sequence[ToolSchema],
    *,
    generation_prompt: bool,
    options: Mapping[str, Any] | None = None,
) -> str:
    """The conversation through the tokenizer's own chat template;
    ``options`` are the template's own variables (``enable_thinking``...)."""

    text = tokenizer.apply_chat_template(
        template_messages(messages),
        tools=msgspec.to_builtins(tools) or None,
        add_generation_prompt=generation_prompt,
        tokenize=False,
        **(options or {}),
    )
    if not isinstance(text, str):
        raise TemplateError(f"the tokenizer's chat template rendered {type(text).__name__}, not text")
    return text


def _between(tokenizer: Any, turn: Turn, options: Mapping[str, Any]) -> list[int]:
    before = render_text(tokenizer, turn.history, turn.tools, generation_prompt=False, options=options)
    after = render_text(tokenizer, [*turn.history, *turn.results], turn.tools, generation_prompt=True, options=options)
    eos = tokenizer.eos_token or ""
    if eos and before.endswith(eos) and not after.startswith(before):
        # Some templates (Phi-3) end a render without the generation prompt
        # with the end-of-sequence token: the conversation so far is without it.
        before = before[: -len(eos)]
    if not after.startswith(before):
        at = next((k for k, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), min(len(before), len(after)))
        raise TemplateError(
            f"the chat template is not prefix-stable: adding the tool results rewrites the conversation at "
            f"character {at} ({before[at : at + 40]!r} became {after[at : at + 40]!r}); splicing would re-tokenise "
            "the history. Use the family's built-in template."
        )
    added = after[len(before) :]
    dropped = [m for m in turn.results if m.text and m.text not in added and json.dumps(m.text, ensure_ascii=False)[1:-1] not in added]
    if dropped:
        raise TemplateError(
            f"the chat template drops tool results ({len(dropped)} of {len(turn.results)} not rendered): "
            "the model would never see them. Use a template that renders the tool role"
        )
    last = turn.sampled[-1] if turn.sampled else None
    special = set(getattr(tokenizer, "all_special_ids", ()))
    marker = tokenizer.convert_ids_to_tokens(last) if last is not None and last in special else None
    if marker is not None and marker in before:  # the model sampled the template's end of turn: what follows it
        tail = before[before.rfind(marker) + len(marker) :]
    else:
        # Cut off, or ended on another of the model's stop tokens (Qwen2.5
        # stops on <|endoftext|> too): the template's end of turn as well.
        end = tokenizer.eos_token or ""
        tail = before[before.rfind(end) :] if end and end in before else ""
    return encode(tokenizer, tail + after[len(before) :])


def _parse(text: str) -> ParsedTurn:
    reasoning, rest = split_reasoning(text)
    parsed = parse_tool_calls(rest)
    return ParsedTurn(content=parsed.content, calls=parsed.calls, reasoning=reasoning)


def hf_template(options: Mapping[str, Any] | None = None) -> Template:
    """The bridge, with ``options`` passed to the chat template on every
    render (verl's ``data.apply_chat_template_kwargs``, say)."""
    bound = dict(options or {})

    def prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
        return encode(tokenizer, render_text(tokenizer, messages, tools, generation_prompt=True, options=bound))

    def between_ids(tokenizer: Any, turn: Turn) -> list[int]:
        return _between(tokenizer, turn, bound)

    return Template(
        name="hf",
        tool_format="hermes (<tool_call> JSON); name a vLLM parser for others",
        reasoning="<think> block, if the model writes one",
        prompt_ids=prompt_ids,
        between_ids=between_ids,
        parse=_parse,
        with_options=lambda more: hf_template({**bound, **more}),
    )


TEMPLATE = hf_template()
