"""The built-in templates, registered on first use of the registry."""

from __future__ import annotations

from .base import register_template
from .qwen25 import TEMPLATE as QWEN25

__all__ = ["BUILT_IN"]

BUILT_IN = (QWEN25,)
for _template in BUILT_IN:
    register_template(_template, replace=True)
