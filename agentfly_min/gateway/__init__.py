"""An OpenAI-compatible gateway that turns a black-box agent's chat calls
into token-exact trajectories.

The agent talks chat completions to ``{gateway.url}/sessions/{id}/v1``; the
gateway renders its messages with the model's template, reuses the ids it
recorded where a request extends the session's history, samples through a
token-level transport, parses tool calls with our parsers and answers in
OpenAI's shape. A session ends in :class:`~agentfly_min.Trajectory` records,
one per token-exact segment (an agent that rewrote its history has several).
"""

from .config import GatewayConfig
from .external import ExternalAgent, command_agent, rollout_external, run_external
from .server import Gateway, Session, open_gateway

__all__ = ["GatewayConfig", "Gateway", "Session", "open_gateway", "ExternalAgent", "run_external", "rollout_external", "command_agent"]
