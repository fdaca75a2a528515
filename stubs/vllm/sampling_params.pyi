# Partial stub: covers only what agentfly_min calls (vLLM 0.31 API).
import enum

class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2

class StructuredOutputsParams:
    def __init__(self, *, regex: str | None = ..., json: str | dict[str, object] | None = ...) -> None: ...

class SamplingParams:
    n: int
    max_tokens: int | None
    def __init__(
        self,
        *,
        n: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        max_tokens: int | None = ...,
        stop: list[str] | None = ...,
        seed: int | None = ...,
        logprobs: int | None = ...,
        ignore_eos: bool = ...,
        logit_bias: dict[int, float] | None = ...,
        output_kind: RequestOutputKind = ...,
        structured_outputs: StructuredOutputsParams | None = ...,
    ) -> None: ...
