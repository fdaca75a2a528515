"""Each transport's stack for the bench, started and shut down around its
rows: ours and the raw counterpart over the same engine or server, on the
same resources."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ..configs import AsyncVerlConfig, ClientConfig
from ..transports.client import open_client
from ..transports.verl import open_verl
from ..transports.vllm import VLLMEngine, vllm_generate
from .raw import openai_raw_step, openai_token_raw_step, verl_raw_step, vllm_raw_step
from .workload import RunStats, Workload, generate_step, run_workload
from .options import BenchOptions

__all__ = ["Runner", "STARTERS"]

Runner = Callable[[Workload, Callable[[], None]], RunStats]


@contextmanager
def _vllm(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
    from ..local import local_engine_config

    engine = VLLMEngine.start(local_engine_config(options.device), options.model)
    try:

        def ours(workload: Workload, tick: Callable[[], None]) -> RunStats:
            step = generate_step(vllm_generate(engine), token_level=True)
            if options.loop == "asyncio":
                # What open_vllm gives an asyncio caller: the engine on the
                # caller's own loop, calls straight to it (no hop).
                return engine.run_blocking(run_workload(step, workload, tokenizer, on_chain=tick))
            # trio: the engine on its own thread, every call across the bridge
            return anyio.run(lambda: run_workload(step, workload, tokenizer, on_chain=tick), backend=options.loop)

        def raw(workload: Workload, tick: Callable[[], None]) -> RunStats:
            # On the engine's own loop: the engine used directly, no bridge.
            return engine.run_blocking(run_workload(vllm_raw_step(engine), workload, tokenizer, on_chain=tick))

        yield ours, raw
    finally:
        engine.close()


@contextmanager
def _client(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
    import openai

    from ..local import VLLMServer, pinned, split_cpus

    # The client (ours and the SDK alike) on a CPU of its own: see split_cpus.
    client_cpus, server_cpus = split_cpus()
    work_dir = Path(options.work_dir)
    with VLLMServer(options.model, work_dir=work_dir, max_model_len=1024, device=options.device, cpus=server_cpus) as server, pinned(client_cpus):
        config = ClientConfig(base_url=server.base_url, model=server.model, timeout=300)

        async def run_ours(workload: Workload, tick: Callable[[], None]) -> RunStats:
            async with open_client(config) as generate:
                return await run_workload(generate_step(generate, token_level=False), workload, tokenizer, on_chain=tick)

        async def run_raw(workload: Workload, tick: Callable[[], None]) -> RunStats:
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", timeout=300) as client:
                return await run_workload(openai_raw_step(client, server.model), workload, tokenizer, on_chain=tick)

        yield (
            lambda w, t: anyio.run(run_ours, w, t, backend=options.loop),
            lambda w, t: asyncio.run(run_raw(w, t)),
        )


@contextmanager
def _verl(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
    from ..local.verl_cluster import VerlCluster

    with VerlCluster(options.model, work_dir=Path(options.work_dir), device=options.device) as cluster:

        async def run_ours(workload: Workload, tick: Callable[[], None]) -> RunStats:
            async with open_verl(AsyncVerlConfig(), cluster.client, tokenizer) as generate:
                return await run_workload(generate_step(generate, token_level=True), workload, tokenizer, on_chain=tick)

        yield (
            lambda w, t: anyio.run(run_ours, w, t, backend=options.loop),
            lambda w, t: asyncio.run(run_workload(verl_raw_step(cluster.client, tokenizer), w, tokenizer, on_chain=t)),
        )


@contextmanager
def _fleet(options: BenchOptions, tokenizer: Any) -> Iterator[tuple[Runner, Runner]]:
    """``options.servers`` vLLM servers behind vLLM's router (sticky on the
    session header), driven token-in/token-out over HTTP: our client
    transport against the SDK's bare ``completions.create``."""
    import openai

    from ..local.fleet import Fleet

    with Fleet(options.model, work_dir=Path(options.work_dir), servers=options.servers, device=options.device) as fleet:
        config = ClientConfig(base_url=fleet.base_url, model=fleet.model, timeout=300, token_ids=True)

        async def run_ours(workload: Workload, tick: Callable[[], None]) -> RunStats:
            async with open_client(config) as generate:
                return await run_workload(generate_step(generate, token_level=True), workload, tokenizer, on_chain=tick)

        async def run_raw(workload: Workload, tick: Callable[[], None]) -> RunStats:
            async with openai.AsyncOpenAI(base_url=fleet.base_url, api_key="EMPTY", timeout=300) as client:
                return await run_workload(openai_token_raw_step(client, fleet.model), workload, tokenizer, on_chain=tick)

        yield (
            lambda w, t: anyio.run(run_ours, w, t, backend=options.loop),
            lambda w, t: asyncio.run(run_raw(w, t)),
        )


STARTERS = {"vllm": _vllm, "client": _client, "verl": _verl, "fleet": _fleet}


