"""agentfly_min: typed LLM agents over swappable inference transports."""

from importlib.metadata import PackageNotFoundError, version

from .agent import Agent, Trajectory, rollout, run_agent
from .configs import AsyncVerlConfig, AsyncVLLMConfig, BackendConfig, ClientConfig, Secret, decode_config, encode_config
from .errors import (
    AgentflyError,
    ConfigError,
    ContextLengthError,
    GenerationTimeoutError,
    MalformedResponseError,
    OutputBusyError,
    PermanentError,
    RetriesExhaustedError,
    StructuredOutputError,
    TokenizerMismatchError,
    TransientError,
    TransportClosedError,
    TransportError,
)
from .middleware import compose, concurrency_limit, rate_limit, retry, timeout
from .records import (
    Completion,
    FunctionCall,
    FunctionSchema,
    Generate,
    Message,
    Middleware,
    NamedToolChoice,
    Output,
    Request,
    ToolCall,
    ToolSchema,
    Usage,
)
from .stream import Chunk, Stream, StreamMiddleware, ToolCallDelta, collect
from .tools import Tool, tool
from .transports import open_backend, open_stream

try:
    __version__ = version("agentfly-min")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # records
    "Message",
    "ToolCall",
    "FunctionCall",
    "ToolSchema",
    "FunctionSchema",
    "NamedToolChoice",
    "Request",
    "Output",
    "Usage",
    "Completion",
    "Generate",
    "Middleware",
    # configs
    "AsyncVLLMConfig",
    "AsyncVerlConfig",
    "ClientConfig",
    "BackendConfig",
    "Secret",
    "decode_config",
    "encode_config",
    # transports and middleware
    "open_backend",
    "open_stream",
    "Stream",
    "StreamMiddleware",
    "Chunk",
    "ToolCallDelta",
    "collect",
    "compose",
    "rate_limit",
    "retry",
    "timeout",
    "concurrency_limit",
    # agents
    "Agent",
    "Trajectory",
    "run_agent",
    "rollout",
    "tool",
    "Tool",
    # errors
    "AgentflyError",
    "ConfigError",
    "TransportError",
    "TransientError",
    "PermanentError",
    "MalformedResponseError",
    "ContextLengthError",
    "TransportClosedError",
    "GenerationTimeoutError",
    "RetriesExhaustedError",
    "StructuredOutputError",
    "TokenizerMismatchError",
    "OutputBusyError",
]
