"""What the token-level transports add to a completion: the prompt's ids."""

from __future__ import annotations

import msgspec

from ..records import Completion, Request

__all__ = ["with_prompt"]


def with_prompt(completion: Completion, request: Request, prompt: list[int]) -> Completion:
    """``completion`` (built without ``prompt_ids``, not yet handed on) with
    the prompt's ids: the request's own tuple when it carried them, which was
    checked when the request was built, so a growing context is not copied
    and checked again on every turn; else the ``prompt`` rendered from its
    messages, which the record checks (it is the tokenizer's output)."""
    if request.prompt_ids is not None:
        msgspec.structs.force_setattr(completion, "prompt_ids", request.prompt_ids)
        return completion
    return msgspec.structs.replace(completion, prompt_ids=tuple(prompt))
