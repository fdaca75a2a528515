# Partial stub: covers only what agentfly_min and its tests call (verl 0.9 API).
from typing import Any

from .replica import TokenOutput

class LLMServerClient:
    config: Any
    def __init__(self, config: Any, load_balancer_handle: Any = ..., **kwargs: Any) -> None: ...
    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput: ...

class FullyAsyncLLMServerClient(LLMServerClient): ...
