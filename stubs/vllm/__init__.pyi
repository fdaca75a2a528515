# Partial stub: covers only what agentfly_min calls (vLLM 0.31 API).
from dataclasses import Field
from typing import Any, ClassVar

from .sampling_params import SamplingParams as SamplingParams

class AsyncEngineArgs:  # a dataclass
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    model: str
    def __init__(self, model: str = ..., **kwargs: Any) -> None: ...

__version__: str
