# Partial stub: covers only what agentfly_min's benchmarks call.
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

class _Stats:
    median: float
    mean: float
    min: float
    max: float

class _Metadata:
    stats: _Stats

class BenchmarkFixture:
    extra_info: dict[str, Any]
    stats: _Metadata
    def __call__(self, function_to_benchmark: Callable[..., _T], *args: Any, **kwargs: Any) -> _T: ...
    def pedantic(
        self,
        target: Callable[..., _T],
        args: tuple[Any, ...] = ...,
        kwargs: dict[str, Any] | None = ...,
        setup: Callable[[], object] | None = ...,
        teardown: Callable[..., object] | None = ...,
        rounds: int = ...,
        warmup_rounds: int = ...,
        iterations: int = ...,
    ) -> _T: ...
