"""Does the server tokenize as the client does?

Token-id requests over HTTP send ids the client's tokenizer made, and the
server answers with ids it reads with its own. The server echoes the ids it
was sent, so comparing them tells nothing: with another tokenizer on the
client (another revision, another model), episodes finish with no error and
the model reads garbage. :func:`check_tokenizer` asks the server to
tokenize a probe text (vLLM's ``/tokenize``) and compares with the client's
tokenizer, before the first request.
"""

from __future__ import annotations

from typing import Any

import openai

from ..configs import ClientConfig
from ..errors import PermanentError, TokenizerMismatchError
from ._sdk import make_client, map_openai_error

__all__ = ["PROBE", "check_tokenizer"]

PROBE = (
    "Do we agree? Ünïcödé, 東京, naïve café; 9 × 7 = 63 and \\boxed{4}.\n\t"
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>  end'
)
"""Text with the pieces that tell tokenizers apart: accents, CJK, digits,
whitespace runs, JSON, and (appended by the check) the special tokens."""


def _root(base_url: str) -> str:
    # vLLM serves /tokenize beside /v1, not under it.
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


async def check_tokenizer(config: ClientConfig, tokenizer: Any, *, model: str | None) -> None:
    """Raise :class:`TokenizerMismatchError` if the server at
    ``config.base_url`` tokenizes the probe (plus the tokenizer's special
    tokens) into other ids than ``tokenizer`` does; a
    :class:`PermanentError` if it cannot say (no ``/tokenize``)."""
    text = PROBE + "".join(getattr(tokenizer, "all_special_tokens", ()))
    ours: list[int] = list(tokenizer.encode(text, add_special_tokens=False))
    body: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
    if model is not None:
        body["model"] = model
    client = make_client(config, None)
    async with client:
        try:
            answer: Any = await client.post(_root(config.base_url) + "/tokenize", body=body, cast_to=object)
        except openai.NotFoundError:
            raise PermanentError(
                "cannot check the client's tokenizer against the server's: it has no /tokenize (a vLLM server has); "
                "token-id requests need the same tokenizer on both sides"
            ) from None
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from exc
    theirs = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(theirs, list):
        raise PermanentError(f"the server's /tokenize answered without tokens: {str(answer)[:200]}")
    if theirs != ours:
        at = next((k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
        raise TokenizerMismatchError(
            f"the client's tokenizer and the server's disagree on a probe text ({len(ours)} against {len(theirs)} ids, "
            f"first difference at id {at}: ours {ours[at : at + 5]}, the server's {theirs[at : at + 5]}); token-id "
            "requests would send ids the server reads as other text. Load the tokenizer of the model the server serves"
        )
