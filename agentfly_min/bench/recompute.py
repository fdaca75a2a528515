"""Every ratio and interval of a committed report, computed again from its
stored samples with this version's estimator, drawing the same bootstrap
seeds the run drew. A report the bench or a suite wrote recomputes to itself; one
written before a change to the estimator does not, and ``python -m
agentfly_min.bench --recompute F.json`` rewrites it (the samples, the
ratios and everything measured stay as they were)."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from .interval import ratio_interval, verdict
from .report import BenchReport, RunResult
from .stats import RatioEstimate

__all__ = ["recompute_report", "recompute_suites"]


def _again(estimate: RatioEstimate, seed: int) -> RatioEstimate:
    if len(estimate.ours) < 2:
        return estimate
    ratio, low, high = ratio_interval(estimate.ours, estimate.raw, confidence=estimate.confidence, seed=seed)
    return msgspec.structs.replace(estimate, ratio=ratio, low=low, high=high, verdict=verdict(low, high))


def _row(result: RunResult) -> RunResult:
    starts = {s.stack for s in result.estimate.ours}
    # One start: the row is that start's measure_pairs, seeded per row and
    # start (see runner); several: combine_stacks, seeded 0.
    seed = zlib.crc32(f"{result.transport} {result.concurrency} {starts.pop()}".encode()) if len(starts) == 1 else 0
    estimate = _again(result.estimate, seed)
    return msgspec.structs.replace(
        result, estimate=estimate, ratio_to_raw=estimate.ratio, ratio_low=estimate.low, ratio_high=estimate.high, verdict=estimate.verdict
    )


def recompute_report(report: BenchReport) -> BenchReport:
    """``report`` with each row's ratio, interval and verdict from its samples."""
    return msgspec.structs.replace(report, results=[_row(result) for result in report.results])


def recompute_suites(data: bytes) -> bytes:
    """pytest-benchmark's JSON with each paired measurement's interval and
    verdict from its samples (``measure_pairs`` seeded 0, as the suites
    call it); what is not a paired measurement is left as it was."""
    run: dict[str, Any] = msgspec.json.decode(data)
    for bench in run.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "samples" not in info:
            continue
        estimate = _again(msgspec.convert(info["samples"], RatioEstimate), seed=0)
        info.update(
            ratio=estimate.ratio, ratio_low=estimate.low, ratio_high=estimate.high, verdict=estimate.verdict, samples=msgspec.to_builtins(estimate)
        )
    return msgspec.json.format(msgspec.json.encode(run), indent=4)
