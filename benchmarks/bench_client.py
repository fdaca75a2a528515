"""The client transport with its default middleware stack against bare
``openai.AsyncOpenAI`` calls, on the same local server, in the same run.

Each round runs the bare batch (timed here, in the benchmark's setup) and then
ours (timed by pytest-benchmark), so both see the same machine state; the
reported ratio is bare time / our time (above 1: we are faster).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import anyio
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import ClientConfig, Message, Request, TransportError, open_backend
from agentfly_min.testing import FakeOpenAIServer

from .conftest import RatioReporter

CASES = {
    # name: (requests, in flight, server latency s, fault rate)
    "64-in-flight": (640, 64, 0.0, 0.0),
    "256-in-flight-50ms": (1024, 256, 0.05, 0.0),
    "64-in-flight-20pct-faults": (320, 64, 0.0, 0.2),
}


async def bare_batch(base_url: str, count: int, in_flight: int) -> int:
    """The baseline: what a user writes by hand with the SDK, its own retries
    on with the same budget as our default stack (5)."""
    limit = anyio.Semaphore(in_flight)
    done = 0
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=5) as client:

        async def one(i: int) -> None:
            nonlocal done
            try:
                async with limit:
                    response = await client.chat.completions.create(
                        model="fake-echo", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=16
                    )
            except openai.APIError:
                return
            done += response.choices[0].message.content is not None

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    return done


async def our_batch(base_url: str, count: int, in_flight: int) -> int:
    config = ClientConfig(base_url=base_url, api_key="bench", model="fake-echo", max_concurrency=in_flight, max_new_tokens=16)
    done = 0
    async with open_backend(config) as generate:

        async def one(i: int) -> None:
            nonlocal done
            try:
                completion = await generate(Request(messages=(Message(role="user", content=f"q{i}"),)))
            except TransportError:
                return
            done += bool(completion.outputs[0].text)

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    return done


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    done = run()
    return time.perf_counter() - start, done


@pytest.mark.parametrize("case", list(CASES))
def test_client_vs_bare_async_openai(
    benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter, case: str
) -> None:
    count, in_flight, latency, fault_rate = CASES[case]
    fake_server.configure(latency=latency, fault_rate=fault_rate, fault_kinds=["429", "500", "503", "drop"], seed=11)
    bare_times: list[float] = []

    def setup() -> None:
        seconds, done = timed(lambda: anyio.run(bare_batch, fake_server.base_url, count, in_flight))
        assert done >= 0.98 * count  # under faults a few may exhaust their retries
        bare_times.append(seconds)

    def ours() -> int:
        return anyio.run(our_batch, fake_server.base_url, count, in_flight)

    done = benchmark.pedantic(ours, setup=setup, rounds=3, iterations=1, warmup_rounds=0)
    assert done >= 0.98 * count
    ratio = statistics.median(bare_times) / benchmark.stats.stats.median
    benchmark.extra_info.update(bare_median_s=statistics.median(bare_times), speed_ratio_vs_bare=ratio)
    report_ratio(
        f"ours {count / benchmark.stats.stats.median:,.0f} req/s, bare AsyncOpenAI "
        f"{count / statistics.median(bare_times):,.0f} req/s: ratio {ratio:.2f}x"
    )
