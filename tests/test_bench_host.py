"""The host-steadiness probe and how the report states it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgspec
import pytest

from agentfly_min.bench import BenchReport, Environment, HostSteadiness, Workload, host_line, probe_host, render_markdown
from agentfly_min.bench.host import UNSTEADY


def _clock(durations: list[float]) -> Callable[[], float]:
    """A clock whose successive start/stop readings give ``durations``."""
    readings = itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations))
    return iter(readings).__next__


def test_the_probe_times_each_repetition_of_the_work_on_the_clock_given() -> None:
    calls: list[None] = []
    durations = [0.10, 0.12, 0.09, 0.11]
    probe = probe_host(repeats=4, work=lambda: calls.append(None), clock=_clock(durations))
    assert len(calls) == 4
    assert probe.seconds == pytest.approx(tuple(durations))


def test_the_spread_is_a_robust_coefficient_of_variation_and_calls_a_jittery_host_unsteady() -> None:
    steady = HostSteadiness(seconds=(0.100, 0.101, 0.099, 0.100))
    # quartiles 0.09975 and 0.10025 (inclusive), median 0.100: 0.0005 / 1.349 / 0.100
    assert steady.spread == pytest.approx(0.0037, rel=0.01)
    assert steady.steady and steady.stalls == 0
    # What the AMD host did on 2026-12-02: the same loop took 0.098-0.211 s.
    jittery = HostSteadiness(seconds=(0.098, 0.211, 0.150, 0.120, 0.180))
    assert jittery.spread == pytest.approx((0.180 - 0.120) / 1.349 / 0.150, rel=0.01)
    assert jittery.spread > UNSTEADY and not jittery.steady
    assert HostSteadiness(seconds=(0.1,)).spread == 0.0
    assert HostSteadiness(seconds=()).spread == 0.0
    assert HostSteadiness(seconds=(0.0, 0.0, 0.0)).spread == 0.0


def test_one_stalled_repetition_is_a_stall_not_an_unsteady_host() -> None:
    # What the Xeon host did after the asyncio bench on 2026-12-02, Ray just
    # shut down: one repetition of 15 took 0.391 s, the others 0.079-0.090.
    after = (0.083, 0.09, 0.087, 0.08, 0.085, 0.09, 0.09, 0.079, 0.086, 0.086, 0.391, 0.081, 0.081, 0.084, 0.082)
    probe = HostSteadiness(seconds=after)
    assert probe.spread == pytest.approx(0.061, abs=0.001)  # the plain coefficient of variation: 0.75
    assert probe.stalls == 1 and probe.worst == pytest.approx(0.391 / 0.085, rel=0.01)
    # Repetitions slowed by half at random: no stall, but the spread says it
    # (a median absolute deviation would read 0 here, four of seven equal).
    halting = HostSteadiness(seconds=(0.1, 0.15, 0.1, 0.15, 0.15, 0.1, 0.15))
    assert halting.stalls == 0 and not halting.steady
    assert HostSteadiness(seconds=()).stalls == 0 and HostSteadiness(seconds=()).worst == 1.0


def test_the_default_work_really_takes_time() -> None:
    probe = probe_host(repeats=2)
    assert len(probe.seconds) == 2 and min(probe.seconds) > 0.001


def test_repeats_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        probe_host(repeats=0)


def _report(host_before: HostSteadiness | None = None, host_after: HostSteadiness | None = None) -> BenchReport:
    return BenchReport(
        started_at="2026-12-02T00:00:00+00:00", model="tiny", random_weights=True, workload=Workload(),
        transports=["vllm"], loop="trio", concurrency_levels=[1], results=[],
        environment=Environment(python="3.11", platform="linux", cpu="cpu", cores=2, gpu="none", packages={}),
        host_before=host_before, host_after=host_after,
    )  # fmt: skip


def test_the_report_keeps_both_probes_and_says_when_the_host_was_unsteady() -> None:
    steady = HostSteadiness(seconds=(0.100, 0.101, 0.099))
    jittery = HostSteadiness(seconds=(0.098, 0.211, 0.150))
    calm = _report(host_before=steady, host_after=steady)
    assert msgspec.json.decode(msgspec.json.encode(calm), type=BenchReport) == calm
    line = host_line(calm)
    assert line is not None and "1% before and 1% after" in line and "a steady host" in line
    rough = _report(host_before=steady, host_after=jittery)
    line = host_line(rough)
    assert line is not None and "an unsteady host" in line and "stalled" not in line
    assert line in render_markdown(rough)
    stalled = _report(host_before=steady, host_after=HostSteadiness(seconds=(0.100, 0.101, 0.400, 0.099, 0.100, 0.101, 0.099, 0.100)))
    line = host_line(stalled)
    assert line is not None and "a steady host; after, 1 of 8 repetitions stalled, the worst at 4.0x the median" in line


def test_a_report_from_before_the_probe_still_reads_and_says_nothing_of_the_host() -> None:
    old = msgspec.json.encode(_report())
    fields = msgspec.json.decode(old)
    del fields["host_before"], fields["host_after"]
    fields["schema_version"] = 2
    report = msgspec.json.decode(msgspec.json.encode(fields), type=BenchReport)
    assert report.host_before is None and host_line(report) is None
    assert "Host:" not in render_markdown(report)
