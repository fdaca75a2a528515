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

import functools
import random as _random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, Protocol

import anyio

from ..configs import AsyncVerlConfig
from .._text import one_line
from ..errors import ContextLengthError, PermanentError, TransientError, TransportClosedError
from ..records import Completion, FinishReason, Generate, Middleware, Output, Request, Usage
from ._bridge import AsyncioThread, on_asyncio
from ..templates.chat import prompt_ids
from ._chat import with_prompt
from ._sampling import vllm_options

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
    # verl's server builds vLLM's SamplingParams from this dict.
    params.update(vllm_options(request))
    return params


_ABORTED = frozenset({"aborted", "abort"})  # vLLM's server says the first, SGLang's the second


class _Range(NamedTuple):
    """The oldest and newest policy versions seen (None: none seen yet)."""

    low: int | None = None
    high: int | None = None

    def including(self, low: int, high: int) -> _Range:
        return _Range(low if self.low is None else min(self.low, low), high if self.high is None else max(self.high, high))

    def union(self, other: _Range) -> _Range:
        if other.low is None or other.high is None:
            return self
        return self.including(other.low, other.high)


def _versions_of(fields: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The (oldest, newest) versions one answer of verl's reports: its
    ``min_global_steps`` / ``max_global_steps`` (the fully-async client's
    range over the resumes it made itself), else its ``global_steps``."""
    step = fields.get("global_steps")
    high = fields.get("max_global_steps", step)
    low = fields.get("min_global_steps", high)
    if not isinstance(high, int) or isinstance(high, bool):
        return None, None
    return (low if isinstance(low, int) and not isinstance(low, bool) else high), high
_NO_ROOM = ("leaves no room", "maximum context length")


@functools.cache
def _client_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """What verl's client raises: (all of it, the part worth retrying).

    Ray wraps a server-side exception in ``RayTaskError(<its type>)``, a
    subclass of both; an actor that died or cannot be reached raises
    ``RayActorError`` / ``ActorUnavailableError``. Ray is imported only when
    a call fails, so this module needs neither Ray nor verl."""
    try:
        from ray.exceptions import ActorUnavailableError, RayActorError, RayError
    except ImportError:
        return (ValueError, TypeError, RuntimeError), ()
    return (ValueError, TypeError, RuntimeError, RayError), (RayActorError, ActorUnavailableError)


def _error_from(exc: Exception) -> PermanentError | TransientError:
    """A typed error with a one-line message (a RayTaskError's text is a
    whole remote traceback in colour; its ``cause`` is the original)."""
    cause = getattr(exc, "cause", None)
    original = cause if isinstance(cause, BaseException) else exc
    message = one_line(f"{type(original).__name__}: {original}")
    if isinstance(exc, ValueError | TypeError):
        if any(marker in str(original) for marker in _NO_ROOM):
            return ContextLengthError(f"verl refused the request: {message}")
        return PermanentError(f"verl refused the request: {message}")
    if isinstance(exc, _client_errors()[1]):
        return TransientError(f"verl's server is unavailable: {message}")
    return PermanentError(f"verl's server failed: {message}")


def verl_generate(
    config: AsyncVerlConfig,
    server: VerlServer,
    tokenizer: VerlTokenizer,
    *,
    sampling_params: Mapping[str, Any] | None = None,
    asyncio_thread: Callable[[], AsyncioThread] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    random: Callable[[], float] = _random.random,
) -> Generate:
    """The raw verl transport over ``server``.

    ``request.request_id`` is sent as verl's request id on every turn, so
    verl's load balancer keeps a trajectory on one server. ``sampling_params``
    (verl's own, e.g. ``repetition_penalty``) are copied into every call and
    never changed. An aborted answer (verl pauses generation while it loads
    new weights; vLLM's server says ``"aborted"``, SGLang's ``"abort"``) is
    handled as ``config.on_abort`` says: resumed from the tokens sampled so
    far, retried from scratch, or raised as a :class:`TransientError`; after
    ``config.max_aborts`` it is raised. Before the k-th resend it waits
    ``min(abort_backoff_max, abort_backoff * 2**(k-1)) * (1 - 0.25 * U)``
    seconds (U uniform in [0, 1)), so a fleet of aborted chains does not
    hammer a server that is still loading weights.

    ``Output.weight_versions`` holds verl's ``global_steps`` for every
    sampled token (an answer this transport resumed can span two versions),
    ``Completion.weight_version`` the newest and ``min_weight_version`` the
    oldest. A client that resumes aborted requests itself (verl's
    ``FullyAsyncLLMServerClient``) reports only the range
    (``min_global_steps`` / ``max_global_steps``): a call whose range spans
    several versions has no per-token versions (None), since which tokens
    each version sampled is not known, and the range is kept.
    ``config.max_model_len`` set, an answer that reaches it without ending
    on the end-of-turn token is ``"length"`` (verl's server clamps
    ``max_tokens`` to the context left and calls the cut ``"completed"``).
    Logprobs are returned when
    ``config.logprobs`` or the request asks for them. verl's refusals are
    typed: :class:`ContextLengthError` when the prompt leaves no room,
    :class:`PermanentError` for other refusals, :class:`TransientError` when
    the server actor is gone. With ``n > 1`` the samples are separate
    concurrent calls in one session. ``asyncio_thread`` gives the asyncio
    loop thread that serves callers on trio (see :func:`open_verl`); it is
    asked for only when one calls. ``sleep`` and ``random`` are for tests.
    """
    base = dict(sampling_params or {})
    # Read once: a transformers tokenizer looks it up anew on every access.
    eos = tokenizer.eos_token_id

    async def call(request_id: str, prompt: list[int], params: dict[str, Any]) -> VerlTokenOutput:
        if on_asyncio():
            return await server.generate(request_id, prompt_ids=prompt, sampling_params=params)
        # trio: hop to the asyncio thread
        if asyncio_thread is None:
            raise PermanentError("verl's client needs asyncio; on trio, open the transport with open_verl")
        return await asyncio_thread().run(server.generate(request_id, prompt_ids=prompt, sampling_params=params))

    async def sample(request: Request, request_id: str, prompt: list[int], max_tokens: int) -> tuple[Output, _Range]:
        want_logprobs = config.logprobs or request.logprobs
        tokens: list[int] = []
        logprobs: list[float] | None = []
        versions: list[int] | None = []
        span = _Range()
        aborts = 0
        while True:
            params = _sampling(config, base, request, max_tokens - len(tokens))
            try:
                result = await call(request_id, prompt + tokens, params)
            except _client_errors()[0] as exc:
                raise _error_from(exc) from exc
            aborted = result.stop_reason in _ABORTED
            if aborted and config.on_abort == "retry":  # sampled by old weights: drop it
                tokens, logprobs, versions, span = [], [], [], _Range()
            else:
                tokens.extend(result.token_ids)
                if logprobs is not None:
                    if result.log_probs is not None and len(result.log_probs) == len(result.token_ids):
                        logprobs.extend(result.log_probs)
                    else:
                        logprobs = None
                low, high = _versions_of(result.extra_fields)
                if result.token_ids and high is not None:
                    span = span.including(low if low is not None else high, high)
                if versions is not None:
                    # One version for the whole call, or the split is not known.
                    versions = versions + [high] * len(result.token_ids) if high is not None and low in (None, high) else None
            if not aborted or len(tokens) >= max_tokens:
                break
            aborts += 1
            if config.on_abort == "error" or aborts > config.max_aborts:
                raise TransientError(f"verl aborted the request {aborts} time(s) (on_abort={config.on_abort!r})")
            delay = min(config.abort_backoff_max, config.abort_backoff * 2 ** (aborts - 1))
            await sleep(delay * (1 - 0.25 * random()))
        finish: FinishReason
        if tokens and tokens[-1] == eos:
            finish = "stop"
        elif result.stop_reason == "length" or len(tokens) >= max_tokens:
            finish = "length"
        elif config.max_model_len is not None and len(prompt) + len(tokens) >= config.max_model_len:
            finish = "length"  # verl's server clamped max_tokens to the context left and said "completed"
        else:
            finish = "stop"
        output = Output(
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason=finish,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs) if want_logprobs and logprobs is not None else None,
            weight_versions=tuple(versions) if versions is not None else None,
        )
        return output, span

    async def generate(request: Request) -> Completion:
        prompt = prompt_ids(tokenizer, request)
        max_tokens = request.max_new_tokens if request.max_new_tokens is not None else config.max_new_tokens
        request_id = request.request_id or f"agentfly-{id(request):x}"
        samples: list[tuple[Output, _Range]]
        if request.n == 1:
            samples = [await sample(request, request_id, prompt, max_tokens)]
        else:
            results: list[tuple[Output, _Range] | None] = [None] * request.n

            async def one(index: int) -> None:
                results[index] = await sample(request, request_id, prompt, max_tokens)

            async with anyio.create_task_group() as tg:
                for index in range(request.n):
                    tg.start_soon(one, index)
            samples = [r for r in results if r is not None]
            assert len(samples) == request.n  # every sample stored its result or the group raised
        outputs = tuple(output for output, _ in samples)
        span = _Range()
        for _, part in samples:
            span = span.union(part)
        completion = Completion(
            outputs=outputs,
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=sum(len(o.token_ids or ()) for o in outputs)),
            weight_version=span.high,
            min_weight_version=span.low,
        )
        return with_prompt(completion, request, prompt)

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
    exit. A call after exit raises :class:`TransportClosedError`."""
    threads: list[AsyncioThread] = []
    closed = False

    def thread() -> AsyncioThread:
        if closed:
            raise TransportClosedError("this verl transport was used after its `open_verl` block ended")
        if not threads:
            threads.append(AsyncioThread("agentfly-verl"))
        return threads[0]

    raw = verl_generate(config, server, tokenizer, sampling_params=sampling_params, asyncio_thread=thread)

    async def guarded(request: Request) -> Completion:
        if closed:
            raise TransportClosedError("this verl transport was used after its `open_verl` block ended")
        return await raw(request)

    try:
        yield middleware(guarded) if middleware is not None else guarded
    finally:
        closed = True
        if threads:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(threads[0].stop)

