"""The built-in templates (the registry registers them)."""

from __future__ import annotations

from .harmony import TEMPLATE as GPT_OSS
from .hf import TEMPLATE as HF
from .llama3 import TEMPLATE as LLAMA3
from .mistral import TEMPLATE as MISTRAL
from .qwen3 import NO_THINKING as QWEN3_NO_THINKING
from .qwen3_coder import TEMPLATE as QWEN3_CODER
from .qwen3 import THINKING as QWEN3
from .qwen25 import TEMPLATE as QWEN25

__all__ = ["BUILT_IN"]

BUILT_IN = (QWEN25, QWEN3, QWEN3_NO_THINKING, QWEN3_CODER, LLAMA3, MISTRAL, GPT_OSS, HF)
