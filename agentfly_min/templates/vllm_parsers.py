"""vLLM's own tool-call and reasoning parsers, behind a template.

vLLM keeps a registry of several dozen tool-call parsers (``hermes``,
``llama3_json``, ``mistral``, ``qwen3_coder``, ``openai``...) and reasoning
parsers (``qwen3``, ``deepseek_r1``, ...). :func:`with_vllm_parsers` makes a
template that renders and splices like ``template`` but reads sampled turns
with the named vLLM parsers, so a format we do not parse ourselves is read
by the code vLLM maintains for it. Needs vLLM.

A vLLM parser is built for one tokenizer; the template it makes is too.
vLLM's parsers may raise on odd input: anything they raise becomes a
malformed call, so the promise (parsing never raises) holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..records import ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template

__all__ = ["with_vllm_parsers", "vllm_tool_parsers", "vllm_reasoning_parsers"]


def vllm_tool_parsers() -> list[str]:
    from vllm.tool_parsers import ToolParserManager

    return sorted(ToolParserManager.list_registered())


def vllm_reasoning_parsers() -> list[str]:
    from vllm.reasoning import ReasoningParserManager

    return sorted(ReasoningParserManager.list_registered())


def with_vllm_parsers(
    template: Template,
    tokenizer: Any,
    *,
    tool_parser: str | None = None,
    reasoning_parser: str | None = None,
    tools: Sequence[ToolSchema] = (),
    name: str | None = None,
) -> Template:
    """``template`` reading turns with vLLM's ``tool_parser`` and/or
    ``reasoning_parser`` (names from :func:`vllm_tool_parsers` /
    :func:`vllm_reasoning_parsers`), for ``tokenizer``. Register the result
    (:func:`register_template`) to name it in an ``Agent``."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    request = ChatCompletionRequest(
        model="agentfly", messages=[{"role": "user", "content": ""}], tools=msgspec.to_builtins(tools) or None, seed=None
    )
    tool = ToolParserManager.get_tool_parser(tool_parser)(tokenizer) if tool_parser else None
    reasoning = ReasoningParserManager.get_reasoning_parser(reasoning_parser)(tokenizer) if reasoning_parser else None

    def parse(text: str) -> ParsedTurn:
        thought: str | None = None
        rest = text
        if reasoning is not None:
            try:
                thought, content = reasoning.extract_reasoning(text, request)
            except Exception as exc:  # noqa: BLE001 - vLLM's parsers are third-party code reading hostile text
                return ParsedTurn(content=text, calls=(MalformedToolCall(raw=text, reason=f"unreadable reasoning ({exc})"),))
            rest = content or ""
        if tool is None:
            base = template.parse(rest)
            return ParsedTurn(content=base.content, calls=base.calls, reasoning=thought if reasoning else base.reasoning)
        try:
            info = tool.extract_tool_calls(rest, request)
        except Exception as exc:  # noqa: BLE001 - as above
            return ParsedTurn(content=rest, calls=(MalformedToolCall(raw=rest, reason=f"unreadable tool call ({exc})"),), reasoning=thought)
        calls: list[ParsedCall | MalformedToolCall] = [
            ParsedCall(name=call.function.name, arguments=call.function.arguments or "{}") for call in info.tool_calls
        ]
        return ParsedTurn(content=(info.content or "").strip() if info.tools_called else rest.strip(), calls=tuple(calls), reasoning=thought)

    parsers = " + ".join(p for p in (tool_parser and f"vLLM tool parser {tool_parser}", reasoning_parser and f"vLLM reasoning parser {reasoning_parser}") if p)
    return Template(
        name=name or f"{template.name}+{tool_parser or ''}+{reasoning_parser or ''}",
        tool_format=f"vLLM {tool_parser}" if tool_parser else template.tool_format,
        reasoning=f"vLLM {reasoning_parser}" if reasoning_parser else template.reasoning,
        prompt_ids=template.prompt_ids,
        between_ids=template.between_ids,
        parse=parse,
        check=template.check,
        render=template.render,
    ) if parsers else template
