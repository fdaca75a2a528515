# Partial stub: covers only what agentfly_min calls (vLLM 0.31 API).
from typing import TypedDict

class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
