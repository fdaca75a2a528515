"""Uses of the public API that must type-check under ``mypy --strict``.

Never run; checked by tests/test_typing.py (as downstream users would check
their own code against us).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import agentfly_min as af
from agentfly_min import (
    AsyncVerlConfig,
    AsyncVLLMConfig,
    ClientConfig,
    Completion,
    Generate,
    Message,
    Middleware,
    Request,
    compose,
    concurrency_limit,
    open_backend,
    rate_limit,
    retry,
    timeout,
)

seed_config = ClientConfig(
    base_url="http://localhost:8000/v1",
    api_key="your-api-key",
    max_requests_per_minute=200,
    timeout=300,
    temperature=0.7,
    max_new_tokens=1024,
)
vllm_config = AsyncVLLMConfig(
    pipeline_parallel_size=2, data_parallel_size=1, tensor_parallel_size=1, gpu_memory_utilization=0.8
)
verl_config = AsyncVerlConfig(temperature=1.0, on_abort="resume")


def logging_layer(inner: Generate) -> Generate:
    async def generate(request: Request) -> Completion:
        completion = await inner(request)
        print(completion.usage.total_tokens, completion.attempts)
        return completion

    return generate


stack: Middleware = compose(
    logging_layer,
    retry(max_retries=3),
    concurrency_limit(16),
    rate_limit(600, tokens_per_minute=100_000, burst=4),
    timeout(30.0),
)
backend: AbstractAsyncContextManager[Generate] = open_backend(seed_config, middleware=stack)


async def ask(question: str) -> str:
    async with open_backend(seed_config) as generate:
        request = Request(messages=(Message(role="user", content=question),), n=2, temperature=0.5)
        completion = await generate(request)
        texts: list[str] = [output.text for output in completion.outputs]
        return texts[0]


def handle(error: af.TransportError) -> float | None:
    if isinstance(error, af.TransientError):
        return error.retry_after
    if isinstance(error, af.RetriesExhaustedError):
        return float(error.attempts)
    return None


loaded: ClientConfig = af.decode_config(b"timeout = 3", ClientConfig)
encoded: bytes = af.encode_config(loaded)


async def with_local_engine(path: str) -> int:
    async with open_backend(vllm_config, model=path) as generate:
        completion = await generate(Request(prompt_ids=(1, 2, 3), max_new_tokens=4, logprobs=True))
        return len(completion.outputs[0].token_ids or ())


async def episode(agent: af.Agent[ClientConfig], generate: Generate) -> float | None:
    trajectory: af.Trajectory = await af.run_agent(agent, generate, {"question": "2+2?", "answer": 4})
    many: list[af.Trajectory] = await af.rollout(agent, generate, [{"question": "q"}], n=4, concurrency=8)
    return trajectory.reward if many else None


@af.tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: The key.
    """
    return key


math_agent = af.Agent(model_name_or_path="m", tools=[lookup], max_turns=3, backend="client", backend_config=seed_config)
