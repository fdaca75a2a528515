# Partial stub: covers only what agentfly_min calls (vLLM 0.31 API).
from collections.abc import Sequence

class Logprob:
    logprob: float

class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None

class RequestOutput:
    request_id: str
    prompt_token_ids: list[int] | None
    outputs: list[CompletionOutput]
    finished: bool
