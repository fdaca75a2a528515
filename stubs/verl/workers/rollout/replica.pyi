# Partial stub: covers only what agentfly_min and its tests call (verl 0.9 API).
import enum
from typing import Any

from pydantic import BaseModel

class TokenOutput(BaseModel):
    token_ids: list[int]
    log_probs: list[float] | None = ...
    stop_reason: str | None = ...
    extra_fields: dict[str, Any] = ...

class RolloutMode(enum.Enum):
    HYBRID = "hybrid"
    COLOCATED = "colocated"
    STANDALONE = "standalone"
