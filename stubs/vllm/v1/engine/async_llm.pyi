# Partial stub: covers only what agentfly_min calls (vLLM 0.31 API).
from collections.abc import AsyncGenerator
from typing import Any

from vllm import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

class _ModelConfig:
    max_model_len: int

class _OutputProcessor:
    def get_num_unfinished_requests(self) -> int: ...

class AsyncLLM:
    model_config: _ModelConfig
    output_processor: _OutputProcessor
    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLM: ...
    def generate(
        self, prompt: TokensPrompt | list[int] | str, sampling_params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]: ...
    async def abort(self, request_id: str | list[str]) -> None: ...
    def get_tokenizer(self) -> Any: ...
    def shutdown(self, timeout: float | None = ...) -> None: ...
