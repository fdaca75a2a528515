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


def test_the_spread_is_the_coefficient_of_variation_and_calls_a_jittery_host_unsteady() -> None:
    steady = HostSteadiness(seconds=(0.100, 0.101, 0.099, 0.100))
    assert steady.spread == pytest.approx(0.00816, rel=0.01)
    assert steady.steady
    # What this machine did on 2026-12-02: the same loop took 0.098-0.211 s.
    jittery = HostSteadiness(seconds=(0.098, 0.211, 0.150, 0.120, 0.180))
    assert jittery.spread > UNSTEADY and not jittery.steady
    assert HostSteadiness(seconds=(0.1,)).spread == 0.0
    assert HostSteadiness(seconds=()).spread == 0.0


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
    assert line is not None and "an unsteady host" in line
    assert line in render_markdown(rough)


def test_a_report_from_before_the_probe_still_reads_and_says_nothing_of_the_host() -> None:
    old = msgspec.json.encode(_report())
    fields = msgspec.json.decode(old)
    del fields["host_before"], fields["host_after"]
    fields["schema_version"] = 2
    report = msgspec.json.decode(msgspec.json.encode(fields), type=BenchReport)
    assert report.host_before is None and host_line(report) is None
    assert "Host:" not in render_markdown(report)
