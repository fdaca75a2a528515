"""Which template an episode takes when the caller has a tokenizer but did
not name one: the family whose upstream chat template the tokenizer carries,
verbatim, else the model's own template through the bridge (``"hf"``).

Recognition is by equality with templates this project did not write
(``templates/upstream/``, with their provenance) and Qwen2.5's, never by
markers such as ``<|im_start|>``: Qwen2.5-Math, QwQ and DeepSeek's Qwen
distills share Qwen2.5's tokens and differ in their default system text or
their reasoning, and a family chosen by likeness would render them wrong
without a word. The bridge renders with the model's own template and
refuses, with a message, one it cannot splice token-exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ..errors import ConfigError
from .base import Template
from .registry import get_template

__all__ = ["recognise", "resolve_template", "upstream_template"]

_UPSTREAM = {
    "qwen3.jinja": "qwen3",
    "qwen3-coder.jinja": "qwen3-coder",
    "llama3.2.jinja": "llama3",
    "llama3.3.jinja": "llama3",
}


def upstream_template(file: str) -> str:
    """The text of a vendored upstream chat template (``qwen3.jinja``...)."""
    return (resources.files(__package__) / "upstream" / file).read_text(encoding="utf-8")


def _normalised(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


@functools.cache
def _known() -> dict[str, str]:
    from .qwen25 import CHAT_TEMPLATE as QWEN25

    texts = {upstream_template(file): name for file, name in _UPSTREAM.items()}
    texts[QWEN25] = "qwen2.5"
    return {_normalised(text): name for text, name in texts.items()}


def recognise(tokenizer: Any, *, model_type: str | None = None) -> str:
    """The name of the built-in template for a model: ``"gpt-oss"`` for a
    gpt-oss model (harmony is its format, whatever the tokenizer carries),
    ``"mistral"`` for Mistral's own tokenizer (``mistral_common``, which
    renders Mistral's format itself), the family whose chat template the
    tokenizer carries verbatim, else ``"hf"``."""
    if model_type == "gpt_oss":
        return "gpt-oss"
    if type(tokenizer).__name__ == "MistralCommonBackend":
        return "mistral"
    text = getattr(tokenizer, "chat_template", None)
    if isinstance(text, str):
        return _known().get(_normalised(text), "hf")
    return "hf"


def resolve_template(
    name: str | None,
    *,
    tokenizer: Any = None,
    model_type: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Template:
    """The template named ``name``, or the one :func:`recognise` finds for
    ``tokenizer``, with the chat template ``options`` applied (a
    :class:`ConfigError` names an option the family does not take)."""
    template = get_template(name if name is not None else recognise(tokenizer, model_type=model_type))
    if not options:
        return template
    if template.with_options is None:
        raise ConfigError(
            "template options",
            f"the {template.name} template takes no options; got {sorted(options)}. "
            "template hf passes any option to the model's own chat template",
        )
    return template.with_options(options)
