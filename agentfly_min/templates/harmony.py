"""gpt-oss's harmony format, through OpenAI's ``openai-harmony`` package.

Harmony puts a turn's parts on channels: ``analysis`` (the reasoning),
``commentary`` (tool calls, addressed ``to=functions.<name>``, and
preambles) and ``final`` (the answer). ``openai-harmony`` renders
conversations to tokens and parses sampled tokens back into messages; this
template uses it for both, so nothing here re-implements the format. The
tokenizer a gpt-oss episode takes is the package's encoding
(:func:`encoding`).

Our messages map onto harmony's: a system message becomes the developer
instructions, the tools the developer's function tools, an assistant's
content a ``final`` message (its reasoning an ``analysis`` one, its calls
``commentary`` ones), a tool result a message from ``functions.<name>``.
Between turns the splice is the tool results as harmony renders them and
the next ``<|start|>assistant``; the sampled ``<|call|>`` stays as sampled.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..records import Message, ToolSchema
from .base import MalformedToolCall, ParsedCall, ParsedTurn, Template, Turn
from .hermes import MAX_CALLS, too_deep

__all__ = ["TEMPLATE", "encoding", "gpt_oss_template", "harmony_conversation", "today"]

_FUNCTIONS = "functions."
# A harmony marker such as <|channel|>: the text is encoded between them, in
# pieces, because BPE over one long run without a split (a wall of quotes or
# backslashes) is quadratic in its length: 64 KB took 2.3 s in one piece.
_MARKER = re.compile(r"<\|[^|<>]{1,32}\|>")
_PIECE = 1024
_ENDS = frozenset(("<|end|>", "<|call|>", "<|return|>"))
# A header is a channel, a recipient and a content type: a few dozen
# characters. harmony's parser waits for a header's end token by token at
# about 30 us a token, so a turn with no header end, or a header longer than
# any real one, is not given to it.
_HEADER_LIMIT = 1024


def _readable(text: str) -> bool:
    """Whether harmony's parser can read a message in ``text``: it has a
    ``<|message|>`` and every header before one is short."""
    header_at: int | None = 0
    found = False
    for marker in _MARKER.finditer(text):
        name = marker.group()
        if name == "<|message|>" and header_at is not None:
            if marker.start() - header_at > _HEADER_LIMIT:
                return False
            header_at, found = None, True
        elif name in _ENDS:
            header_at = marker.end()
    return found


@functools.cache
def _marker_ids(marker: str) -> tuple[int, ...]:
    return tuple(encoding().encode(marker, allowed_special="all"))


def _encode(text: str) -> list[int]:
    """``text``'s ids, linear in its length: markers as the special tokens
    they name, the text between them encoded a piece at a time. The ids may
    split the text differently from one encoding of the whole, but they
    decode to the same text, which is all the parser reads."""
    enc = encoding()
    ids: list[int] = []
    at = 0
    for marker in _MARKER.finditer(text):
        _encode_text(enc, text, at, marker.start(), ids)
        ids.extend(_marker_ids(marker.group()))
        at = marker.end()
    _encode_text(enc, text, at, len(text), ids)
    return ids


def _encode_text(enc: Any, text: str, start: int, stop: int, ids: list[int]) -> None:
    for at in range(start, stop, _PIECE):
        # Plain text (the markers are split out): checking it for special
        # tokens again would cost a regex build a call.
        ids.extend(enc.encode(text[at : min(at + _PIECE, stop)], allowed_special=frozenset(), disallowed_special=()))


@functools.cache
def encoding() -> Any:
    """The gpt-oss harmony encoding (o200k_harmony)."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def _harmony_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's parameters for harmony's renderer. gpt-oss's template writes
    an object parameter without properties as ``object``; harmony writes
    ``{\n    }`` (and its description twice) unless its type is a list."""
    properties = parameters.get("properties")
    if not isinstance(properties, Mapping):
        return dict(parameters)
    fixed = {
        name: {**spec, "type": ["object"]}
        if isinstance(spec, Mapping) and spec.get("type") == "object" and not spec.get("properties")
        else spec
        for name, spec in properties.items()
    }
    return {**parameters, "properties": fixed}


def today() -> str:
    """Today's date as gpt-oss's template writes it (``strftime_now("%Y-%m-%d")``)."""
    return datetime.date.today().isoformat()


def harmony_conversation(messages: Sequence[Message], tools: Sequence[ToolSchema], *, date: str | None = None) -> Any:
    """Our conversation as a harmony ``Conversation``; ``date`` is the
    system message's ``Current date:`` (gpt-oss's template writes the day
    it renders on; None: today)."""
    from openai_harmony import (
        Author,
        Conversation,
        DeveloperContent,
        Role,
        SystemContent,
        ToolDescription,
    )
    from openai_harmony import Message as HarmonyMessage

    instructions = "\n\n".join(m.text for m in messages if m.role in ("system", "developer"))
    system = SystemContent.new().with_conversation_start_date(date if date is not None else today())
    out = [HarmonyMessage.from_role_and_content(Role.SYSTEM, system)]
    developer = DeveloperContent.new()
    if instructions:
        developer = developer.with_instructions(instructions)
    if tools:
        developer = developer.with_function_tools(
            [ToolDescription.new(t.function.name, t.function.description, parameters=_harmony_parameters(t.function.parameters)) for t in tools]
        )
    if instructions or tools:
        out.append(HarmonyMessage.from_role_and_content(Role.DEVELOPER, developer))
    names: dict[str, str] = {}
    for message in messages:
        if message.role == "user":
            out.append(HarmonyMessage.from_role_and_content(Role.USER, message.text))
        elif message.role == "assistant":
            if message.reasoning_content:
                out.append(HarmonyMessage.from_role_and_content(Role.ASSISTANT, message.reasoning_content).with_channel("analysis"))
            for call in message.calls:
                names[call.id] = call.function.name
                out.append(
                    HarmonyMessage.from_role_and_content(Role.ASSISTANT, call.function.arguments)
                    .with_channel("commentary")
                    .with_recipient(_FUNCTIONS + call.function.name)
                    .with_content_type("<|constrain|>json")
                )
            if message.text or not message.calls:
                out.append(HarmonyMessage.from_role_and_content(Role.ASSISTANT, message.text).with_channel("final"))
        elif message.role == "tool":
            name = names.get(message.tool_call_id or "", message.name or "tool")
            author = Author.new(Role.TOOL, _FUNCTIONS + name)
            out.append(HarmonyMessage.from_author_and_content(author, message.text).with_channel("commentary").with_recipient("assistant"))
    return Conversation.from_messages(out)




def _between(tokenizer: Any, turn: Turn) -> list[int]:
    from openai_harmony import Author, Role
    from openai_harmony import Message as HarmonyMessage

    stops = set(tokenizer.stop_tokens_for_assistant_actions())
    ids: list[int] = [] if turn.sampled and turn.sampled[-1] in stops else list(tokenizer.encode("<|end|>", allowed_special="all"))
    names = {call.id: call.function.name for message in turn.history if message.role == "assistant" for call in message.calls}
    for result in turn.results:
        author = Author.new(Role.TOOL, _FUNCTIONS + names.get(result.tool_call_id or "", result.name or "tool"))
        message = HarmonyMessage.from_author_and_content(author, result.text).with_channel("commentary").with_recipient("assistant")
        ids.extend(tokenizer.render(message))
    ids.extend(tokenizer.encode("<|start|>assistant", allowed_special="all"))
    return ids


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    text: str = tokenizer.decode(list(ids))
    return text


def parse(text: str) -> ParsedTurn:
    """The turn's channels: ``analysis`` is reasoning, ``commentary`` to
    ``functions.<name>`` a call (its message the arguments, kept as
    written), ``final`` (or commentary to no one) the content. A turn
    harmony cannot parse is content, with a malformed call if it was
    addressing a tool. Never raises."""
    from openai_harmony import Role

    enc = encoding()
    try:
        if not _readable(text):
            raise ValueError("no message header harmony can read")
        messages = enc.parse_messages_from_completion_tokens(_encode(text), Role.ASSISTANT)
    except Exception as exc:  # noqa: BLE001 - the parser is third-party code reading hostile tokens
        if _FUNCTIONS in text:
            return ParsedTurn(content="", calls=(MalformedToolCall(raw=text, reason=f"unreadable harmony message ({exc})"),))
        return ParsedTurn(content=text.strip())
    reasoning: list[str] = []
    content: list[str] = []
    calls: list[ParsedCall | MalformedToolCall] = []
    for message in messages:
        body = "".join(getattr(part, "text", "") for part in message.content)
        recipient = message.recipient or ""
        if message.channel == "analysis":
            reasoning.append(body)
        elif recipient.startswith(_FUNCTIONS) and len(calls) <= MAX_CALLS:
            calls.append(_call(recipient[len(_FUNCTIONS) :], body))
        else:
            content.append(body)
    return ParsedTurn(content="".join(content).strip(), calls=tuple(calls), reasoning="\n".join(reasoning) or None)


def _call(name: str, arguments: str) -> ParsedCall | MalformedToolCall:
    if too_deep(arguments):
        return MalformedToolCall(raw=arguments, reason="JSON nested deeper than the limit")
    try:
        value = json.loads(arguments or "{}")
    except ValueError as exc:
        return MalformedToolCall(raw=arguments, reason=f"the arguments are not valid JSON ({exc})")
    if not isinstance(value, dict):
        return MalformedToolCall(raw=arguments, reason="the arguments must be a JSON object")
    return ParsedCall(name=name, arguments=arguments.strip() or "{}")


def _check(tokenizer: Any) -> None:
    if not hasattr(tokenizer, "render_conversation_for_completion"):
        raise ValueError(f"the gpt-oss template needs openai-harmony's encoding (templates.harmony.encoding()), not a {type(tokenizer).__name__}")


def gpt_oss_template(date_string: str | None = None) -> Template:
    """The gpt-oss template; ``date_string`` (``YYYY-MM-DD``) is the system
    message's current date, None: the day of each render, as the upstream
    template writes it."""

    def prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[ToolSchema]) -> list[int]:
        from openai_harmony import Role

        conversation = harmony_conversation(messages, tools, date=date_string)
        ids: list[int] = list(tokenizer.render_conversation_for_completion(conversation, Role.ASSISTANT))
        return ids

    return Template(
        name="gpt-oss",
        tool_format="harmony (commentary to=functions.<name>)",
        reasoning="harmony analysis channel",
        prompt_ids=prompt_ids,
        between_ids=_between,
        parse=parse,
        check=_check,
        decode=_decode,
        with_options=_with_options,
    )


def _with_options(options: Mapping[str, Any]) -> Template:
    date = options.get("date_string")
    if set(options) - {"date_string"} or not isinstance(date, str):
        raise ConfigError("template options", f"gpt-oss takes date_string (YYYY-MM-DD); got {dict(options)!r}")
    return gpt_oss_template(date)


TEMPLATE = gpt_oss_template()
