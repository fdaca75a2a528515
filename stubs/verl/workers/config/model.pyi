# Partial stub: covers only what agentfly_min and its tests call (verl 0.9 API).
from typing import Any

class HFModelConfig:
    def __init__(self, *, path: str, **kwargs: Any) -> None: ...
    tokenizer: Any
    hf_config: Any
