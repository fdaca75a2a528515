"""The chat-to-ids bridge: a request's messages rendered with the model's own
chat template (the tokenizer's), as vLLM's OpenAI server renders them:
tool-call ``arguments`` parsed into objects (the template's ``tojson``
writes them once, not as a JSON string inside JSON), text parts joined,
``developer`` as ``system``. The agent loop's renderers follow the same
rules, so the two agree token for token (``tests/test_templates.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..errors import PermanentError
from ..records import Message, Request
from .qwen25 import arguments_value

__all__ = ["IMAGES_NOT_YET", "refuse_images", "template_messages", "prompt_ids"]

# Why token-level paths refuse images: the prompt would need the model's
# processor to expand each image into its placeholder tokens, which the CPU
# stack this is tested on cannot load (docs/transports.md, "Images").
IMAGES_NOT_YET = (
    "images need the chat endpoint of an OpenAI-compatible server (ClientConfig with token_ids off); "
    "token-level prompts (the in-process vLLM and verl transports, token-id requests, a tokenizer in the "
    "agent loop) cannot carry them yet"
)


def refuse_images(messages: Sequence[Message]) -> None:
    """Raise :class:`PermanentError` if any message holds an image."""
    if any(message.images for message in messages):
        raise PermanentError(f"this request has images: {IMAGES_NOT_YET}")


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """``messages`` as the dicts a Jinja chat template expects."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": message.text}
        if message.reasoning_content is not None:
            item["reasoning_content"] = message.reasoning_content
        if message.calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": arguments_value(call.function.arguments)},
                }
                for call in message.calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            item["name"] = message.name
        out.append(item)
    return out


def prompt_ids(tokenizer: Any, request: Request) -> list[int]:
    """The request's ``prompt_ids`` if it has them, else its messages (and
    tools) through the tokenizer's chat template, as an OpenAI server would.
    Images are refused (:func:`refuse_images`), never dropped."""
    refuse_images(request.messages)
    if request.prompt_ids is not None:
        return list(request.prompt_ids)
    ids = tokenizer.apply_chat_template(
        template_messages(request.messages),
        tools=msgspec.to_builtins(request.tools) or None,
        add_generation_prompt=True,
        tokenize=True,
    )
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
