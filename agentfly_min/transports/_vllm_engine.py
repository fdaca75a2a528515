"""The in-process vLLM engine: its arguments, its start on the caller's
asyncio loop or on an asyncio thread of its own (see ``_bridge``), and its
shutdown, which leaves no process, queue or shared memory behind. vLLM is
imported lazily: this module imports, and type-checks, without vLLM
installed. Requests to a running engine are in ``vllm``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import difflib
import gc
import importlib
import itertools
import multiprocessing
import os
import sys
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ..configs import AsyncVLLMConfig
from ..local._shm import Process, descendants, shm_entries, sweep_shm
from .._text import one_line
from ..errors import ConfigError, PermanentError
from ._bridge import AsyncioThread, on_asyncio

__all__ = ["VLLMEngine", "open_vllm_engine", "engine_args"]

T = TypeVar("T")


def _check_model(model: str | os.PathLike[str]) -> str:
    path = Path(model).expanduser()
    text = str(model)
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError("model", f"{text} has no config.json: not a Hugging Face model folder")
        return str(path)
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError("model", f"{text} does not exist (and the model hub is offline or it is not a hub id)")
    return text  # an `org/name` hub id: vLLM fetches it


def engine_args(config: AsyncVLLMConfig, model: str | os.PathLike[str]) -> Any:
    """The ``vllm.AsyncEngineArgs`` for ``config``; ``engine_args`` keys are
    checked against vLLM's own list (a misspelt one is a :class:`ConfigError`
    naming the closest real ones). A table given for one of vLLM's config
    objects (``structured_outputs_config = {disable_any_whitespace = true}``)
    is built into it, as vLLM's command line does."""
    from vllm import AsyncEngineArgs

    known = {f.name: f for f in dataclasses.fields(AsyncEngineArgs)}
    extra: dict[str, Any] = {}
    for key, value in config.engine_args.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"AsyncVLLMConfig.engine_args.{key}", f"not an argument of vllm.AsyncEngineArgs{hint}")
        extra[key] = _config_object(known[key], value, key)
    named: dict[str, Any] = {
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "data_parallel_size": config.data_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "dtype": config.dtype,
        "enforce_eager": config.enforce_eager,
        "seed": config.seed,
        "trust_remote_code": config.trust_remote_code,
        "disable_log_stats": not config.log_stats,
    }
    optional = {
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "kv_cache_memory_bytes": config.kv_cache_memory_bytes,
        "enable_prefix_caching": config.enable_prefix_caching,
    }
    named.update({k: v for k, v in optional.items() if v is not None})
    return AsyncEngineArgs(model=_check_model(model), **named, **extra)


def _config_object(field: dataclasses.Field[Any], value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        return value
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if not dataclasses.is_dataclass(default) or isinstance(default, type):
        return value
    try:
        return type(default)(**value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"AsyncVLLMConfig.engine_args.{key}", one_line(str(exc))) from None


class VLLMEngine:
    """A running vLLM async engine, on its own asyncio thread or on the
    asyncio loop of the code that opened it.

    Start with :meth:`start` (blocking, own thread; from async code use
    :func:`open_vllm_engine`), stop with :meth:`close`. ``engine`` is vLLM's
    ``AsyncLLM``: :meth:`run` runs a coroutine that uses it on the engine's
    loop, for anything this library does not wrap.
    """

    def __init__(
        self,
        thread: AsyncioThread | None,
        engine: Any,
        tokenizer: Any,
        max_model_len: int,
        loop: asyncio.AbstractEventLoop | None = None,
        shm_before: set[str] | None = None,
        procs_before: set[Process] | None = None,
    ) -> None:
        if (thread is None) == (loop is None):
            raise ValueError("an engine runs either on its own thread or on a caller's loop")
        self._thread = thread
        self._loop = loop
        self._shm_before = shm_before
        self._procs_before = procs_before or set()
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._ids = itertools.count()
        self.closed = False

    @classmethod
    def start(cls, config: AsyncVLLMConfig, model: str | os.PathLike[str]) -> VLLMEngine:
        """Build the engine (tens of seconds on CPU). Bad arguments raise
        :class:`ConfigError` before anything starts."""
        shm_before, procs_before = shm_entries(), descendants()
        thread = AsyncioThread("agentfly-vllm")

        async def build() -> Any:
            return _build(config, model)

        try:
            engine = thread.run_blocking(build())
        except BaseException:
            thread.stop()
            raise
        try:
            tokenizer, max_len = _facts(config, engine)
        except BaseException:
            thread.call_blocking(engine.shutdown)
            thread.stop()
            raise
        return cls(thread, engine, tokenizer, max_len, shm_before=shm_before, procs_before=procs_before)

    @classmethod
    def start_for_loop(cls, config: AsyncVLLMConfig, model: str | os.PathLike[str], loop: asyncio.AbstractEventLoop) -> VLLMEngine:
        """Build an engine that will run on ``loop`` (blocking; call it from a
        worker thread, as :func:`open_vllm_engine` does). vLLM starts its
        tasks on the loop of the first call."""
        shm_before, procs_before = shm_entries(), descendants()
        engine = _build(config, model)  # no loop runs here: vLLM defers its tasks
        try:
            tokenizer, max_len = _facts(config, engine)
        except BaseException:
            engine.shutdown()
            raise
        return cls(None, engine, tokenizer, max_len, loop=loop, shm_before=shm_before, procs_before=procs_before)

    @property
    def own_thread(self) -> bool:
        """Whether the engine runs on a thread of its own (any caller's
        loop may use it) or on the loop that opened it (only that one)."""
        return self._thread is not None

    def close(self) -> None:
        """Shut the engine down (its engine-core process too), stop the
        thread, and remove the engine's queues from /dev/shm if its
        processes were killed before they could (vLLM kills an engine core
        that has not exited 5 s after SIGTERM, which a loaded machine hits)."""
        if self.closed:
            return
        self.closed = True
        # Taken before the shutdown: an engine core that dies first orphans its workers, which then are no one's children.
        dying = descendants() - self._procs_before
        try:
            if self._thread is None:  # vLLM cancels its tasks on the caller's loop thread-safely
                try:
                    self.engine.shutdown(timeout=120)
                finally:
                    self._forget()
            else:
                try:
                    self._thread.call_blocking(self.engine.shutdown, timeout=120)
                finally:
                    # Drop the engine on its own thread: AsyncLLM.__del__ shuts
                    # down again, which fails if it only runs at interpreter exit.
                    self._thread.call_blocking(self._forget)
                    self._thread.stop()
        finally:
            if self._shm_before is not None:
                sweep_shm(self._shm_before, dying=dying)
            # vLLM's shutdown leaves its exited engine core unwaited; a
            # process that starts engines again and again (the bench's
            # starts) would pile up zombies. This polls, it never blocks.
            multiprocessing.active_children()

    def _forget(self) -> None:
        self.engine = None
        gc.collect()  # AsyncLLM sits in reference cycles; collect it now, not at exit

    def next_id(self, session: str | None) -> str:
        # vLLM needs ids unique among requests in flight; a session id repeats.
        return f"{session or 'req'}-{next(self._ids)}"

    def _on_own_loop(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.AbstractEventLoop:
        """The engine's loop, if the caller runs on it; else ``coroutine``
        is closed (no "never awaited" warning) and a PermanentError raised."""
        assert self._loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            coroutine.close()
            raise PermanentError(
                "this vLLM engine runs on the asyncio loop that opened it; to call it from another loop "
                "(trio, another thread) open it with own_thread=True"
            )
        return self._loop

    async def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the engine's loop and await it (from any loop
        when the engine has its own thread)."""
        if self._thread is None:
            self._on_own_loop(coroutine)
            return await coroutine
        return await self._thread.run(coroutine)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the engine's loop; cancel the future to cancel it."""
        if self._thread is None:
            return asyncio.run_coroutine_threadsafe(coroutine, self._on_own_loop(coroutine))
        return self._thread.submit(coroutine)

    def run_blocking(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop from synchronous code and wait
        (e.g. a loop that uses ``engine`` directly, with no bridge between).
        Only for an engine with its own thread: the other kind's loop is the
        caller's, which this would block."""
        if self._thread is None:
            coroutine.close()
            raise RuntimeError("run_blocking needs an engine with its own thread (own_thread=True)")
        return self._thread.run_blocking(coroutine)

    async def unfinished_requests(self) -> int:
        """Requests the engine is still working on (0 once all are done or aborted)."""

        async def count() -> int:
            return int(self.engine.output_processor.get_num_unfinished_requests())

        result: int = await self.run(count())
        return result


def _import_vllm() -> None:
    # vLLM's first import pins the importing frame, and through it every
    # caller's frame and locals (an engine among them, once assigned), for the
    # life of the process: the engine then outlives its shutdown and fails in
    # __del__ at exit. So the first import runs on a thread of its own.
    if "vllm.v1.engine.async_llm" not in sys.modules:
        thread = threading.Thread(
            target=importlib.import_module, args=("vllm.v1.engine.async_llm",), name="agentfly-vllm-import"
        )
        thread.start()
        thread.join()


def _build(config: AsyncVLLMConfig, model: str | os.PathLike[str]) -> Any:
    _import_vllm()  # an import error surfaces from the import below
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(engine_args(config, model))


def _facts(config: AsyncVLLMConfig, engine: Any) -> tuple[Any, int]:
    # With skip_tokenizer_init (a model whose tokenizer vLLM cannot load,
    # e.g. one only a template's library encodes), requests bring prompt_ids.
    tokenizer = None if config.engine_args.get("skip_tokenizer_init") else engine.get_tokenizer()
    return tokenizer, int(engine.model_config.max_model_len)


@asynccontextmanager
async def open_vllm_engine(
    config: AsyncVLLMConfig, model: str | os.PathLike[str], *, own_thread: bool | None = None
) -> AsyncIterator[VLLMEngine]:
    """Start an engine without blocking the event loop; shut it down on exit,
    cancellation included.

    ``own_thread``: by default (``None``) an engine opened from asyncio runs
    on the caller's loop, with no thread and no hop per call, and one opened
    from trio on an asyncio thread of its own. ``True`` gives it its own
    thread on asyncio too, so that other loops (other threads, trio) may
    share it."""
    if own_thread is None:
        own_thread = not on_asyncio()
    with anyio.CancelScope(shield=True):  # a half-started engine must still be shut down
        if own_thread:
            engine = await anyio.to_thread.run_sync(VLLMEngine.start, config, model)
        else:
            if not on_asyncio():
                raise ConfigError("own_thread", "an engine on the caller's loop needs an asyncio caller; trio needs own_thread")
            engine = await anyio.to_thread.run_sync(VLLMEngine.start_for_loop, config, model, asyncio.get_running_loop())
    try:
        yield engine
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(engine.close)


