"""Rendering a request's messages with the model's own chat template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ..records import Request

__all__ = ["prompt_ids"]


def prompt_ids(tokenizer: Any, request: Request) -> list[int]:
    """The request's ``prompt_ids`` if it has them, else its messages (and
    tools) through the tokenizer's chat template, as an OpenAI server would."""
    if request.prompt_ids is not None:
        return list(request.prompt_ids)
    ids = tokenizer.apply_chat_template(
        msgspec.to_builtins(request.messages),
        tools=msgspec.to_builtins(request.tools) or None,
        add_generation_prompt=True,
        tokenize=True,
    )
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
