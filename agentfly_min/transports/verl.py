"""The verl transport: token in, token out through verl's rollout servers.

During RL training verl owns the inference servers and the weights; an agent
loop gets verl's client (``LLMServerClient`` since verl 0.8, the same
``generate`` on ``AsyncLLMServerManager`` before). This transport needs only
that ``generate`` (typed as :class:`VerlServer`, so nothing here imports
verl) and the tokenizer: prompts go as token ids, results come back as the
sampled ids and their logprobs; nothing is decoded and re-tokenised.

verl's client awaits Ray object refs, which live on asyncio: called from an
asyncio loop (as in verl's own workers) it is awaited directly; called from
trio it is run on an asyncio loop thread that :func:`open_verl` owns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio

from ..configs import AsyncVerlConfig
from ..errors import PermanentError, TransientError
from ..records import Completion, FinishReason, Generate, Middleware, Output, Request, Usage
from ._bridge import AsyncioThread
from ._chat import prompt_ids

__all__ = ["VerlServer", "VerlTokenOutput", "VerlTokenizer", "open_verl", "verl_generate"]


class VerlTokenOutput(Protocol):
    """What we read of verl's ``TokenOutput``."""

    token_ids: list[int]
    log_probs: list[float] | None
    stop_reason: str | None
    extra_fields: dict[str, Any]


class VerlServer(Protocol):
    """What we call on verl's ``LLMServerClient`` (or ``AsyncLLMServerManager``)."""

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]
    ) -> VerlTokenOutput: ...


class VerlTokenizer(Protocol):
    """What we need of the model's tokenizer (a ``transformers`` one fits)."""

    eos_token_id: int | None

    def decode(self, token_ids: list[int], /, *, skip_special_tokens: bool) -> str: ...

    def apply_chat_template(self, conversation: Any, /, **kwargs: Any) -> Any: ...


def _sampling(config: AsyncVerlConfig, base: Mapping[str, Any], request: Request, max_tokens: int) -> dict[str, Any]:
    # A fresh dict every call: verl's server pops keys from what it is given,
    # and the dict verl hands an agent loop is shared by the whole batch.
    params: dict[str, Any] = {
        **base,
        "temperature": config.temperature if request.temperature is None else request.temperature,
        "top_p": config.top_p if request.top_p is None else request.top_p,
        "top_k": config.top_k,
        "max_tokens": max_tokens,
        "logprobs": config.logprobs or request.logprobs,
    }
    if request.stop:
        params["stop"] = list(request.stop)
    if request.seed is not None:
        params["seed"] = request.seed
    if request.ignore_eos:
        params["ignore_eos"] = True
    if request.logit_bias:
        params["logit_bias"] = dict(request.logit_bias)
    if request.regex is not None:
        # verl's server builds vLLM's SamplingParams from this dict.
        from vllm.sampling_params import StructuredOutputsParams

        params["structured_outputs"] = StructuredOutputsParams(regex=request.regex)
    return params


def verl_generate(
    config: AsyncVerlConfig,
    server: VerlServer,
    tokenizer: VerlTokenizer,
    *,
    sampling_params: Mapping[str, Any] | None = None,
    asyncio_thread: Callable[[], AsyncioThread] | None = None,
) -> Generate:
    """The raw verl transport over ``server``.

    ``request.request_id`` is sent as verl's request id on every turn, so
    verl's load balancer keeps a trajectory on one server. ``sampling_params``
    (verl's own, e.g. ``repetition_penalty``) are copied into every call and
    never changed. An ``"aborted"`` answer (verl pauses generation while it
    loads new weights) is handled as ``config.on_abort`` says: resumed from
    the tokens sampled so far, retried from scratch, or raised as a
    :class:`TransientError`; after ``config.max_aborts`` it is raised.
    ``Completion.weight_version`` is verl's ``global_steps`` of the answer.
    With ``n > 1`` the samples are separate concurrent calls in one session.
    ``asyncio_thread`` gives the asyncio loop thread that serves callers on
    trio (see :func:`open_verl`); it is asked for only when one calls.
    """
    base = dict(sampling_params or {})

    async def call(request_id: str, prompt: list[int], params: dict[str, Any]) -> VerlTokenOutput:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio: hop to the asyncio thread
            if asyncio_thread is None:
                raise RuntimeError("verl's client needs asyncio; on trio, open the transport with open_verl") from None
            return await asyncio_thread().run(server.generate(request_id, prompt_ids=prompt, sampling_params=params))
        return await server.generate(request_id, prompt_ids=prompt, sampling_params=params)

    async def sample(request: Request, request_id: str, prompt: list[int], max_tokens: int) -> tuple[Output, int | None]:
        tokens: list[int] = []
        logprobs: list[float] = []
        aborts = 0
        version: int | None = None
        while True:
            remaining = max_tokens - len(tokens)
            params = _sampling(config, base, request, remaining)
            result = await call(request_id, prompt + tokens, params)
            version = result.extra_fields.get("global_steps", version)
            if result.stop_reason != "aborted":
                tokens.extend(result.token_ids)
                if result.log_probs is not None:
                    logprobs.extend(result.log_probs)
                break
            aborts += 1
            if config.on_abort == "error" or aborts > config.max_aborts:
                raise TransientError(f"verl aborted the request {aborts} time(s) (on_abort={config.on_abort!r})")
            if config.on_abort == "resume":
                tokens.extend(result.token_ids)
                if result.log_probs is not None:
                    logprobs.extend(result.log_probs)
                if len(tokens) >= max_tokens:
                    break
            else:  # retry: the partial answer was sampled by old weights; drop it
                tokens, logprobs = [], []
        eos = tokenizer.eos_token_id
        finish: FinishReason = "stop" if (tokens and tokens[-1] == eos) or len(tokens) < max_tokens else "length"
        output = Output(
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason=finish,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs) if len(logprobs) == len(tokens) and (config.logprobs or request.logprobs) else None,
        )
        return output, version

    async def generate(request: Request) -> Completion:
        prompt = prompt_ids(tokenizer, request)
        max_tokens = request.max_new_tokens if request.max_new_tokens is not None else config.max_new_tokens
        request_id = request.request_id or f"agentfly-{id(request):x}"
        results: list[tuple[Output, int | None] | None] = [None] * request.n

        async def one(index: int) -> None:
            results[index] = await sample(request, request_id, prompt, max_tokens)

        try:
            if request.n == 1:
                await one(0)
            else:
                async with anyio.create_task_group() as tg:
                    for index in range(request.n):
                        tg.start_soon(one, index)
        except ValueError as exc:  # verl's server refusing a prompt with no room left
            raise PermanentError(f"verl refused the request: {exc}") from exc
        done = [r for r in results if r is not None]
        assert len(done) == request.n  # every sample stored its result or the group raised
        outputs = tuple(output for output, _ in done)
        versions = [v for _, v in done if v is not None]
        return Completion(
            outputs=outputs,
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=sum(len(o.token_ids or ()) for o in outputs)),
            prompt_ids=tuple(prompt),
            weight_version=max(versions) if versions else None,
        )

    return generate


@asynccontextmanager
async def open_verl(
    config: AsyncVerlConfig,
    server: VerlServer,
    tokenizer: VerlTokenizer,
    *,
    sampling_params: Mapping[str, Any] | None = None,
    middleware: Middleware | None = None,
) -> AsyncIterator[Generate]:
    """Yield a :data:`Generate` over verl's client, usable from asyncio and
    trio. On asyncio (verl's own workers) calls go straight to the client; on
    trio they run on an asyncio thread, started on first use and stopped on
    exit."""
    threads: list[AsyncioThread] = []

    def thread() -> AsyncioThread:
        if not threads:
            threads.append(AsyncioThread("agentfly-verl"))
        return threads[0]

    try:
        raw = verl_generate(config, server, tokenizer, sampling_params=sampling_params, asyncio_thread=thread)
        yield middleware(raw) if middleware is not None else raw
    finally:
        if threads:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(threads[0].stop)

