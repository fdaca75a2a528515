# Partial stub: covers only what agentfly_min and its tests call (verl 0.9 API).
from typing import Any

def get_max_position_embeddings(hf_config: Any) -> int: ...
