"""Middleware behaviour with injected clocks and sleeps: exact and fast."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from agentfly_min import (
    Completion,
    ConfigError,
    GenerationTimeoutError,
    Generate,
    PermanentError,
    Request,
    RetriesExhaustedError,
    TransientError,
    compose,
    concurrency_limit,
    rate_limit,
    retry,
    timeout,
)
from agentfly_min.middleware import backoff_delay, estimate_tokens
from agentfly_min.records import Middleware

from .support import FakeClock, answer, echo_transport, scripted, user

pytestmark = pytest.mark.anyio


def recording(log: list[str], name: str) -> Middleware:
    def layer(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            log.append(f"{name} in")
            completion = await inner(request)
            log.append(f"{name} out")
            return completion

        return generate

    return layer


async def test_compose_first_layer_is_outermost() -> None:
    log: list[str] = []
    generate = compose(recording(log, "a"), recording(log, "b"), recording(log, "c"))(echo_transport())
    await generate(user("x"))
    assert log == ["a in", "b in", "c in", "c out", "b out", "a out"]


async def test_compose_of_nothing_is_the_identity() -> None:
    inner = echo_transport()
    assert compose()(inner) is inner


# --- rate limit -------------------------------------------------------------


async def timed_starts(limited: Middleware, clock: FakeClock, count: int) -> list[float]:
    starts: list[float] = []

    async def inner(request: Request) -> Completion:
        starts.append(clock())
        return answer("ok")

    generate = limited(inner)
    for i in range(count):
        await generate(user(str(i)))
    return starts


async def test_rate_limit_spaces_requests_exactly() -> None:
    clock = FakeClock()
    starts = await timed_starts(rate_limit(120, clock=clock, sleep=clock.sleep), clock, 5)
    assert [round(t - starts[0], 9) for t in starts] == [0.0, 0.5, 1.0, 1.5, 2.0]


async def test_rate_limit_burst_then_steady_rate() -> None:
    clock = FakeClock()
    starts = await timed_starts(rate_limit(60, burst=3, clock=clock, sleep=clock.sleep), clock, 6)
    assert [round(t - starts[0], 9) for t in starts] == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]


async def test_rate_limit_idle_time_does_not_bank_credit_beyond_burst() -> None:
    clock = FakeClock()
    generate = rate_limit(60, burst=2, clock=clock, sleep=clock.sleep)(echo_transport())
    await generate(user("a"))
    clock.now += 100.0  # a long idle spell
    clock.sleeps.clear()
    for i in range(4):
        await generate(user(str(i)))
    # Two go at once (the burst), then one a second: idling earned no more.
    assert clock.sleeps == [1.0, 1.0]


async def test_tokens_per_minute_books_estimate_and_corrects_with_usage() -> None:
    clock = FakeClock()
    used = 600  # real tokens per call, as the server reports them

    async def inner(request: Request) -> Completion:
        return Completion(outputs=answer("x").outputs, usage=answer("x").usage.__class__(prompt_tokens=100, completion_tokens=used - 100))

    limited = rate_limit(tokens_per_minute=6000, estimate=lambda r: 1000, clock=clock, sleep=clock.sleep)(inner)
    await limited(user("a"))  # books 1000, corrected to 600 afterwards
    await limited(user("b"))  # waits for 600 tokens at 100/s = 6 s
    assert clock.sleeps == [pytest.approx(6.0)]


def test_estimate_tokens_counts_prompt_ids_and_budget() -> None:
    request = Request(prompt_ids=tuple(range(30)), max_new_tokens=10, n=3)
    assert estimate_tokens(request) == 30 + 3 * 10
    assert estimate_tokens(user("x" * 40), default_max_new_tokens=7) == 40 // 4 + 4 + 7


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"requests_per_minute": 0}, {"requests_per_minute": -5}, {"tokens_per_minute": 0.0}, {"requests_per_minute": 10, "burst": 0}],
)
def test_rate_limit_refuses_bad_config_when_built(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        rate_limit(**kwargs)  # type: ignore[arg-type]


# --- retry ------------------------------------------------------------------


def fail(error: Exception) -> Generate:
    async def step(request: Request) -> Completion:
        raise error

    return step


def ok(text: str = "ok") -> Generate:
    async def step(request: Request) -> Completion:
        return answer(text)

    return step


async def test_retry_backs_off_exponentially_with_cap_and_counts_attempts() -> None:
    clock = FakeClock()
    transport, seen = scripted([fail(TransientError("503", status=503))] * 6 + [ok()])
    generate = retry(max_retries=6, initial_backoff=0.5, max_backoff=4.0, jitter=0.0, sleep=clock.sleep)(transport)
    completion = await generate(user("x"))
    assert completion.attempts == 7
    assert len(seen) == 7
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_retry_jitter_shortens_by_at_most_the_jitter_fraction() -> None:
    assert backoff_delay(3, initial=0.5, maximum=8.0, jitter=0.25, uniform=0.0) == 2.0
    assert backoff_delay(3, initial=0.5, maximum=8.0, jitter=0.25, uniform=0.999) == pytest.approx(1.5, abs=1e-3)
    clock = FakeClock()
    transport, _ = scripted([fail(TransientError("x")), ok()])
    await retry(jitter=0.25, sleep=clock.sleep, uniform=lambda: 1.0)(transport)(user("x"))
    assert clock.sleeps == [0.375]


async def test_retry_obeys_retry_after_instead_of_backoff() -> None:
    clock = FakeClock()
    transport, _ = scripted([fail(TransientError("429", status=429, retry_after=7.5)), ok()])
    completion = await retry(sleep=clock.sleep)(transport)(user("x"))
    assert clock.sleeps == [7.5]
    assert completion.attempts == 2


async def test_retry_gives_up_when_retry_after_exceeds_the_cap() -> None:
    clock = FakeClock()
    transport, seen = scripted([fail(TransientError("429", status=429, retry_after=600)), ok()])
    with pytest.raises(RetriesExhaustedError, match="asked to wait 600 s") as caught:
        await retry(max_retry_after=60, sleep=clock.sleep)(transport)(user("x"))
    assert caught.value.attempts == 1
    assert caught.value.status == 429
    assert isinstance(caught.value.last_error, TransientError)
    assert clock.sleeps == [] and len(seen) == 1


async def test_retry_budget_exhausted_says_why() -> None:
    clock = FakeClock()
    transport, seen = scripted([fail(TransientError("HTTP 500", status=500))] * 3)
    with pytest.raises(RetriesExhaustedError, match="gave up after 3 attempts: retry budget of 2 retries used") as caught:
        await retry(max_retries=2, sleep=clock.sleep)(transport)(user("x"))
    assert caught.value.attempts == 3 and len(seen) == 3
    assert "HTTP 500" in str(caught.value)


async def test_retry_does_not_retry_permanent_errors() -> None:
    transport, seen = scripted([fail(PermanentError("HTTP 400", status=400)), ok()])
    with pytest.raises(PermanentError):
        await retry(sleep=FakeClock().sleep)(transport)(user("x"))
    assert len(seen) == 1


async def test_retry_does_not_touch_other_exceptions() -> None:
    transport, seen = scripted([fail(KeyError("bug")), ok()])
    with pytest.raises(KeyError):
        await retry(sleep=FakeClock().sleep)(transport)(user("x"))
    assert len(seen) == 1


async def test_retry_policy_is_pluggable() -> None:
    transport, seen = scripted([fail(PermanentError("HTTP 409", status=409)), ok()])
    policy = retry(retry_on=lambda e: e.status == 409, sleep=FakeClock().sleep)
    assert (await policy(transport)(user("x"))).attempts == 2


async def test_retry_never_retries_cancellation() -> None:
    calls = 0

    async def hang(request: Request) -> Completion:
        nonlocal calls
        calls += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.move_on_after(0.05) as scope:
        await retry(sleep=FakeClock().sleep)(hang)(user("x"))
    assert scope.cancelled_caught
    assert calls == 1


# --- timeout and its place relative to retry --------------------------------


def slow_then_fast(delays: list[float]) -> tuple[Generate, list[float]]:
    """A transport whose k-th call takes delays[k] seconds."""
    started: list[float] = []

    async def generate(request: Request) -> Completion:
        started.append(anyio.current_time())
        await anyio.sleep(delays[len(started) - 1])
        return answer("done")

    return generate, started


async def test_timeout_raises_typed_transient_error() -> None:
    generate = timeout(0.05)(slow_then_fast([10.0])[0])
    with pytest.raises(GenerationTimeoutError) as caught:
        await generate(user("x"))
    assert issubclass(GenerationTimeoutError, TransientError)  # so retry layers retry it
    assert isinstance(caught.value, TimeoutError)


async def test_the_client_stack_leaves_its_timeout_to_a_wire_that_keeps_one() -> None:
    from agentfly_min import ClientConfig
    from agentfly_min.transports import client_middleware

    config = ClientConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout=0.05, max_retries=0)
    with pytest.raises(RetriesExhaustedError) as caught:
        await client_middleware(config)(slow_then_fast([0.5])[0])(user("x"))
    assert isinstance(caught.value.last_error, GenerationTimeoutError)
    # without the layer the same slow call completes: the wire path is trusted to hold it to config.timeout
    completion = await client_middleware(config, attempt_timeout=False)(slow_then_fast([0.5])[0])(user("x"))
    assert completion.outputs[0].text == "done"


async def test_timeout_does_not_mask_an_inner_timeout_error() -> None:
    async def inner(request: Request) -> Completion:
        raise TimeoutError("the inner call's own")

    with pytest.raises(TimeoutError, match="inner call's own"):
        await timeout(5)(inner)(user("x"))


async def test_timeout_inside_retry_limits_each_attempt() -> None:
    transport, started = slow_then_fast([10.0, 10.0, 0.0])
    generate = compose(retry(max_retries=3, initial_backoff=0.001, jitter=0.0), timeout(0.05))(transport)
    completion = await generate(user("x"))
    assert completion.attempts == 3 and len(started) == 3


async def test_timeout_outside_retry_is_an_overall_deadline() -> None:
    transport, started = slow_then_fast([0.03, 0.03, 0.03, 0.03, 0.03, 0.0])

    async def flaky(request: Request) -> Completion:
        await transport(request)
        raise TransientError("still failing")

    generate = compose(timeout(0.1), retry(max_retries=10, initial_backoff=0.001, jitter=0.0))(flaky)
    with pytest.raises(GenerationTimeoutError):
        await generate(user("x"))
    assert 2 <= len(started) <= 4  # several attempts fit, but not all ten


def test_timeout_refuses_non_positive_seconds() -> None:
    with pytest.raises(ConfigError, match="timeout.seconds"):
        timeout(0)


# --- concurrency ------------------------------------------------------------


async def test_concurrency_limit_bounds_calls_in_flight() -> None:
    in_flight = 0
    peak = 0

    async def inner(request: Request) -> Completion:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        return answer("x")

    generate = concurrency_limit(3)(inner)

    async def call(i: int) -> None:
        await generate(user(str(i)))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(call, i)
    assert peak == 3


async def test_one_task_may_hold_several_slots() -> None:
    generate = concurrency_limit(2)(echo_transport())

    async def nested(request: Request) -> Completion:
        # The same task calls through the limit while already inside it.
        return await generate(request)

    outer = concurrency_limit(semaphore=anyio.Semaphore(2))(nested)
    assert (await concurrency_limit(2)(outer)(user("x"))).outputs[0].text == "x"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_concurrency_limit_can_be_built_outside_an_event_loop(backend: str) -> None:
    layer = concurrency_limit(4)  # at import time, say, before any loop runs

    async def main() -> str:
        return (await layer(echo_transport())(user("ok"))).outputs[0].text

    assert anyio.run(main, backend=backend) == "ok"


def test_concurrency_limit_takes_exactly_one_bound() -> None:
    with pytest.raises(TypeError):
        concurrency_limit()
    with pytest.raises(ConfigError):
        concurrency_limit(0)


async def test_tokens_per_minute_holds_when_the_server_reports_no_usage() -> None:
    clock = FakeClock()

    async def no_usage(request: Request) -> Completion:
        return Completion(outputs=answer("x").outputs)  # usage 0: an unknown count, not zero tokens

    limited = rate_limit(tokens_per_minute=6000, estimate=lambda r: 1000, clock=clock, sleep=clock.sleep)(no_usage)
    await limited(user("a"))
    await limited(user("b"))  # the 1000 estimated tokens drain at 100/s first
    assert clock.sleeps == [pytest.approx(10.0)]


async def test_a_cancelled_waiter_books_nothing() -> None:
    clock = FakeClock()
    limited = rate_limit(60, clock=clock, sleep=clock.sleep)(echo_transport())
    await limited(user("a"))

    async def never_wakes(seconds: float) -> None:
        await anyio.sleep_forever()

    stuck = rate_limit(60, clock=clock, sleep=never_wakes)
    waiting = stuck(echo_transport())
    await waiting(user("first"))  # books the slot at t
    with anyio.move_on_after(0.05):
        await waiting(user("second"))  # waits for t + 1 s, then is cancelled
    clock.now += 1.0
    completion = await waiting(user("third"))  # the slot the cancelled caller never took
    assert completion.rate_limit_seconds == 0.0


async def test_retries_are_counted_by_reason_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    from agentfly_min.errors import TransientError

    failures = iter([TransientError("HTTP 429: slow down", status=429), TransientError("request timed out"), None])

    async def flaky(request: Request) -> Completion:
        error = next(failures)
        if error is not None:
            raise error
        return answer("ok")

    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    with caplog.at_level(logging.INFO, logger="agentfly_min.retry"):
        completion = await retry(sleep=record, uniform=lambda: 0.0)(flaky)(user("x"))
    assert completion.attempts == 3 and completion.retries == ("HTTP 429", "timeout")
    assert caplog.text.count("retrying in") == 2


async def test_an_episode_sums_retries_and_rate_limit_waits(fake_server: Any) -> None:
    from agentfly_min import Agent, ClientConfig, open_backend, run_agent

    fake_server.configure(script=("429", "500", "ok"), retry_after=0.0)
    config = ClientConfig(base_url=fake_server.base_url, model="fake-echo", max_requests_per_minute=6000)
    async with open_backend(config) as generate:
        trajectory = await run_agent(Agent(model_name_or_path="m"), generate, {"question": "q"})
    assert trajectory.attempts == 3 and trajectory.retries == {"HTTP 429": 1, "HTTP 500": 1}
