"""The client transport against three baselines and against the server's
own limit, on the same local server, in the same run.

Each ratio comes from paired rounds (ours and the other, in blocks of two rounds,
one in each order) with a 95% bootstrap interval. A round sends ``count`` chat
requests at ``in_flight`` at once; requests/s and this process's CPU per
request are kept per round.

- ours vs bare SDK: our default stack (retry, concurrency limit, timeout)
  over the lean wire path (aiohttp and msgspec; on trio bridged to an
  asyncio thread) against what a user writes by hand with the SDK (over
  its default HTTP stack, httpx): what a user gains;
- ours vs the SDK over aiohttp (``DefaultAioHttpClient``): the gain that
  is not the HTTP stack's;
- ours vs the floor (bare aiohttp and msgspec, the same requests, the
  answer decoded, no records, no middleware): what our code costs;
- ours over the SDK wire path vs bare SDK: what our records and middleware
  cost on top of the SDK;
- ours vs the server's limit: the server is not the bottleneck only if a
  bare aiohttp loop (no parsing, no records, no middleware) cannot go
  faster than us; that loop's rate is the limit;
- ours on trio vs ours on asyncio, at the same load.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal

import aiohttp
import anyio
import msgspec
import openai
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from agentfly_min import ClientConfig, Message, Request, TransportError, open_backend
from agentfly_min.bench.stats import Sample
from agentfly_min.testing import FakeOpenAIServer

from .conftest import RatioReporter, paired

Loop = Literal["asyncio", "trio"]

BODY = {"model": "fake-echo", "messages": [{"role": "user", "content": "q"}], "max_tokens": 16}


async def bare_sdk(base_url: str, count: int, in_flight: int, *, over_aiohttp: bool = False) -> int:
    """The baseline: what a user writes by hand with the SDK, its own retries
    on with the same budget as our default stack (5); over its default
    httpx, or over aiohttp (``DefaultAioHttpClient``, asyncio only)."""
    limit = anyio.Semaphore(in_flight)
    done = 0
    http_client = openai.DefaultAioHttpClient() if over_aiohttp else None
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=5, http_client=http_client) as client:

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


async def ours(base_url: str, count: int, in_flight: int, library: Literal["aiohttp", "openai"]) -> int:
    config = ClientConfig(
        base_url=base_url, api_key="bench", model="fake-echo", max_concurrency=in_flight, max_new_tokens=16, http_library=library
    )
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


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Answer(msgspec.Struct):
    choices: list[_Choice]


async def floor(base_url: str, count: int, in_flight: int) -> int:
    """Bare aiohttp and msgspec: the same requests as ours (a body per
    request, the answer's status checked and its text decoded), nothing
    else: the least a client of this server can do per request."""
    limit = anyio.Semaphore(in_flight)
    done = 0
    decode = msgspec.json.Decoder(_Answer).decode
    encode = msgspec.json.encode
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            nonlocal done
            body = encode({"model": "fake-echo", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 16})
            async with limit:
                async with session.post(f"{base_url}/chat/completions", data=body, headers=headers) as response:
                    payload = await response.read()
            if response.status == 200:
                done += decode(payload).choices[0].message.content is not None

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    return done


async def server_limit(base_url: str, count: int, in_flight: int) -> int:
    """As fast as this machine lets a client go: bare aiohttp on asyncio, a
    fixed body, the answer read and not parsed."""
    limit = anyio.Semaphore(in_flight)
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            nonlocal done
            async with limit:
                async with session.post(f"{base_url}/chat/completions", json=BODY) as response:
                    await response.read()
                    done += response.status == 200

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
    return done


def side(run: Callable[[], Awaitable[int]], loop: Loop, count: int) -> Callable[[], Sample]:
    def measure() -> Sample:
        wall, cpu = time.perf_counter(), time.process_time()
        done = anyio.run(run, backend=loop)
        sample = Sample(work=done, seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)
        assert done >= 0.98 * count, f"only {done} of {count} answered"
        return sample

    return measure


def per_request(samples: list[Sample]) -> tuple[float, float]:
    """Requests/s and milliseconds of CPU per request, pooled."""
    work = sum(s.work for s in samples)
    return work / sum(s.seconds for s in samples), 1000 * sum(s.cpu_seconds for s in samples) / work


def compare(
    benchmark: BenchmarkFixture,
    report_ratio: RatioReporter,
    label: str,
    mine: Callable[[], Sample],
    theirs: Callable[[], Sample],
    other: tuple[str, str],
) -> None:
    """A paired measurement of ours against ``other`` (its JSON key and its
    name), with each side's requests/s and CPU per request in the JSON and
    the summary."""
    estimate = paired(benchmark, report_ratio, label, mine, theirs)
    (mine_rps, mine_cpu), (their_rps, their_cpu) = per_request(estimate.ours), per_request(estimate.raw)
    key, name = other
    benchmark.extra_info.update({"ours_rps": mine_rps, "ours_cpu_ms": mine_cpu, f"{key}_rps": their_rps, f"{key}_cpu_ms": their_cpu})
    report_ratio(f"  ours {mine_rps:,.0f} req/s at {mine_cpu:.2f} ms CPU/req; {name} {their_rps:,.0f} req/s at {their_cpu:.2f} ms CPU/req")


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_ours_vs_bare_async_openai_64_in_flight(
    benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter, loop: Loop
) -> None:
    count, in_flight = 2000, 64
    fake_server.configure(record_requests=False)
    url = fake_server.base_url
    compare(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, {loop}: ours (aiohttp) vs bare AsyncOpenAI",
        side(lambda: ours(url, count, in_flight, "aiohttp"), loop, count),
        side(lambda: bare_sdk(url, count, in_flight), loop, count),
        ("bare", "bare AsyncOpenAI"),
    )


def test_ours_vs_the_sdk_over_aiohttp_64_in_flight(
    benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter
) -> None:
    count, in_flight = 2000, 64
    fake_server.configure(record_requests=False)
    url = fake_server.base_url
    compare(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, asyncio: ours (aiohttp) vs AsyncOpenAI over aiohttp (DefaultAioHttpClient)",
        side(lambda: ours(url, count, in_flight, "aiohttp"), "asyncio", count),
        side(lambda: bare_sdk(url, count, in_flight, over_aiohttp=True), "asyncio", count),
        ("sdk_aiohttp", "AsyncOpenAI over aiohttp"),
    )


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_ours_vs_the_floor_64_in_flight(
    benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter, loop: Loop
) -> None:
    count, in_flight = 2000, 64
    fake_server.configure(record_requests=False)
    url = fake_server.base_url
    compare(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, {loop}: ours (aiohttp) vs the floor (bare aiohttp + msgspec on asyncio)",
        side(lambda: ours(url, count, in_flight, "aiohttp"), loop, count),
        side(lambda: floor(url, count, in_flight), "asyncio", count),
        ("floor", "the floor"),
    )


def test_ours_over_the_sdk_vs_bare_async_openai(benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter) -> None:
    count, in_flight = 1000, 64
    fake_server.configure(record_requests=False)
    url = fake_server.base_url
    paired(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, asyncio: ours (SDK wire path) vs bare AsyncOpenAI",
        side(lambda: ours(url, count, in_flight, "openai"), "asyncio", count),
        side(lambda: bare_sdk(url, count, in_flight), "asyncio", count),
        budget_seconds=45,
    )


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_ours_vs_the_servers_limit_256_in_flight_50ms(
    benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter, loop: Loop
) -> None:
    count, in_flight = 4000, 256
    fake_server.configure(latency=0.05, record_requests=False)
    url = fake_server.base_url
    estimate = paired(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, 50 ms server latency, {loop}: ours vs the server's limit",
        side(lambda: ours(url, count, in_flight, "aiohttp"), loop, count),
        side(lambda: server_limit(url, count, in_flight), "asyncio", count),
    )
    (mine, mine_cpu), (limit, _) = per_request(estimate.ours), per_request(estimate.raw)
    benchmark.extra_info.update(ours_rps=mine, ours_cpu_ms=mine_cpu, limit_rps=limit, ideal_rps=in_flight / 0.05)
    report_ratio(f"  ours {mine:,.0f} req/s ({mine_cpu:.2f} ms CPU/req); the server's limit {limit:,.0f} req/s (ideal {in_flight / 0.05:,.0f})")


def test_trio_vs_asyncio_256_in_flight_50ms(benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter) -> None:
    count, in_flight = 4000, 256
    fake_server.configure(latency=0.05, record_requests=False)
    url = fake_server.base_url
    estimate = paired(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, 50 ms server latency: ours on trio vs ours on asyncio",
        side(lambda: ours(url, count, in_flight, "aiohttp"), "trio", count),
        side(lambda: ours(url, count, in_flight, "aiohttp"), "asyncio", count),
    )
    (trio_rps, trio_cpu), (asyncio_rps, asyncio_cpu) = per_request(estimate.ours), per_request(estimate.raw)
    benchmark.extra_info.update(trio_rps=trio_rps, trio_cpu_ms=trio_cpu, asyncio_rps=asyncio_rps, asyncio_cpu_ms=asyncio_cpu)
    report_ratio(f"  trio {trio_rps:,.0f} req/s ({trio_cpu:.2f} ms CPU/req); asyncio {asyncio_rps:,.0f} req/s ({asyncio_cpu:.2f} ms CPU/req)")


def test_ours_vs_bare_async_openai_under_faults(benchmark: BenchmarkFixture, fake_server: FakeOpenAIServer, report_ratio: RatioReporter) -> None:
    count, in_flight = 500, 64
    fake_server.configure(fault_rate=0.2, fault_kinds=["429", "500", "503", "drop"], seed=11, record_requests=False)
    url = fake_server.base_url
    paired(
        benchmark,
        report_ratio,
        f"{count} requests, {in_flight} in flight, 20% faults, asyncio: ours vs bare AsyncOpenAI (both retrying)",
        side(lambda: ours(url, count, in_flight, "aiohttp"), "asyncio", count),
        side(lambda: bare_sdk(url, count, in_flight), "asyncio", count),
        budget_seconds=45,
    )
