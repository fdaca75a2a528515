"""Nothing lost, nothing duplicated, the rate held: the client transport under
injected faults against the fake server on 127.0.0.1."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from agentfly_min import (
    ClientConfig,
    Completion,
    Generate,
    Request,
    RetriesExhaustedError,
    TransportError,
    compose,
    concurrency_limit,
    open_backend,
    rate_limit,
    retry,
    timeout,
)
from agentfly_min.records import Middleware
from agentfly_min.testing import FakeOpenAIServer

from .support import user

pytestmark = pytest.mark.anyio


async def run_all(generate: Generate, keys: list[str]) -> dict[str, Completion | TransportError]:
    results: dict[str, Completion | TransportError] = {}

    async def one(key: str) -> None:
        try:
            results[key] = await generate(user(key))
        except TransportError as exc:
            results[key] = exc

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(one, key)
    return results


async def test_thousand_requests_under_20_percent_faults_all_complete(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(fault_rate=0.2, fault_kinds=["429", "500", "503", "drop"], retry_after=0.0, seed=7)
    stack = compose(
        retry(max_retries=10, initial_backoff=0.002, max_backoff=0.02),
        concurrency_limit(64),
        timeout(30),
    )
    keys = [f"req-{i}" for i in range(1000)]
    config = ClientConfig(base_url=fake_server.base_url, model="fake-echo")
    async with open_backend(config, middleware=stack) as generate:
        results = await run_all(generate, keys)

    assert sorted(results) == sorted(keys)  # every request ended
    failures = {k: r for k, r in results.items() if not isinstance(r, Completion)}
    assert failures == {}
    log = fake_server.log()
    served = Counter(e.key for e in log if e.outcome == "ok")
    assert set(served) == set(keys) and set(served.values()) == {1}  # each answered exactly once
    faults = sum(1 for e in log if e.outcome != "ok")
    assert 0.15 < faults / len(log) < 0.25  # the faults really were injected
    attempts = Counter(e.key for e in log)
    for key, result in results.items():
        assert isinstance(result, Completion)
        assert result.outputs[0].text == f"echo: {key}"  # its own answer, not another's
        assert result.attempts == attempts[key]


async def test_past_the_retry_budget_every_request_still_ends_with_a_reason(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure(fault_rate=0.6, fault_kinds=["500", "drop"], seed=3)
    stack = compose(retry(max_retries=1, initial_backoff=0.001, max_backoff=0.002), concurrency_limit(32))
    keys = [f"k{i}" for i in range(200)]
    config = ClientConfig(base_url=fake_server.base_url, model="fake-echo")
    async with open_backend(config, middleware=stack) as generate:
        results = await run_all(generate, keys)
    assert sorted(results) == sorted(keys)
    errors = [r for r in results.values() if isinstance(r, TransportError)]
    assert errors and len(errors) < len(keys)  # some gave up, some got through
    for error in errors:
        assert isinstance(error, RetriesExhaustedError)
        assert error.attempts == 2 and "retry budget of 1 retries used" in str(error)
    served = Counter(e.key for e in fake_server.log() if e.outcome == "ok")
    assert served == Counter(k for k, r in results.items() if isinstance(r, Completion))


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def starts_recorder(starts: list[float]) -> Middleware:
    def layer(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            starts.append(anyio.current_time())
            return await inner(request)

        return generate

    return layer


async def test_rate_limit_holds_over_every_window(fake_server: FakeOpenAIServer) -> None:
    # 1,200 rpm = one request every 50 ms; 60 requests all wanting to go at once.
    fake_server.configure()
    starts: list[float] = []
    stack = compose(rate_limit(1200, burst=2), starts_recorder(starts))
    config = ClientConfig(base_url=fake_server.base_url, model="fake-echo")
    async with open_backend(config, middleware=stack) as generate:
        results = await run_all(generate, [f"r{i}" for i in range(60)])
    assert all(isinstance(r, Completion) for r in results.values())
    # Client side, exact: in any window of w seconds at most burst + w / interval starts.
    for window in (0.05, 0.25, 1.0):
        assert max_in_window(starts, window) <= 2 + round(window / 0.05)
    # Server side, with arrival jitter of one request allowed.
    arrivals = [e.t for e in fake_server.log()]
    assert len(arrivals) == 60
    for window in (0.25, 1.0):
        assert max_in_window(arrivals, window) <= 2 + round(window / 0.05) + 1
    span = max(arrivals) - min(arrivals)
    assert span >= (60 - 2) * 0.05 * 0.95  # it really was held back, not sent at once


async def test_default_stack_from_config_holds_the_rate(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    config = ClientConfig(base_url=fake_server.base_url, max_requests_per_minute=600, max_concurrency=8)
    async with open_backend(config) as generate:
        await run_all(generate, [f"d{i}" for i in range(12)])
    arrivals = sorted(e.t for e in fake_server.log())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 12
    assert min(gaps) > 0.1 * 0.5 and sum(gaps) >= 11 * 0.1 * 0.95


async def test_callers_that_give_up_waiting_leave_their_slots_to_the_next(fake_server: FakeOpenAIServer) -> None:
    """rate_limit(120): one start every 0.5 s. Twenty callers queue behind the
    first and give up after 0.3 s; the next caller must start at the next
    slot (0.5 s), not twenty slots later, and the bound still holds."""
    fake_server.configure()
    config = ClientConfig(base_url=fake_server.base_url, model="fake-echo", max_retries=0)
    waited: list[float] = []
    async with open_backend(config, middleware=rate_limit(120)) as generate:
        first = await generate(user("first"))
        async with anyio.create_task_group() as tg:
            for i in range(20):

                async def impatient(i: int = i) -> None:
                    with anyio.move_on_after(0.3):
                        await generate(user(f"gave-up-{i}"))

                tg.start_soon(impatient)
        for key in ("next", "after-1", "after-2"):
            completion = await generate(user(key))
            waited.append(completion.rate_limit_seconds)
    arrivals = {e.key: e.t for e in fake_server.log()}
    assert not any(key.startswith("gave-up") for key in arrivals)  # nothing was sent for them
    assert first.rate_limit_seconds == 0.0
    assert arrivals["next"] - arrivals["first"] < 0.5 + 0.25  # the next slot, not slot 21
    gaps = [arrivals["after-1"] - arrivals["next"], arrivals["after-2"] - arrivals["after-1"]]
    assert all(gap >= 0.5 * 0.9 for gap in gaps)  # and the rate still holds
    assert waited[0] < 0.5 and all(w > 0.3 for w in waited[1:])  # the wait is reported on the completion
