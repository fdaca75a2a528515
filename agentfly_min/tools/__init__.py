"""Tools: the ``tool`` decorator and the tools that come with the library."""

from .arithmetic import calculator
from .tool import Tool, ToolError, tool

__all__ = ["Tool", "ToolError", "tool", "calculator"]
